"""Stable Diffusion 1.5 / 2.x and SDXL components: loading, prompt encoding, SDXL micro-conditioning, VAE encoding.

Follows the diffusers training scripts (``train_text_to_image{,_sdxl}.py``, ``research_projects/diffusion_dpo``) and
the SDXL checklist of ``shared/reference/diffusion-methods.md`` §14. Loading is strict: missing, unexpected or
mismatched weight keys raise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from visalign.config_io import ConfigError
from visalign.models.builtin import is_builtin, resolve_model
from visalign.models.families import DiffusionFamily, family_of_checkpoint, family_of_text_encoders, get_family
from visalign.models.families import detect_family as find_family
from visalign.models.families.base import load_strict
from visalign.models.families.conditioning import PromptEmbeddings
from visalign.models.families.sd import SDFamily
from visalign.models.families.sdxl import SDXL_NUM_TIME_IDS, SDXL_TIME_IDS, SDXLFamily, sdxl_time_ids
from visalign.models.families.tokens import tokenize_prompts

# Re-exported for callers of this module: the SDXL time ids and the prompt tokenizer live with their families.
__all__ = ["SD", "SDXL", "SDXL_NUM_TIME_IDS", "SDXL_TIME_IDS", "DiffusionComponents", "PromptEmbeddings",
           "decode_latents", "detect_family", "embed_token_ids", "encode_images", "encode_prompts",
           "load_diffusion_components", "sdxl_time_ids", "tokenize_prompts"]

if TYPE_CHECKING:  # imported where models load, so `visalign train --help` does not pay for diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

logger = logging.getLogger(__name__)

SD = SDFamily.name
SDXL = SDXLFamily.name


def detect_family(unet_config) -> str:
    """The name of the family whose adapter accepts this UNet config (``visalign.models.families.detect_family``):
    ``"sdxl"`` when the UNet takes SDXL's pooled-text + time-ids embedding (``addition_embed_type == "text_time"``),
    ``"sd"`` (SD1.5 / SD2.x) without an added embedding."""
    return find_family(unet_config).name


@dataclass
class DiffusionComponents:
    """What a diffusion preference trainer needs from a text-to-image checkpoint.

    ``family`` names the family and ``adapter`` is its adapter (``visalign.models.families``). ``text_encoders``/
    ``tokenizers`` hold one entry for SD (``CLIPTextModel``) and two for SDXL (``CLIPTextModel``,
    ``CLIPTextModelWithProjection``). The scheduler is the family's training scheduler (``DDPMScheduler`` for SD/SDXL)
    built from the checkpoint's config.
    """

    family: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: tuple
    tokenizers: tuple
    scheduler: DDPMScheduler

    @property
    def adapter(self) -> DiffusionFamily:
        """The family's adapter (``visalign.models.families``): everything that differs between families."""
        return get_family(self.family)


def load_diffusion_components(
    model: str | os.PathLike,
    *,
    revision: str | None = None,
    variant: str | None = None,
    unet_dtype: torch.dtype = torch.float32,
    weight_dtype: torch.dtype = torch.float32,
    vae: str | os.PathLike | None = None,
    vae_subfolder: str | None = None,
    vae_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> DiffusionComponents:
    """Load SD1.5/SD2.x or SDXL components from a hub id or local folder (``subfolder="unet"``, ``"vae"``, ...); the
    family's adapter, detected from the denoiser's config, loads the denoiser and the text encoders and checks their
    dimensions.

    Args:
        model: hub id or local folder of a diffusers pipeline checkpoint.
        revision, variant: passed to every ``from_pretrained`` (e.g. ``variant="fp16"``).
        unet_dtype: dtype of the UNet (fp32 master weights for full fine-tuning; the frozen base in
            ``weight_dtype`` for LoRA, whose trainable parameters the LoRA setup upcasts).
        weight_dtype: dtype of the frozen text encoders (and of a user-given VAE, see ``vae_dtype``).
        vae: hub id or folder of a separate, fp16-safe VAE (e.g. ``madebyollin/sdxl-vae-fp16-fix``), loaded from
            ``vae_subfolder``; default: the checkpoint's own ``vae`` subfolder. Its latent channels must be the
            UNet's input channels; a ``builtin:NAME`` model keeps its own VAE (one warning line says so).
        vae_dtype: default fp32 for the checkpoint's own VAE (the stock SDXL VAE overflows in fp16, diffusers
            PR #4038), ``weight_dtype`` for a user-given VAE.
        device: where to put every component (default: leave on CPU for the trainer / accelerate to place).

    The VAE and text encoders are frozen (``requires_grad_(False)``, eval mode); the UNet is left as loaded.
    """
    import diffusers
    from diffusers import AutoencoderKL

    if vae is not None and is_builtin(model):
        logger.warning("%s ships the VAE its UNet was trained with; ignoring vae=%s (a recipe's VAE is for the model "
                       "the recipe names)", model, vae)
        vae = None
    model = resolve_model(model, revision=revision)
    common = {"revision": revision, "variant": variant}
    family = family_of_checkpoint(model, revision=revision)
    unet = family.load_denoiser(model, dtype=unet_dtype, **common)
    if vae is None:
        vae_model = load_strict(AutoencoderKL, model, subfolder="vae", dtype=vae_dtype or torch.float32, **common)
    else:
        vae_model = load_strict(AutoencoderKL, resolve_model(vae, what="VAE"), subfolder=vae_subfolder,
                                dtype=vae_dtype or weight_dtype)

    text_encoders, tokenizers = family.load_text_encoders(model, dtype=weight_dtype, revision=revision,
                                                          variant=variant)
    scheduler = getattr(diffusers, family.training_scheduler).from_pretrained(model, subfolder="scheduler",
                                                                              revision=revision)
    family.check_dimensions(str(model), unet, text_encoders)
    _check_vae(str(model), vae, vae_model, unet)

    for frozen in (vae_model, *text_encoders):
        frozen.requires_grad_(False).eval()
    if device is not None:
        for module in (unet, vae_model, *text_encoders):
            module.to(device)
    return DiffusionComponents(family.name, unet, vae_model, text_encoders, tokenizers, scheduler)


def _check_vae(model: str, vae: str | os.PathLike | None, vae_model: AutoencoderKL, unet) -> None:
    """A separate VAE must make the latents the UNet takes (its ``latent_channels`` are the UNet's ``in_channels``)."""
    if vae is not None and vae_model.config.latent_channels != unet.config.in_channels:
        raise ConfigError(f"vae {os.fspath(vae)!r} does not fit {model}: it makes {vae_model.config.latent_channels}-"
                          f"channel latents, the UNet takes {unet.config.in_channels}; pass --vae none for the "
                          "model's own VAE")


def encode_prompts(text_encoders: Sequence, tokenizers: Sequence, prompts: Sequence[str]) -> PromptEmbeddings:
    """Encode prompts as the pipeline of the family with this many text encoders conditions the UNet
    (``DiffusionFamily.encode_prompts``: SD, the last hidden state; SDXL, both encoders' penultimate hidden states
    concatenated and encoder 2's pooled projection). Outputs are in the encoders' dtype and on their device."""
    if len(text_encoders) != len(tokenizers):
        raise ValueError(f"encode_prompts: need one tokenizer per text encoder; got {len(text_encoders)} encoders and "
                         f"{len(tokenizers)} tokenizers")
    return family_of_text_encoders(len(text_encoders)).encode_prompts(text_encoders, tokenizers, prompts)


def embed_token_ids(text_encoders: Sequence, input_ids: Sequence[torch.Tensor]) -> PromptEmbeddings:
    """:func:`encode_prompts` from token ids (one ``[N, L]`` tensor per encoder), with autograd, for training the
    text encoders (``scripts/train_shapes_models.py``)."""
    if len(text_encoders) != len(input_ids):
        raise ValueError(f"embed_token_ids: need one id tensor per text encoder; got {len(text_encoders)} encoders "
                         f"and {len(input_ids)} id tensors")
    return family_of_text_encoders(len(text_encoders)).embed_token_ids(text_encoders, input_ids)


@torch.no_grad()
def encode_images(
    vae: AutoencoderKL,
    pixel_values: torch.Tensor,
    *,
    batch_size: int = 8,
    generator: torch.Generator | None = None,
    sample: bool = True,
) -> torch.Tensor:
    """VAE latents ``[N, C, h, w]`` in fp32 for pixels in ``[-1, 1]``, encoded ``batch_size`` images at a time
    (``--vae_encode_batch_size``), in the VAE's own dtype (fp32, or an fp16-safe VAE's fp16).

    ``latents = (z - shift_factor) * scaling_factor`` (``shift_factor`` only when the VAE config has one), with z a
    sample of the posterior (as the training scripts do) or its mean when ``sample=False``.
    """
    if batch_size < 1:
        raise ValueError(f"vae_encode_batch_size must be >= 1; got {batch_size}")
    lo, hi = float(pixel_values.min()), float(pixel_values.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"encode_images: pixel values must be in [-1, 1]; got range [{lo:.3g}, {hi:.3g}]")
    shift = vae.config.get("shift_factor") or 0.0
    chunks = []
    for chunk in pixel_values.split(batch_size):
        dist = vae.encode(chunk.to(device=vae.device, dtype=vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        chunks.append((z.float() - shift) * vae.config.scaling_factor)
    latents = torch.cat(chunks)
    if not torch.isfinite(latents).all():
        raise FloatingPointError(
            f"encode_images: non-finite latents from a {vae.dtype} VAE; keep the VAE in fp32 or use an fp16-safe "
            "VAE (e.g. madebyollin/sdxl-vae-fp16-fix)"
        )
    return latents


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Pixels in ``[-1, 1]`` (fp32) of latents scaled as :func:`encode_images` makes them, decoded in the VAE's own
    dtype with autocast off (whatever dtype the sampler left the latents in), as the inverse
    ``z = latents / scaling_factor + shift_factor``."""
    shift = vae.config.get("shift_factor") or 0.0
    z = latents.float() / vae.config.scaling_factor + shift
    with torch.autocast(device_type=vae.device.type, enabled=False):
        return vae.decode(z.to(device=vae.device, dtype=vae.dtype)).sample.float()
