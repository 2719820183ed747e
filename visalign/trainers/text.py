"""Text-LLM preference training: ``DPOConfig``/``DPOTrainer`` (every paired loss in ``LOSSES``), ``KTOConfig``/
``KTOTrainer`` (unpaired data), and ``run(config)`` for ``visalign train``.

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

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from visalign.data.collators import PreferenceCollator, UnpairedCollator
from visalign.data.sources import load_source
from visalign.data.text import tokenize_preferences, tokenize_unpaired, validate_columns
from visalign.likelihood.text import cached_pair_loglik, pair_loglik, unpaired_loglik
from visalign.models.card import write_transformers_card
from visalign.models.causal_lm import load_causal_lm, load_tokenizer
from visalign.models.lora import apply_lora, is_peft_model
from visalign.objective import LogLik, make_objective
from visalign.reference import make_reference
from visalign.data.ref_cache import attach_reference_logps
from visalign.trainers._loop import Trainer
from visalign.trainers.config import PreferenceConfig

MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DPOConfig(PreferenceConfig):
    """Text preference training (TRL 1.16 ``DPOConfig`` semantics): ``PreferenceConfig`` plus tokenization and model
    loading options. Losses on unpaired data (``kto``) need ``KTOConfig`` (method ``kto``)."""

    LIKELIHOOD: ClassVar[str] = "tokens"

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
    """KTO (Ethayarajh et al. 2024) on unpaired ``prompt``/``completion``/``label`` data (TRL ``KTOConfig``)."""

    UNPAIRED_DATA: ClassVar[bool] = True

    method: str = field(default="kto", metadata=_help("trainer family (`visalign train` picks the trainer from it)"))
    loss_type: str | list[str] = field(default="kto", metadata=_help("must be kto"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.per_device_batch_size < 2:
            raise ValueError(
                "KTOConfig.per_device_batch_size must be >= 2: the KL reference point pairs each prompt with another "
                f"row's completion; got {self.per_device_batch_size}"
            )
        if self.reference == "precomputed":
            raise ValueError("KTOConfig.reference 'precomputed' is not supported (the KL reference point needs a "
                             "reference forward on mismatched pairs); use frozen_copy or disable_adapter")


class DPOTrainer(Trainer):
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
    auto_class = "AutoModelForCausalLM"  # loads the saved model (model card)

    def __init__(
        self,
        model: str | PreTrainedModel | None = None,
        args: DPOConfig | None = None,
        train_dataset: datasets.Dataset | str | None = None,
        eval_dataset: datasets.Dataset | str | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
    ) -> None:
        args = args if args is not None else self.config_class()
        if not isinstance(args, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}; got {type(args).__name__}")
        self._model_spec = model if model is not None else args.model
        if self._model_spec is None:
            raise ValueError(f"{type(self).__name__}: no model given (pass model= or set `model` in the config)")
        self._raw_train = train_dataset if train_dataset is not None else args.dataset
        if self._raw_train is None:
            raise ValueError(f"{type(self).__name__}: no training data (pass train_dataset= or set `dataset`)")
        self._raw_eval = eval_dataset if eval_dataset is not None else args.eval_dataset
        self.tokenizer = processing_class
        self.reference = None
        super().__init__(args)

    # ---------------------------------------------------------------------------------------------- data

    required_columns: tuple[str, ...] = ("chosen", "rejected")

    def _load(self, data: datasets.Dataset | str, split: str, name: str) -> datasets.Dataset:
        dataset = load_source(data, split=split) if isinstance(data, str) else data
        validate_columns(dataset, self.required_columns, name=name)
        return dataset

    def _tokenize(self, dataset: datasets.Dataset, name: str) -> datasets.Dataset:
        return tokenize_preferences(
            dataset, self.tokenizer, max_length=self.args.max_length, drop_long_prompts=self.args.drop_long_prompts,
            num_proc=self.args.dataset_num_proc, name=name,
        )

    def build_datasets(self) -> tuple[datasets.Dataset, datasets.Dataset | None]:
        train = self._load(self._raw_train, self.args.dataset_split, "train_dataset")
        held_out = None if self._raw_eval is None else self._load(self._raw_eval, self.args.eval_split, "eval_dataset")
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer()
        if self.args.chat_template is not None:
            template = Path(self.args.chat_template)
            self.tokenizer.chat_template = template.read_text() if template.is_file() else self.args.chat_template
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        train = self._tokenize(train, "train_dataset")
        held_out = None if held_out is None else self._tokenize(held_out, "eval_dataset")
        return train, held_out

    def _load_tokenizer(self) -> PreTrainedTokenizerBase:
        if isinstance(self._model_spec, str):
            return load_tokenizer(self._model_spec, trust_remote_code=self.args.trust_remote_code)
        return AutoTokenizer.from_pretrained(self._model_spec.name_or_path)

    def build_collator(self):
        return PreferenceCollator(self.tokenizer.pad_token_id, self.args.pad_to_multiple_of)

    # ---------------------------------------------------------------------------------------------- model

    def build_model(self) -> torch.nn.Module:
        args = self.args
        if isinstance(self._model_spec, str):
            dtype = None if args.model_dtype == "auto" else getattr(torch, args.model_dtype)
            model, _ = load_causal_lm(
                self._model_spec, dtype=dtype, attn_implementation=args.attn_implementation,
                trust_remote_code=args.trust_remote_code,
            )
        else:
            model = self._model_spec
        if args.disable_dropout:
            disable_dropout(model)
        if args.use_lora:
            model = apply_lora(model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                               target_modules=args.lora_target_modules)
        self.reference_strategy = args.resolved_reference(lora=is_peft_model(model))
        return model

    def likelihood(self) -> tuple[LogLik, LogLik | None]:
        """The family's likelihood function ``(model, batch) -> PairLogLik`` and the reader of a batch's precomputed
        reference columns (``reference: precomputed``)."""
        return pair_loglik, cached_pair_loglik

    def prepare_reference(self) -> None:
        """The reference (its precomputed columns attached to the datasets when it reads them) and the objective."""
        loglik, columns = self.likelihood()
        dtype = None if self.args.reference_dtype is None else getattr(torch, self.args.reference_dtype)
        self.reference = make_reference(
            self.reference_strategy, self.accelerator.unwrap_model(self.model), dtype=dtype, columns=columns
        )
        if self.reference.reads_batch:
            self.train_dataset = self._attach_reference(self.train_dataset, "train_dataset")
            if self.eval_dataset is not None:
                self.eval_dataset = self._attach_reference(self.eval_dataset, "eval_dataset")
        self.objective = make_objective(self.args, reference=self.reference, loglik=loglik,
                                        reduce=partial(self.accelerator.reduce, reduction="mean"))

    def _attach_reference(self, dataset: datasets.Dataset, name: str) -> datasets.Dataset:
        """Reference log-probs computed once with the initial policy (cached on disk by ``ref_cache``) as columns."""
        args = self.args
        return attach_reference_logps(
            dataset, self.accelerator.unwrap_model(self.model), self.collator,
            batch_size=args.precompute_ref_batch_size or args.eval_batch_size or args.per_device_batch_size,
            max_length=args.max_length, name=name,
        )

    def resolved_config(self) -> DPOConfig:
        return dataclasses.replace(self.args, reference=self.reference_strategy)

    # ---------------------------------------------------------------------------------------------- loss

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(self.model, batch)

    def num_examples(self, batch: dict) -> int:
        return batch["input_ids"].shape[0] // 2

    def save_final(self, output_dir: Path) -> None:
        """The model or PEFT adapter, the resolved config, the tokenizer and a model card whose code loads them."""
        super().save_final(output_dir)
        if self.accelerator.is_main_process:
            self.tokenizer.save_pretrained(output_dir)
            config = self.resolved_config()
            lora = is_peft_model(self.accelerator.unwrap_model(self.model))
            base = self._model_spec if isinstance(self._model_spec, str) else self.accelerator.unwrap_model(
                self.model).config.name_or_path
            keys = ("loss_type", "beta", "reference", "learning_rate", "per_device_batch_size",
                    "gradient_accumulation_steps", "lora_r", "lora_alpha")
            settings = {key: getattr(config, key) for key in keys if lora or not key.startswith("lora")}
            write_transformers_card(output_dir, base_model=base, auto_class=self.auto_class,
                                    method=getattr(config, "method", "dpo"), lora=lora,
                                    settings={**settings, "steps": self.global_step})


class KTOTrainer(DPOTrainer):
    """KTO on unpaired ``prompt``/``completion``/``label`` rows: ``kto_loss`` with the KL reference point z0 estimated
    from mismatched prompt/completion pairs (completions cycled by +1 in the batch, TRL's collator) and averaged
    over processes, as TRL's ``KTOTrainer`` does."""

    config_class = KTOConfig
    required_columns = ("prompt", "completion", "label")

    def _tokenize(self, dataset: datasets.Dataset, name: str) -> datasets.Dataset:
        return tokenize_unpaired(
            dataset, self.tokenizer, max_length=self.args.max_length, drop_long_prompts=self.args.drop_long_prompts,
            num_proc=self.args.dataset_num_proc, name=name,
        )

    def build_collator(self):
        return UnpairedCollator(self.tokenizer.pad_token_id, kl=True, max_length=self.args.max_length,
                                pad_to_multiple_of=self.args.pad_to_multiple_of)

    def likelihood(self) -> tuple[LogLik, None]:
        return unpaired_loglik, None

    def num_examples(self, batch: dict) -> int:
        return batch["input_ids"].shape[0]


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 (TRL's ``disable_dropout``: policy and reference see the same network)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def run(config: DPOConfig) -> dict[str, float]:
    """Train as ``config`` says (``visalign train``); with an eval dataset, evaluate before and after training.

    Returns the final metrics, including ``initial_eval_rewards/accuracies`` and ``eval_rewards/accuracies``.
    """
    trainer_cls = KTOTrainer if isinstance(config, KTOConfig) else DPOTrainer
    trainer = trainer_cls(args=config)
    result: dict[str, Any] = {}
    if trainer.eval_dataset is not None and trainer.global_step == 0 and config.resume_from is None:
        result.update({f"initial_{k}": v for k, v in trainer.evaluate().items()})
    result.update(trainer.train())
    return result
