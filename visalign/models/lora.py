"""LoRA through peft, shared by the text, VLM and diffusion trainers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import LoraConfig, get_peft_model


def apply_lora(
    model: torch.nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: Sequence[str] | str | None = None,
    init_lora_weights: bool | str = True,
):
    """Wrap ``model`` in a peft LoRA adapter named ``default``; the base weights are frozen.

    ``target_modules=None`` means every linear layer except the output head (peft's ``"all-linear"``); a list may
    hold module-name suffixes or full module names (used to keep LoRA off a VLM's vision tower). peft's default
    init (zero B) makes the adapted model equal to the base model at step 0, so the sigmoid loss starts at ln 2.
    """
    targets = "all-linear" if target_modules is None else (
        target_modules if isinstance(target_modules, str) else list(target_modules)
    )
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, init_lora_weights=init_lora_weights,
        task_type="CAUSAL_LM" if hasattr(model, "generate") and hasattr(model, "get_output_embeddings") else None,
    )
    return get_peft_model(model, config)
