"""What the token-preference trainers share: ``DPOTrainer`` and ``KTOTrainer`` (``trainers.text``) and
``VLMDPOTrainer`` (``trainers.vlm``) are siblings on :class:`TokenPreferenceTrainer`.

The base owns the constructor (model, config, datasets, processing class), the model set-up (dropout off, LoRA, the
resolved reference strategy), the step (likelihood provider -> reference -> objective, built once after the policy is
prepared), and the final folder (model or adapter, processing class, resolved config, model card). A family supplies
its data (``build_datasets``, ``build_collator``), ``load_model``, ``build_likelihood`` and, for
``reference: precomputed``, ``attach_reference``.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from visalign.likelihood.base import LikelihoodProvider
from visalign.models.card import write_transformers_card
from visalign.models.lora import apply_lora, is_peft_model
from visalign.objective import make_objective
from visalign.reference import make_reference
from visalign.trainers._loop import Trainer

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from visalign.trainers.text import DPOConfig


class TokenPreferenceTrainer(Trainer):
    """Preference training of a transformers model scored by token log-probs (module docstring).

    Args:
        model: a hub id, local folder or ``builtin:NAME`` (``load_model``), or a loaded model / ``PeftModel``;
            ``None`` takes ``args.model``.
        args: the family's config (``config_class``); ``None``: its defaults.
        train_dataset, eval_dataset: the family's data; ``None`` takes ``args.dataset`` / ``args.eval_dataset``.
        processing_class: the tokenizer or processor; ``None`` loads it with the model.
    """

    config_class: ClassVar[type[DPOConfig]]
    #: The methods (``visalign.trainers.methods``) this trainer trains.
    methods: ClassVar[tuple[str, ...]]
    #: The transformers auto class that loads the saved model (model card).
    auto_class: ClassVar[str]

    def __init__(self, model: str | PreTrainedModel | None, args: DPOConfig | None, train_dataset: Any,
                 eval_dataset: Any, processing_class: Any) -> None:
        args = args if args is not None else self.config_class()
        if getattr(args, "TRAINER", None) != self.config_class.TRAINER or args.method not in self.methods:
            raise TypeError(f"{type(self).__name__} trains method {' | '.join(self.methods)} (a "
                            f"{self.config_class.TRAINER} config); got {type(args).__name__} with method "
                            f"{getattr(args, 'method', None)!r}")
        self._model_spec = model if model is not None else args.model
        if self._model_spec is None:
            raise ValueError(f"{type(self).__name__}: no model given (pass model= or set `model` in the config)")
        self._raw_train = train_dataset if train_dataset is not None else args.dataset
        if self._raw_train is None:
            raise ValueError(f"{type(self).__name__}: no training data (pass train_dataset= or set `dataset`)")
        self._raw_eval = eval_dataset if eval_dataset is not None else args.eval_dataset
        self.processing_class = processing_class
        self.reference = None
        super().__init__(args)

    # ---------------------------------------------------------------------------------------------- family hooks

    def load_model(self, spec: str) -> torch.nn.Module:
        """The model ``spec`` names, loaded as the config says."""
        raise NotImplementedError

    def load_processing_class(self) -> Any:
        """The tokenizer or processor of the model, when none was given."""
        raise NotImplementedError

    def freeze_parts(self, model: torch.nn.Module) -> None:
        """Freeze the parts of ``model`` the family keeps fixed, before LoRA is applied (default: none)."""

    def lora_targets(self, model: torch.nn.Module) -> list[str] | None:
        """The LoRA target modules (default: ``lora_target_modules``, none meaning peft's defaults)."""
        return self.args.lora_target_modules

    def build_likelihood(self) -> LikelihoodProvider:
        """The family's likelihood provider (``visalign.likelihood``), built once."""
        raise NotImplementedError

    def attach_reference(self, dataset: Any, name: str) -> Any:
        """``dataset`` with the reference's log-probs as ``ref_*`` columns (``reference: precomputed``), computed once
        with the initial policy."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------- set-up

    def _set_up_processing_class(self) -> None:
        """The processing class given, else ``load_processing_class()``; with the config's ``chat_template`` (a Jinja
        string, or a file holding one) in place of its own."""
        if self.processing_class is None:
            self.processing_class = self.load_processing_class()
        if self.args.chat_template is not None:
            template = Path(self.args.chat_template)
            self.processing_class.chat_template = (template.read_text() if template.is_file()
                                                   else self.args.chat_template)

    def build_model(self) -> torch.nn.Module:
        args = self.args
        model = self.load_model(self._model_spec) if isinstance(self._model_spec, str) else self._model_spec
        if args.disable_dropout:
            disable_dropout(model)
        self.freeze_parts(model)
        if args.use_lora:
            model = apply_lora(model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                               target_modules=self.lora_targets(model))
        self.reference_strategy = args.resolved_reference(lora=is_peft_model(model))
        return model

    def prepare_reference(self) -> None:
        """The likelihood provider, the reference and the objective; a precomputed reference's columns attached to
        the datasets."""
        self.likelihood = self.build_likelihood()
        self.reference = make_reference(self.reference_strategy, self.accelerator.unwrap_model(self.model),
                                        dtype=self.args.reference_torch_dtype)
        self.objective = make_objective(self.args, reference=self.reference, likelihood=self.likelihood,
                                        reduce=partial(self.accelerator.reduce, reduction="mean"))
        if self.reference.reads_batch:
            self.train_dataset = self.attach_reference(self.train_dataset, "train_dataset")
            if self.eval_dataset is not None:
                self.eval_dataset = self.attach_reference(self.eval_dataset, "eval_dataset")

    def precompute_batch_size(self) -> int:
        """Batch size of the one-off reference pass: ``precompute_ref_batch_size``, else the eval batch size."""
        args = self.args
        return args.precompute_ref_batch_size or args.eval_batch_size or args.per_device_batch_size

    def resolved_config(self) -> DPOConfig:
        return dataclasses.replace(self.args, reference=self.reference_strategy)

    # ---------------------------------------------------------------------------------------------- the step

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(self.model, self.likelihood.prepare(batch, self.global_step))

    def num_examples(self, batch: dict) -> int:
        """Pairs in a ``[chosen; rejected]`` batch."""
        return batch["input_ids"].shape[0] // 2

    # ---------------------------------------------------------------------------------------------- outputs

    def save_final(self, output_dir: Path) -> None:
        """The model or PEFT adapter, the resolved config, the processing class and a model card whose code loads
        them."""
        super().save_final(output_dir)
        if self.accelerator.is_main_process:
            self.processing_class.save_pretrained(output_dir)
            config = self.resolved_config()
            model = self.accelerator.unwrap_model(self.model)
            lora = is_peft_model(model)
            base = self._model_spec if isinstance(self._model_spec, str) else model.config.name_or_path
            keys = ("loss_type", "beta", "reference", "learning_rate", "per_device_batch_size",
                    "gradient_accumulation_steps", "lora_r", "lora_alpha")
            settings = {key: getattr(config, key) for key in keys if lora or not key.startswith("lora")}
            write_transformers_card(output_dir, base_model=base, auto_class=self.auto_class,
                                    method=getattr(config, "method", "dpo"), lora=lora,
                                    settings={**settings, "steps": self.global_step})


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 (TRL's ``disable_dropout``: policy and reference see the same network)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def train_and_evaluate(trainer: TokenPreferenceTrainer) -> dict[str, float]:
    """``trainer.train()`` (``visalign train``); with an eval dataset on a fresh run, an evaluation before it too.

    Returns the final metrics, including ``initial_eval_rewards/accuracies`` and ``eval_rewards/accuracies``.
    """
    result: dict[str, Any] = {}
    if trainer.eval_dataset is not None and trainer.global_step == 0 and trainer.args.resume_from is None:
        result.update({f"initial_{k}": v for k, v in trainer.evaluate().items()})
    result.update(trainer.train())
    return result
