"""Vision-language models: loading (``AutoModelForImageTextToText`` / ``AutoProcessor``) and the surgery the VLM
trainer does on them: freezing the vision tower or projector, and LoRA targets on the language model only.

Works for LLaVA-1.5, LLaVA-NeXT, Qwen2-VL and any transformers VLM whose parts are attributes of ``model.model``
(or of the model itself) under the names below.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from visalign.models.builtin import resolve_model
from visalign.models.causal_lm import resolve_dtype

#: Attribute names of the parts of a transformers VLM (``model.model.<name>``), first match wins.
VISION_TOWERS = ("vision_tower", "visual")
PROJECTORS = ("multi_modal_projector",)
LANGUAGE_MODELS = ("language_model",)


def load_vlm(name_or_path: str, *, dtype: str | torch.dtype | None = "auto", attn_implementation: str | None = None,
             trust_remote_code: bool = False) -> PreTrainedModel:
    """A VLM from a hub id, a local folder or ``builtin:NAME`` (``AutoModelForImageTextToText.from_pretrained``)."""
    kwargs = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForImageTextToText.from_pretrained(resolve_model(name_or_path), **kwargs)


def load_processor(name_or_path: str, *, trust_remote_code: bool = False) -> ProcessorMixin:
    """The processor of a hub id, local folder or ``builtin:NAME`` (``AutoProcessor.from_pretrained``)."""
    return AutoProcessor.from_pretrained(resolve_model(name_or_path), trust_remote_code=trust_remote_code)


def vlm_part(model: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Module | None:
    """The first of ``names`` found on the VLM's inner model (``model.model``) or on the model itself."""
    for owner in (getattr(model, "model", None), model):
        for name in names:
            part = getattr(owner, name, None) if owner is not None else None
            if isinstance(part, torch.nn.Module):
                return part
    return None


def freeze_vlm_parts(model: torch.nn.Module, *, vision_tower: bool, projector: bool) -> None:
    """Keep the weights of the vision tower and/or the vision-to-text projector fixed (a part the model lacks is
    skipped)."""
    for flag, names in ((vision_tower, VISION_TOWERS), (projector, PROJECTORS)):
        part = vlm_part(model, names) if flag else None
        if part is not None:
            part.requires_grad_(False)


def language_lora_targets(model: torch.nn.Module) -> list[str]:
    """Full names of the language model's ``nn.Linear`` layers (LoRA on the language model only; never ``lm_head``)."""
    language = vlm_part(model, LANGUAGE_MODELS)
    if language is None:
        raise ValueError(f"{type(model).__name__}: cannot find the language model ({', '.join(LANGUAGE_MODELS)})")
    ids = {id(m) for m in language.modules() if isinstance(m, torch.nn.Linear)}
    return [name for name, module in model.named_modules() if id(module) in ids]
