"""Training configs shared by every trainer family: stdlib dataclasses, flat YAML, checked in ``__post_init__``.

``TrainingConfig`` holds what any accelerate run needs (data, optimisation, precision, logging, checkpoints, LoRA).
``PreferenceConfig`` adds the preference loss: ``loss_type`` (one name or a weighted list), ``beta``, the reference
strategy, and one flat field per loss hyper-parameter, generated from ``visalign.losses.LOSSES`` so a new loss's
hparams appear in configs, YAML and ``--help`` without touching this file. Each trainer family has one config on
these two (``DPOConfig``, ``VLMDPOConfig``, ``DiffusionConfig``, ``OnPolicyConfig``, ``SPMConfig``); its ``method``
is checked, and fills what it implies, through the one table in ``visalign.trainers.methods``.

Hyper-parameter fields default to ``None``: "use each selected loss's own default" (defaults can differ between
losses, e.g. ``label_smoothing`` is 0 for robust and 1e-3 for exo_pair). Setting one that no selected loss reads is
an error naming the key. Every error raised here names the key, before any model loads.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from visalign.losses import LOSSES, check_family, needs_reference, plan_losses
from visalign.trainers.methods import METHODS, Method, check_requirements, resolve_method

MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw_8bit", "adafactor")
TRACKERS = ("none", "tensorboard", "wandb")
REFERENCES = ("frozen_copy", "disable_adapter", "ref_adapter", "precomputed", "none")
REFERENCE_DTYPES = ("float32", "bfloat16", "float16")
# transformers' `SchedulerType` values (a test keeps them equal), listed here because importing transformers.trainer_utils
# loads peft and bitsandbytes, seconds that `visalign train --help` and `--print-config` should not pay.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
#: Largest accepted β: 200x the papers' largest (Diffusion-DPO's 5000); β·Δ beyond this saturates or overflows.
MAX_BETA = 1e6


def _help(text: str) -> dict[str, str]:
    """``dataclasses.field`` metadata carrying ``--help`` text (every trainer family's config imports it)."""
    return {"help": text}


def _check(ok: bool, cls: str, key: str, expected: str, value: Any) -> None:
    """Raise ``ValueError("<Config>.<key> must be <expected>; got <value>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{cls}.{key} must be {expected}; got {value!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class TrainingConfig:
    """Generic run settings: data, optimiser, schedule, precision, logging, checkpoints and LoRA.

    ``TRAINER`` names the trainer family in ``visalign.trainers.methods.TRAINERS`` whose methods the config trains
    (None: any method, as for the shared bases); ``__post_init__`` resolves ``method`` through that table first.
    """

    TRAINER: ClassVar[str | None] = None

    method: str = field(default="dpo", metadata=_help("the method to train (`visalign train` picks its trainer)"))
    model: str | None = field(
        default=None,
        metadata=_help("hub id, local save_pretrained folder or builtin:NAME of the model to train"),
    )
    dataset: str | None = field(
        default=None,
        metadata=_help("training data: hub id, .jsonl/.json/.parquet/.csv file, save_to_disk folder or builtin:NAME"),
    )
    dataset_split: str = field(default="train", metadata=_help("split of `dataset` to train on"))
    eval_dataset: str | None = field(
        default=None, metadata=_help("held-out data (same forms as `dataset`); none = no evaluation")
    )
    eval_split: str = field(default="test", metadata=_help("split of `eval_dataset` to evaluate on"))
    output_dir: str = field(
        default="outputs", metadata=_help("folder for checkpoints, metrics.jsonl, trackers and the final model")
    )
    seed: int = field(default=42, metadata=_help("seed for weights init, data order and dropout"))
    learning_rate: float = field(default=1e-6, metadata=_help("peak learning rate (after warmup)"))
    lr_scheduler: str = field(
        default="linear", metadata=_help(f"learning-rate schedule, one of transformers' {', '.join(LR_SCHEDULERS)}")
    )
    warmup_steps: int = field(default=0, metadata=_help("optimizer steps of linear warmup from 0 to learning_rate"))
    max_steps: int = field(default=-1, metadata=_help("optimizer steps to run; -1 = num_epochs passes over the data"))
    num_epochs: int = field(default=1, metadata=_help("passes over the training data when max_steps is -1"))
    per_device_batch_size: int = field(
        default=8, metadata=_help("examples (pairs for preference data) per device per micro-batch")
    )
    eval_batch_size: int | None = field(
        default=None, metadata=_help("examples per device per evaluation batch; none = per_device_batch_size")
    )
    gradient_accumulation_steps: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    max_grad_norm: float | None = field(
        default=1.0, metadata=_help("clip the global gradient L2 norm to this; none or 0 = no clipping")
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = field(
        default="no", metadata=_help("accelerate mixed precision: no | fp16 | bf16 (loss maths stays fp32)")
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("recompute activations in the backward pass to save memory (non-reentrant)")
    )
    optimizer: Literal["adamw", "adamw_8bit", "adafactor"] = field(
        default="adamw", metadata=_help("adamw (torch) | adamw_8bit (needs bitsandbytes) | adafactor (transformers)")
    )
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW β1"))
    adam_beta2: float = field(default=0.999, metadata=_help("AdamW β2"))
    adam_epsilon: float = field(default=1e-8, metadata=_help("AdamW ε"))
    weight_decay: float = field(
        default=0.0, metadata=_help("decoupled weight decay; biases and norm weights are never decayed")
    )
    dataloader_num_workers: int = field(default=0, metadata=_help("DataLoader worker processes"))
    logging_steps: int = field(default=10, metadata=_help("log averaged metrics every this many optimizer steps"))
    save_steps: int = field(default=500, metadata=_help("checkpoint every this many optimizer steps; 0 = never"))
    save_total_limit: int | None = field(
        default=None, metadata=_help("keep only the newest this many checkpoints; none = keep all")
    )
    resume_from: str | None = field(
        default=None, metadata=_help("none | latest (newest complete checkpoint in output_dir) | checkpoint folder")
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata=_help("let a fresh run use a non-empty output_dir, deleting its checkpoints/ and metrics.jsonl "
                       "(without it, a fresh run refuses a non-empty output_dir)"),
    )
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata=_help("trackers besides metrics.jsonl: none | tensorboard | wandb (comma-separated for several)"),
    )
    max_nonfinite_steps: int = field(
        default=3,
        metadata=_help("consecutive optimizer steps with a non-finite loss or gradient tolerated (each is skipped) "
                       "before the run stops"),
    )
    use_lora: bool = field(default=False, metadata=_help("train a LoRA adapter (peft) instead of all weights"))
    lora_r: int = field(default=16, metadata=_help("LoRA rank"))
    lora_alpha: float = field(default=32.0, metadata=_help("LoRA alpha (the update is scaled by alpha / r)"))
    lora_dropout: float = field(default=0.0, metadata=_help("dropout on the LoRA input"))
    lora_target_modules: list[str] | None = field(
        default=None, metadata=_help("module names to adapt; none = every linear layer except the output head")
    )

    def __post_init__(self) -> None:
        resolve_method(self)
        c = type(self).__name__
        _check(isinstance(self.seed, int) and 0 <= self.seed < 2**32, c, "seed", "an integer in [0, 2**32) (numpy's "
               "seed range)", self.seed)
        _check(_is_number(self.learning_rate) and self.learning_rate > 0, c, "learning_rate", "> 0", self.learning_rate)
        _check(self.lr_scheduler in LR_SCHEDULERS, c, "lr_scheduler", f"one of {', '.join(LR_SCHEDULERS)}",
               self.lr_scheduler)
        _check(self.warmup_steps >= 0, c, "warmup_steps", ">= 0", self.warmup_steps)
        _check(self.max_steps == -1 or self.max_steps > 0, c, "max_steps", "-1 or > 0", self.max_steps)
        _check(self.num_epochs >= 1, c, "num_epochs", ">= 1", self.num_epochs)
        for key in ("per_device_batch_size", "gradient_accumulation_steps", "logging_steps"):
            _check(getattr(self, key) >= 1, c, key, ">= 1", getattr(self, key))
        _check(self.eval_batch_size is None or self.eval_batch_size >= 1, c, "eval_batch_size", "none or >= 1",
               self.eval_batch_size)
        _check(self.max_grad_norm is None or (_is_number(self.max_grad_norm) and self.max_grad_norm >= 0), c,
               "max_grad_norm", "none or >= 0", self.max_grad_norm)
        _check(self.mixed_precision in MIXED_PRECISION, c, "mixed_precision", " | ".join(MIXED_PRECISION),
               self.mixed_precision)
        _check(self.optimizer in OPTIMIZERS, c, "optimizer", " | ".join(OPTIMIZERS), self.optimizer)
        if self.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(f"{c}.optimizer 'adamw_8bit' needs bitsandbytes: pip install bitsandbytes")
        for key in ("adam_beta1", "adam_beta2"):
            value = getattr(self, key)
            _check(_is_number(value) and 0 <= value < 1, c, key, "in [0, 1)", value)
        _check(_is_number(self.adam_epsilon) and self.adam_epsilon > 0, c, "adam_epsilon", "> 0", self.adam_epsilon)
        _check(_is_number(self.weight_decay) and self.weight_decay >= 0, c, "weight_decay", ">= 0", self.weight_decay)
        _check(self.dataloader_num_workers >= 0, c, "dataloader_num_workers", ">= 0", self.dataloader_num_workers)
        _check(self.save_steps >= 0, c, "save_steps", ">= 0", self.save_steps)
        _check(self.save_total_limit is None or self.save_total_limit >= 1, c, "save_total_limit", "none or >= 1",
               self.save_total_limit)
        _check(self.max_nonfinite_steps >= 0, c, "max_nonfinite_steps", ">= 0", self.max_nonfinite_steps)
        if isinstance(self.report_to, str):
            self.report_to = [part.strip() for part in self.report_to.split(",") if part.strip()]
        for tracker in self.report_to:
            _check(tracker in TRACKERS, c, "report_to", f"a list of {', '.join(TRACKERS)}", self.report_to)
        if "wandb" in self.report_to and importlib.util.find_spec("wandb") is None:
            raise ValueError(f"{c}.report_to includes 'wandb' but wandb is not installed: pip install wandb")
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ValueError(f"{c}.report_to: 'none' cannot be combined with trackers; got {self.report_to}")
        _check(self.lora_r >= 1, c, "lora_r", ">= 1", self.lora_r)
        _check(_is_number(self.lora_alpha) and self.lora_alpha > 0, c, "lora_alpha", "> 0", self.lora_alpha)
        _check(0.0 <= self.lora_dropout < 1.0, c, "lora_dropout", "in [0, 1)", self.lora_dropout)

    @property
    def method_spec(self) -> Method | None:
        """What ``method`` means (``visalign.trainers.methods.METHODS``); None for a name outside the table."""
        return METHODS.get(self.method)

    @property
    def trackers(self) -> list[str]:
        """The accelerate trackers to start (``report_to`` without ``none``)."""
        return [t for t in self.report_to if t != "none"]


def _hparam_fields() -> list[tuple[str, Any, Any]]:
    """One ``(name, type | None, field)`` per hyper-parameter in ``LOSSES``, with help naming its readers."""
    readers: dict[str, list[tuple[str, Any]]] = {}
    for loss_name, spec in LOSSES.items():
        for key, default in spec.hparams.items():
            readers.setdefault(key, []).append((loss_name, default))
    fields = []
    for key, uses in readers.items():
        defaults = {repr(default) for _, default in uses}
        if len(defaults) == 1:
            default_text = f"default {defaults.pop()}"
        else:
            default_text = "defaults " + ", ".join(f"{name} {default!r}" for name, default in uses)
        kind = type(uses[0][1])
        help_text = f"read by {', '.join(name for name, _ in uses)} ({default_text}); none = each loss's default"
        fields.append((key, kind | None, field(default=None, metadata=_help(help_text))))
    return fields


_HPARAM_FIELDS = _hparam_fields()
#: Names of every loss hyper-parameter field of ``PreferenceConfig``.
LOSS_HPARAMS: tuple[str, ...] = tuple(name for name, *_ in _HPARAM_FIELDS)


def _with_loss_hparams(cls: type) -> type:
    """Add one ``None``-default field per loss hparam to ``cls`` before ``@dataclass`` collects its fields."""
    for name, kind, spec in _HPARAM_FIELDS:
        cls.__annotations__[name] = kind
        setattr(cls, name, spec)
    return cls


@dataclass
@_with_loss_hparams
class PreferenceConfig(TrainingConfig):
    """``TrainingConfig`` plus the preference loss (``visalign.losses``), its hparams and the reference strategy.

    The method (``visalign.trainers.methods``) says what its trainer scores (``likelihood``, one of
    ``visalign.losses.LIKELIHOODS``) and on which data (``unpaired``); a loss it cannot run
    (``visalign.losses.check_family``) fails here. ``loss_type`` and ``beta`` left unset take the method's.
    """

    loss_type: str | list[str] | None = field(
        default=None,
        metadata={**_help(f"preference loss or weighted list of losses, from: {', '.join(LOSSES)}; none = the "
                          "method's (sigmoid; mapo, kto and spo for those methods)"), "aliases": ("loss",)},
    )
    loss_weights: list[float] | None = field(
        default=None, metadata=_help("one weight per loss_type entry (loss = Σ w_k·mean(loss_k)); none = all 1")
    )
    beta: float | None = field(
        default=None,
        metadata=_help(
            "none = the method's (0.1 text and VLM; Diffusion-DPO 5000, MaPO 0.1, DCPO 500, SPO 10). "
            "β multiplies the policy-minus-reference log-likelihood ratios (summed completion-token log-probs for "
            "text; the ELBO surrogate for diffusion); for reference-free losses it multiplies the policy "
            "log-likelihoods (SimPO/ORPO: mean token log-probs; ORPO: it is λ on the log-odds term)"
        ),
    )
    reference: str = field(
        default="auto",
        metadata=_help(
            f"reference model: auto | {' | '.join(REFERENCES)}; auto = disable_adapter with LoRA, frozen_copy "
            "otherwise, and none when every loss is reference-free"
        ),
    )
    reference_dtype: str | None = field(
        default=None,
        metadata=_help(f"dtype of a frozen_copy reference: {' | '.join(REFERENCE_DTYPES)}; none = the policy's"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        c = type(self).__name__
        for key in ("loss_type", "beta"):
            if getattr(self, key) is None:
                raise ValueError(f"{c}.{key} must be set: method {self.method!r} has no default for it")
        if isinstance(self.loss_type, (list, tuple)) and len(self.loss_type) == 1:
            self.loss_type = self.loss_type[0]
        _check(_is_number(self.beta) and 0 < self.beta <= MAX_BETA, c, "beta",
               f"> 0 and <= {MAX_BETA:g} (larger values overflow the loss's logits)", self.beta)
        if self.loss_weights is not None and isinstance(self.loss_type, str):
            raise ValueError(f"{c}.loss_weights is only for a list of losses; loss_type is {self.loss_type!r}")
        try:
            self._validate_losses()
        except ValueError as exc:
            raise ValueError(f"{c}: {exc}") from None
        if self.reference != "auto":
            _check(self.reference in REFERENCES, c, "reference", "auto | " + " | ".join(REFERENCES), self.reference)
            uses_reference = needs_reference(self.loss_types)
            if not uses_reference and self.reference != "none":
                raise ValueError(
                    f"{c}.reference is {self.reference!r} but every loss in {self.loss_types} is reference-free; "
                    "set reference to none (or leave it unset)"
                )
            if uses_reference and self.reference == "none":
                raise ValueError(f"{c}.reference 'none' is impossible: loss_type {self.loss_types} needs a reference")
        if self.reference_dtype is not None:
            _check(self.reference_dtype in REFERENCE_DTYPES, c, "reference_dtype", " | ".join(REFERENCE_DTYPES),
                   self.reference_dtype)
        check_requirements(self)

    @property
    def loss_types(self) -> list[str]:
        """``loss_type`` as a list."""
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)

    @property
    def loss_hparams(self) -> dict[str, Any]:
        """The loss hparams the user set (``None`` fields left out, so each loss keeps its own default)."""
        return {key: getattr(self, key) for key in LOSS_HPARAMS if getattr(self, key) is not None}

    @property
    def reference_torch_dtype(self):
        """``reference_dtype`` as a ``torch.dtype`` (None: the policy's)."""
        import torch

        return None if self.reference_dtype is None else getattr(torch, self.reference_dtype)

    def resolved_reference(self, *, lora: bool | None = None) -> str:
        """The reference strategy in effect: ``reference`` unless ``auto``, else none / disable_adapter / frozen_copy
        (``lora`` says whether the policy is a PEFT model; default ``use_lora``)."""
        if self.reference != "auto":
            return self.reference
        if not needs_reference(self.loss_types):
            return "none"
        return "disable_adapter" if (self.use_lora if lora is None else lora) else "frozen_copy"

    def _validate_losses(self) -> None:
        """Check loss names, weights and hparams with the loss core (errors name the loss and key)."""
        names = self.loss_types
        method = self.method_spec
        if self.TRAINER is not None and method.likelihood is not None:  # a family config: its method's likelihood
            check_family(names, likelihood=method.likelihood, unpaired=method.unpaired)
        unpaired = [name for name in names if name in LOSSES and not LOSSES[name].paired]
        if not unpaired:
            plan_losses(names, beta=self.beta, loss_weights=self.loss_weights, **self.loss_hparams)
            return
        if len(names) > 1:
            raise ValueError(f"loss {unpaired[0]!r} (unpaired data) cannot be combined with other losses: {names}")
        spec = LOSSES[unpaired[0]]
        for key in self.loss_hparams:
            if key not in spec.hparams:
                raise ValueError(f"hparam {key!r} is not read by loss {unpaired[0]!r}")
        spec.resolve(unpaired[0], self.loss_hparams)
