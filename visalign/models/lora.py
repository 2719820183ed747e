"""LoRA through peft, shared by the text, VLM and diffusion trainers: ``apply_lora(model, r=..., alpha=...)``.

``get_peft_model`` wraps the model in a ``PeftModel`` whose adapter ``"default"`` is the only trainable part. peft's
default init (zero ``B``) makes the adapted model equal to the base model at step 0, so the ``disable_adapter``
reference gives ``policy − reference = 0`` exactly and the sigmoid loss starts at ln 2. A transformers causal LM
gets ``task_type="CAUSAL_LM"``, so the adapter folder reloads with ``AutoPeftModelForCausalLM``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from peft import PeftModel


def apply_lora(
    model: torch.nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: Sequence[str] | str | None = None,
    init_lora_weights: bool | str = True,
) -> PeftModel:
    """Wrap ``model`` in a fresh peft LoRA adapter named ``default``; the base weights are frozen.

    Args:
        r: LoRA rank.
        alpha: scaling numerator (the update is ``alpha / r · B A``).
        dropout: dropout on the LoRA input, in ``[0, 1)``.
        target_modules: module-name suffixes or full module names (e.g. to keep LoRA off a VLM's vision tower);
            ``None`` means every linear layer except the output head (peft's ``"all-linear"``).
        init_lora_weights: peft's init (``True``: zero ``B``; ``"gaussian"`` ...).
    """
    from peft import LoraConfig, get_peft_model  # here, not at import: peft loads bitsandbytes and takes seconds

    if r <= 0:
        raise ValueError(f"lora_r must be positive; got {r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1); got {dropout}")
    targets = "all-linear" if target_modules is None else (
        target_modules if isinstance(target_modules, str) else list(target_modules)
    )
    if not isinstance(targets, str):
        check_lora_targets(model, targets)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, init_lora_weights=init_lora_weights,
        task_type="CAUSAL_LM" if hasattr(model, "generate") and hasattr(model, "get_output_embeddings") else None,
    )
    with warnings.catch_warnings():  # peft reads transformers' deprecated alias; nothing for a user to change
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


def is_peft_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft ``PeftModel`` (or duck-types one: ``peft_config`` and a ``disable_adapter()``
    context), i.e. carries adapters that the ``disable_adapter`` reference can switch off."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def check_lora_targets(model: torch.nn.Module, targets: Sequence[str]) -> None:
    """Raise ``ValueError`` naming every LoRA target that matches no module of ``model`` (peft's rule: the full
    module name or a dotted suffix of it), listing the adaptable names that exist. peft itself only fails when no
    target matches, so one misspelled name among several would silently go unadapted."""
    names = [name for name, module in model.named_modules() if isinstance(module, _ADAPTABLE)]
    unknown = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if unknown:
        suffixes = sorted({".".join(name.split(".")[-2:]) if name.split(".")[-1].isdigit() else name.split(".")[-1]
                           for name in names})
        raise ValueError(f"lora_target_modules {unknown} match no layer of {type(model).__name__}; adaptable layer "
                         f"names are {suffixes}")


#: Layer types peft's LoRA adapts.
_ADAPTABLE = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Embedding)
