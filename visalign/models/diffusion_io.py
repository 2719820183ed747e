"""Saving trained diffusion UNets in the ecosystem's formats, with a model card.

- LoRA: the adapter of a UNet set up with diffusers' ``unet.add_adapter(LoraConfig(...))``, written by the
  ``save_lora_weights`` of the family's diffusers pipeline (``DiffusionFamily.save_lora``:
  ``StableDiffusionLoraLoaderMixin`` for SD1.5/SD2.x, ``StableDiffusionXLLoraLoaderMixin`` for SDXL) from
  ``get_peft_model_state_dict`` + ``convert_state_dict_to_diffusers``, as the diffusers LoRA training scripts save it;
  the adapter config (rank, alpha, targets) travels as metadata. Load it with ``pipe.load_lora_weights(output_dir)``.
- Full fine-tune: ``unet.save_pretrained(output_dir / "unet")`` (safetensors), loadable with
  ``UNet2DConditionModel.from_pretrained(output_dir, subfolder="unet")`` and swappable into a pipeline.
- ``README.md``: a Hugging Face model card (YAML front matter, how to load, the training settings).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import save_torch_state_dict

from visalign.models.card import base_model_code, front_matter, settings_table
from visalign.models.families import DiffusionFamily, get_family

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
UNET_SUBFOLDER = "unet"


def has_lora(unet: torch.nn.Module) -> bool:
    """True when ``unet`` carries a diffusers/peft adapter (``unet.add_adapter``)."""
    return bool(getattr(unet, "peft_config", None))


def unet_lora_state_dict(unet: torch.nn.Module, state_dict: Mapping[str, torch.Tensor] | None = None) -> dict:
    """The adapter weights of ``unet`` in diffusers' key format (``...attn1.to_q.lora.down.weight``), on CPU.

    ``state_dict``: the full state dict to take them from (e.g. ``accelerator.get_state_dict`` under FSDP/DeepSpeed);
    default ``unet.state_dict()``.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    if not has_lora(unet):
        raise ValueError("unet_lora_state_dict: the UNet has no LoRA adapter (set one up with unet.add_adapter)")
    peft_state = get_peft_model_state_dict(unet, state_dict=None if state_dict is None else dict(state_dict))
    return {key: value.detach().cpu().contiguous() for key, value in convert_state_dict_to_diffusers(peft_state).items()}


def save_diffusion_lora(
    output_dir: str | Path,
    unet: torch.nn.Module,
    family: str | DiffusionFamily,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    is_main_process: bool = True,
) -> Path:
    """Write ``output_dir/pytorch_lora_weights.safetensors`` for ``pipe.load_lora_weights(output_dir)``.

    ``family`` is a family name (``components.family``) or adapter, whose ``save_lora`` writes the family's format;
    every process may call it, only ``is_main_process`` writes.
    """
    adapter = get_family(family)
    layers = unet_lora_state_dict(unet, state_dict)
    adapter.save_lora(output_dir, layers, metadata=unet.peft_config["default"].to_dict(),
                      weight_name=LORA_WEIGHT_NAME, is_main_process=is_main_process)
    return Path(output_dir) / LORA_WEIGHT_NAME


def save_diffusion_unet(
    output_dir: str | Path,
    unet: torch.nn.Module,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    is_main_process: bool = True,
) -> Path:
    """``save_pretrained`` a fully fine-tuned UNet into ``output_dir/unet`` (safetensors).

    With ``state_dict`` (the gathered weights of a sharded FSDP/DeepSpeed model, which diffusers' ``save_pretrained``
    cannot take), the same layout is written from it: ``config.json`` and ``diffusion_pytorch_model*.safetensors``
    shards of at most 10 GB with their index, as ``save_pretrained`` writes them.
    """
    path = Path(output_dir) / UNET_SUBFOLDER
    if state_dict is None:
        unet.save_pretrained(path, is_main_process=is_main_process, safe_serialization=True)
    elif is_main_process:
        unet.save_config(path)
        save_torch_state_dict(dict(state_dict), path, filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
                              max_shard_size="10GB")
    return path


def write_model_card(
    output_dir: str | Path,
    *,
    base_model: str,
    family: str | DiffusionFamily,
    method: str,
    lora: bool,
    settings: Mapping[str, Any],
    validation_image: str | None = None,
    prompt: str = "a photo of an astronaut riding a horse",
) -> Path:
    """Write ``output_dir/README.md``: front matter (``library_name: diffusers``, tags), code that loads the result
    from ``output_dir`` and renders ``prompt`` (one the model knows), and the training ``settings`` (e.g. the resolved
    config's method-relevant keys); ``visalign.models.card.write_card_results`` adds the results after training."""
    adapter = get_family(family)
    pipeline = adapter.pipeline_name
    imports, base = base_model_code(base_model)
    folder = str(output_dir)
    tags = ["text-to-image", "diffusers", "visalign", method, *adapter.card_tags]
    if lora:
        tags.append("lora")
        load = f"pipe = {pipeline}.from_pretrained({base})\npipe.load_lora_weights({folder!r})"
    else:
        load = (f"unet = UNet2DConditionModel.from_pretrained({folder!r}, subfolder=\"unet\")\n"
                f"pipe = {pipeline}.from_pretrained({base}, unet=unet)")
    image = f"\n![validation images]({validation_image})\n" if validation_image else ""
    text = f"""{front_matter(base_model, "diffusers", tags)}
# {method} {"LoRA" if lora else "fine-tune"} of {base_model}

Trained with visalign (`method: {method}`) on image preference pairs.
{image}
## Use

```python
from diffusers import {pipeline}{", UNet2DConditionModel" if not lora else ""}
{imports}
{load}
image = pipe({prompt!r}).images[0]
```

## Training settings

β follows the Diffusion-DPO paper's convention (`-logσ(-β/2·(Δθ - Δref))`); the diffusers SD1.5 script's
`--beta_dpo 2500` is β 5000 here. The full resolved config is in `config.yaml`.

{settings_table(settings)}"""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
