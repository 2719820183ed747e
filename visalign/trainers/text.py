"""Text-LLM preference training: ``DPOConfig`` (methods ``dpo`` and ``kto``), ``DPOTrainer`` (every paired loss in
``LOSSES``), ``KTOTrainer`` (unpaired data; ``KTOConfig`` names ``DPOConfig(method="kto")``), and ``run(config)`` for
``visalign train``.

Behaviour follows TRL 1.16's ``DPOTrainer`` (reference §C.1–C.7): TRL's data format and tokenization
(``visalign.data.text``), one forward over ``[chosen; rejected]`` with summed completion-token log-probs
(``visalign.likelihood.text``), the reference from ``visalign.reference`` (skipped entirely when every loss is
reference-free), dropout disabled by default, and TRL's metric names (``rewards/chosen|rejected|accuracies|margins``,
``logps/chosen|rejected``, ``eval_`` prefix in evaluation).

Where it differs from TRL: the reference strategy is explicit (``reference``; TRL infers it from what is passed), the
default reference with LoRA is the adapter-disabled base model and otherwise a frozen in-memory copy (TRL re-loads the
policy from its hub name), ``max_length`` truncation never cuts into the prompt (an error, or ``drop_long_prompts``),
and ``gradient_checkpointing`` defaults to off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import datasets
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from visalign.data.collators import PreferenceCollator, UnpairedCollator
from visalign.data.ref_cache import attach_reference_logps
from visalign.data.sources import load_source
from visalign.data.text import tokenize_preferences, tokenize_unpaired, validate_columns
from visalign.likelihood.text import TokenLogProbs, UnpairedTokenLogProbs
from visalign.models.causal_lm import load_causal_lm, load_tokenizer
from visalign.trainers.config import PreferenceConfig, _help
from visalign.trainers.tokens import TokenPreferenceTrainer, train_and_evaluate

MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class DPOConfig(PreferenceConfig):
    """Text preference training (TRL 1.16 ``DPOConfig`` semantics): ``PreferenceConfig`` plus tokenization and model
    loading options; method ``dpo`` (paired data) or ``kto`` (unpaired data, the ``kto`` loss)."""

    TRAINER: ClassVar[str] = "text"

    max_length: int | None = field(
        default=1024, metadata=_help("max prompt + completion tokens; the completion end is cut, never the prompt")
    )
    drop_long_prompts: bool = field(
        default=False,
        metadata=_help("drop (and count) rows whose prompt leaves no room within max_length instead of raising"),
    )
    chat_template: str | None = field(
        default=None, metadata=_help("Jinja chat template (or a file holding one) replacing the tokenizer's")
    )
    pad_to_multiple_of: int | None = field(default=None, metadata=_help("round padded lengths up to a multiple"))
    dataset_num_proc: int | None = field(default=None, metadata=_help("processes for tokenization (datasets.map)"))
    precompute_ref_batch_size: int | None = field(
        default=None,
        metadata=_help("batch size of the one-off reference pass (reference=precomputed); none = eval batch size"),
    )
    disable_dropout: bool = field(default=True, metadata=_help("set every dropout probability to 0, as TRL does"))
    model_dtype: str = field(
        default="float32",
        metadata=_help(f"dtype the model weights load in: {' | '.join(MODEL_DTYPES)} (mixed_precision is separate)"),
    )
    attn_implementation: str | None = field(
        default=None, metadata=_help("transformers attention backend (eager | sdpa | flash_attention_2 ...)")
    )
    trust_remote_code: bool = field(default=False, metadata=_help("allow model code from the hub (off by default)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        c = type(self).__name__
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"{c}.max_length must be none or >= 2; got {self.max_length}")
        if self.model_dtype not in MODEL_DTYPES:
            raise ValueError(f"{c}.model_dtype must be one of {', '.join(MODEL_DTYPES)}; got {self.model_dtype!r}")
        if self.precompute_ref_batch_size is not None and self.precompute_ref_batch_size < 1:
            raise ValueError(
                f"{c}.precompute_ref_batch_size must be none or >= 1; got {self.precompute_ref_batch_size}"
            )


@dataclass
class KTOConfig(DPOConfig):
    """``DPOConfig(method="kto")``: KTO (Ethayarajh et al. 2024) on unpaired ``prompt``/``completion``/``label`` data
    (TRL ``KTOConfig``); a name for the method, adding nothing (``visalign.trainers.methods`` says what kto is)."""

    method: str = field(default="kto", metadata=_help("the method to train (`visalign train` picks its trainer)"))


class DPOTrainer(TokenPreferenceTrainer):
    """Paired preference training on a causal LM with any paired loss in ``visalign.losses.LOSSES``.

    Args:
        model: a hub id, local folder or ``builtin:NAME`` (loaded with ``load_causal_lm``), or a loaded
            ``PreTrainedModel`` / ``PeftModel``; ``None`` takes ``args.model``.
        args: the config.
        train_dataset, eval_dataset: ``datasets.Dataset`` in TRL's format, or a ``load_source`` spec; ``None`` takes
            ``args.dataset`` / ``args.eval_dataset``.
        processing_class: the tokenizer; ``None`` loads it with the model.
    """

    config_class = DPOConfig
    methods = ("dpo",)
    auto_class = "AutoModelForCausalLM"
    required_columns: tuple[str, ...] = ("chosen", "rejected")

    def __init__(
        self,
        model: str | PreTrainedModel | None = None,
        args: DPOConfig | None = None,
        train_dataset: datasets.Dataset | str | None = None,
        eval_dataset: datasets.Dataset | str | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__(model, args, train_dataset, eval_dataset, processing_class)

    # ---------------------------------------------------------------------------------------------- data

    def _load(self, data: datasets.Dataset | str, split: str, name: str) -> datasets.Dataset:
        dataset = load_source(data, split=split) if isinstance(data, str) else data
        validate_columns(dataset, self.required_columns, name=name)
        return dataset

    def _tokenize(self, dataset: datasets.Dataset, name: str) -> datasets.Dataset:
        return tokenize_preferences(
            dataset, self.processing_class, max_length=self.args.max_length,
            drop_long_prompts=self.args.drop_long_prompts, num_proc=self.args.dataset_num_proc, name=name,
        )

    def build_datasets(self) -> tuple[datasets.Dataset, datasets.Dataset | None]:
        train = self._load(self._raw_train, self.args.dataset_split, "train_dataset")
        held_out = None if self._raw_eval is None else self._load(self._raw_eval, self.args.eval_split, "eval_dataset")
        self._set_up_processing_class()
        tokenizer = self.processing_class
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        train = self._tokenize(train, "train_dataset")
        held_out = None if held_out is None else self._tokenize(held_out, "eval_dataset")
        return train, held_out

    def load_processing_class(self) -> PreTrainedTokenizerBase:
        if isinstance(self._model_spec, str):
            return load_tokenizer(self._model_spec, trust_remote_code=self.args.trust_remote_code)
        return AutoTokenizer.from_pretrained(self._model_spec.name_or_path)

    def build_collator(self):
        return PreferenceCollator(self.processing_class.pad_token_id, self.args.pad_to_multiple_of)

    # ---------------------------------------------------------------------------------------------- model

    def load_model(self, spec: str) -> torch.nn.Module:
        args = self.args
        dtype = None if args.model_dtype == "auto" else getattr(torch, args.model_dtype)
        model, _ = load_causal_lm(spec, dtype=dtype, attn_implementation=args.attn_implementation,
                                  trust_remote_code=args.trust_remote_code)
        return model

    # ---------------------------------------------------------------------------------------------- likelihood

    def build_likelihood(self) -> TokenLogProbs:
        """Summed completion-token log-probs (the DPO paper's ``log π(y|x)``)."""
        return TokenLogProbs()

    def attach_reference(self, dataset: datasets.Dataset, name: str) -> datasets.Dataset:
        """Summed reference log-probs computed once with the initial policy (cached on disk by ``ref_cache``)."""
        return attach_reference_logps(
            dataset, self.accelerator.unwrap_model(self.model), self.collator,
            batch_size=self.precompute_batch_size(), max_length=self.args.max_length, name=name,
        )


class KTOTrainer(DPOTrainer):
    """KTO on unpaired ``prompt``/``completion``/``label`` rows: ``kto_loss`` with the KL reference point z0 estimated
    from mismatched prompt/completion pairs (completions cycled by +1 in the batch, TRL's collator) and averaged
    over processes, as TRL's ``KTOTrainer`` does."""

    config_class = KTOConfig
    methods = ("kto",)
    required_columns = ("prompt", "completion", "label")

    def _tokenize(self, dataset: datasets.Dataset, name: str) -> datasets.Dataset:
        return tokenize_unpaired(
            dataset, self.processing_class, max_length=self.args.max_length,
            drop_long_prompts=self.args.drop_long_prompts, num_proc=self.args.dataset_num_proc, name=name,
        )

    def build_collator(self):
        return UnpairedCollator(self.processing_class.pad_token_id, kl=True, max_length=self.args.max_length,
                                pad_to_multiple_of=self.args.pad_to_multiple_of)

    def build_likelihood(self) -> UnpairedTokenLogProbs:
        return UnpairedTokenLogProbs()

    def num_examples(self, batch: dict) -> int:
        return batch["input_ids"].shape[0]


def run(config: DPOConfig) -> dict[str, float]:
    """Train as ``config`` says (``visalign train``); with an eval dataset, evaluate before and after training
    (``train_and_evaluate``)."""
    trainer_cls = KTOTrainer if config.method_spec.unpaired else DPOTrainer
    return train_and_evaluate(trainer_cls(args=config))
