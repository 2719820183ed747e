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

if TYPE_CHECKING:  # imported where models load, so `visalign train --help` does not pay for diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

logger = logging.getLogger(__name__)

SD = "sd"
SDXL = "sdxl"
SDXL_NUM_TIME_IDS = 6  # (orig_h, orig_w, crop_top, crop_left, target_h, target_w); the refiner's 5 are unsupported
#: SDXL time-id conventions (:func:`sdxl_time_ids`): ``true_size``, each image's true original size and crop (the
#: diffusers port, MaPO); ``square_resolution``, ``(res, res, 0, 0, res, res)`` for every image (Salesforce
#: Diffusion-DPO, InPO, SmPO, DCPO; reference ``diffusion-methods.md`` §14).
SDXL_TIME_IDS = ("true_size", "square_resolution")


def detect_family(unet_config) -> str:
    """``"sdxl"`` when the UNet takes SDXL's pooled-text + time-ids embedding (``addition_embed_type == "text_time"``),
    else ``"sd"`` (SD1.5 / SD2.x)."""
    return SDXL if unet_config.get("addition_embed_type") == "text_time" else SD


@dataclass
class DiffusionComponents:
    """What a diffusion preference trainer needs from a text-to-image checkpoint.

    ``text_encoders``/``tokenizers`` hold one entry for SD (``CLIPTextModel``) and two for SDXL (``CLIPTextModel``,
    ``CLIPTextModelWithProjection``). The scheduler is always a ``DDPMScheduler`` built from the checkpoint's config.
    """

    family: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: tuple
    tokenizers: tuple
    scheduler: DDPMScheduler


def _load_strict(cls, path, **kwargs):
    """``cls.from_pretrained(path, **kwargs)``, raising if any weight key is missing, unexpected or mismatched."""
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    keys = ("missing_keys", "unexpected_keys", "mismatched_keys")
    problems = {key: sorted(map(str, info.get(key) or ())) for key in keys if info.get(key)}
    if problems:
        where = os.path.join(str(path), kwargs.get("subfolder") or "")
        raise ValueError(f"loading {cls.__name__} from {where}: weights do not match the architecture: {problems}")
    return model


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
    """Load SD1.5/SD2.x or SDXL components from a hub id or local folder (``subfolder="unet"``, ``"vae"``, ...).

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
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    if vae is not None and is_builtin(model):
        logger.warning("%s ships the VAE its UNet was trained with; ignoring vae=%s (a recipe's VAE is for the model "
                       "the recipe names)", model, vae)
        vae = None
    model = resolve_model(model, revision=revision)
    common = {"revision": revision, "variant": variant}
    unet = _load_strict(UNet2DConditionModel, model, subfolder="unet", dtype=unet_dtype, **common)
    family = detect_family(unet.config)
    if vae is None:
        vae_model = _load_strict(AutoencoderKL, model, subfolder="vae", dtype=vae_dtype or torch.float32, **common)
    else:
        vae_model = _load_strict(AutoencoderKL, resolve_model(vae, what="VAE"), subfolder=vae_subfolder,
                                 dtype=vae_dtype or weight_dtype)

    encoder_classes = (CLIPTextModel,) if family == SD else (CLIPTextModel, CLIPTextModelWithProjection)
    suffixes = ("",) if family == SD else ("", "_2")
    text_encoders = tuple(
        _load_strict(cls, model, subfolder=f"text_encoder{sfx}", dtype=weight_dtype, **common)
        for cls, sfx in zip(encoder_classes, suffixes)
    )
    tokenizers = tuple(
        AutoTokenizer.from_pretrained(model, subfolder=f"tokenizer{sfx}", revision=revision) for sfx in suffixes
    )
    scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler", revision=revision)
    _check_dimensions(str(model), family, unet, text_encoders)
    _check_vae(str(model), vae, vae_model, unet)

    for frozen in (vae_model, *text_encoders):
        frozen.requires_grad_(False).eval()
    if device is not None:
        for module in (unet, vae_model, *text_encoders):
            module.to(device)
    return DiffusionComponents(family, unet, vae_model, text_encoders, tokenizers, scheduler)


def _check_vae(model: str, vae: str | os.PathLike | None, vae_model: AutoencoderKL, unet) -> None:
    """A separate VAE must make the latents the UNet takes (its ``latent_channels`` are the UNet's ``in_channels``)."""
    if vae is not None and vae_model.config.latent_channels != unet.config.in_channels:
        raise ConfigError(f"vae {os.fspath(vae)!r} does not fit {model}: it makes {vae_model.config.latent_channels}-"
                          f"channel latents, the UNet takes {unet.config.in_channels}; pass --vae none for the "
                          "model's own VAE")


def _check_dimensions(model: str, family: str, unet, text_encoders) -> None:
    """Fail before any compute if the UNet cannot consume these encoders' outputs."""
    text_dim = sum(te.config.hidden_size for te in text_encoders)
    if unet.config.cross_attention_dim != text_dim:
        raise ValueError(
            f"{model}: unet.config.cross_attention_dim={unet.config.cross_attention_dim} but the text encoders give "
            f"{text_dim}-d token embeddings"
        )
    if family == SDXL:
        expected = SDXL_NUM_TIME_IDS * unet.config.addition_time_embed_dim + text_encoders[1].config.projection_dim
        if unet.config.projection_class_embeddings_input_dim != expected:
            raise ValueError(
                f"{model}: unet.config.projection_class_embeddings_input_dim="
                f"{unet.config.projection_class_embeddings_input_dim}, expected {expected} for SDXL base (6 time ids "
                f"+ pooled text); the SDXL refiner (aesthetic-score time ids) is not supported"
            )


@dataclass
class PromptEmbeddings:
    """Encoded prompts: ``hidden_states`` ``[N, L, D]``; ``pooled`` ``[N, D_pooled]`` for SDXL, else None."""

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """``[N, model_max_length]`` input ids, padded to ``max_length`` and truncated, as the SD/SDXL pipelines do."""
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {i} must be a str; got {type(prompt).__name__}")
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_prompts(text_encoders: Sequence, tokenizers: Sequence, prompts: Sequence[str]) -> PromptEmbeddings:
    """Encode prompts as the SD / SDXL pipelines condition the UNet (:func:`embed_token_ids` of each tokenizer's ids).

    One encoder (SD1.5/SD2.x): the last hidden state. Two encoders (SDXL): the penultimate hidden states
    (``hidden_states[-2]``) of both, concatenated on the feature axis, and the pooled embedding from encoder 2's
    projection (``text_embeds``). Outputs are in the encoders' dtype and on their device.
    """
    if len(text_encoders) != len(tokenizers) or len(text_encoders) not in (1, 2):
        raise ValueError(f"encode_prompts: need 1 (SD) or 2 (SDXL) encoder/tokenizer pairs; got "
                         f"{len(text_encoders)} encoders and {len(tokenizers)} tokenizers")
    return embed_token_ids(text_encoders, [tokenize_prompts(tokenizer, prompts) for tokenizer in tokenizers])


def embed_token_ids(text_encoders: Sequence, input_ids: Sequence[torch.Tensor]) -> PromptEmbeddings:
    """:func:`encode_prompts` from token ids (one ``[N, L]`` tensor per encoder), with autograd, for training the
    text encoders (``scripts/train_shapes_models.py``)."""
    if len(text_encoders) != len(input_ids) or len(text_encoders) not in (1, 2):
        raise ValueError(f"embed_token_ids: need 1 (SD) or 2 (SDXL) encoders with one id tensor each; got "
                         f"{len(text_encoders)} encoders and {len(input_ids)} id tensors")
    if len(text_encoders) == 1:
        encoder = text_encoders[0]
        return PromptEmbeddings(encoder(input_ids[0].to(encoder.device), return_dict=True).last_hidden_state)
    from transformers import CLIPTextModelWithProjection

    if not isinstance(text_encoders[1], CLIPTextModelWithProjection):
        raise TypeError("encode_prompts: SDXL's second text encoder must be a CLIPTextModelWithProjection "
                        f"(the pooled embedding is its projection); got {type(text_encoders[1]).__name__}")
    outputs = [encoder(ids.to(encoder.device), output_hidden_states=True, return_dict=True)
               for encoder, ids in zip(text_encoders, input_ids)]
    device = outputs[0].hidden_states[-2].device
    hidden = torch.cat([out.hidden_states[-2].to(device) for out in outputs], dim=-1)
    return PromptEmbeddings(hidden, outputs[1].text_embeds.to(device))


def _pairs(name: str, values, n: int | None) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float32)
    if tensor.ndim == 1 and tensor.shape == (2,) and n is not None:
        tensor = tensor.expand(n, 2)
    if tensor.ndim != 2 or tensor.shape[1] != 2 or (n is not None and tensor.shape[0] != n):
        raise ValueError(f"sdxl_time_ids: {name} must be {n if n is not None else 'N'} (h, w) / (top, left) pairs; "
                         f"got shape {tuple(tensor.shape)}")
    return tensor


def sdxl_time_ids(original_sizes, crop_top_lefts, target_size, *, convention: str = "true_size") -> torch.Tensor:
    """``[N, 6]`` fp32 SDXL micro-conditioning per image (Podell et al. 2023 §2.2):
    ``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)``.

    ``original_sizes`` and ``crop_top_lefts`` are per image (each image's true size before resizing and its crop
    offset, as the diffusers port records them); ``target_size`` is one ``(h, w)`` for all images or one per image.
    ``convention="square_resolution"`` ignores them and gives ``(target, 0, 0, target)``, the launchers' hard-coded
    ``(res, res, 0, 0, res, res)`` (:data:`SDXL_TIME_IDS`).
    """
    if convention not in SDXL_TIME_IDS:
        raise ValueError(f"sdxl_time_ids: convention must be one of {SDXL_TIME_IDS}; got {convention!r}")
    original = _pairs("original_sizes", original_sizes, None)
    n = original.shape[0]
    target = _pairs("target_size", target_size, n)
    crops = _pairs("crop_top_lefts", crop_top_lefts, n)
    if convention == "square_resolution":
        original, crops = target, torch.zeros_like(crops)
    return torch.cat([original, crops, target], 1)


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
