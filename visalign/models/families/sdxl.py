"""SDXL base (Podell et al. 2023): two CLIP text encoders, a pooled text embedding and six micro-conditioning time
ids added to the UNet's timestep embedding (``StableDiffusionXLPipeline``; reference ``diffusion-methods.md`` §14)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from visalign.models.families.conditioning import PromptEmbeddings, UNetCond
from visalign.models.families.unet2d import UNet2DFamily

SDXL_NUM_TIME_IDS = 6  # (orig_h, orig_w, crop_top, crop_left, target_h, target_w); the refiner's 5 are unsupported
#: SDXL time-id conventions (:func:`sdxl_time_ids`): ``true_size``, each image's true original size and crop (the
#: diffusers port, MaPO); ``square_resolution``, ``(res, res, 0, 0, res, res)`` for every image (Salesforce
#: Diffusion-DPO, InPO, SmPO, DCPO; reference ``diffusion-methods.md`` §14).
SDXL_TIME_IDS = ("true_size", "square_resolution")


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


class SDXLFamily(UNet2DFamily):
    """SDXL base (``StableDiffusionXLPipeline``); the refiner (5 aesthetic-score time ids) is not supported."""

    name = "sdxl"
    pipeline_name = "StableDiffusionXLPipeline"
    num_text_encoders = 2
    text_encoder_classes = ("CLIPTextModel", "CLIPTextModelWithProjection")
    subfolder_suffixes = ("", "_2")
    default_guidance_scale = 5.0
    card_tags = ("stable-diffusion-xl",)
    cache_keys = ("prompt_embeds", "pooled_prompt_embeds", "time_ids")

    def matches(self, denoiser_config: Mapping[str, Any]) -> bool:
        """A UNet that takes the pooled-text + time-ids embedding (``addition_embed_type == "text_time"``)."""
        return denoiser_config.get("addition_embed_type") == "text_time"

    def check_dimensions(self, model: str, unet, text_encoders: Sequence) -> None:
        """Also: the added embedding takes 6 time ids and encoder 2's pooled projection (SDXL base)."""
        super().check_dimensions(model, unet, text_encoders)
        expected = SDXL_NUM_TIME_IDS * unet.config.addition_time_embed_dim + text_encoders[1].config.projection_dim
        if unet.config.projection_class_embeddings_input_dim != expected:
            raise ValueError(
                f"{model}: unet.config.projection_class_embeddings_input_dim="
                f"{unet.config.projection_class_embeddings_input_dim}, expected {expected} for SDXL base (6 time ids "
                f"+ pooled text); the SDXL refiner (aesthetic-score time ids) is not supported"
            )

    def embed_token_ids(self, text_encoders: Sequence, input_ids: Sequence[torch.Tensor]) -> PromptEmbeddings:
        """The penultimate hidden states (``hidden_states[-2]``) of both encoders, concatenated on the feature axis,
        and the pooled embedding from encoder 2's projection (``text_embeds``)."""
        from transformers import CLIPTextModelWithProjection

        if not isinstance(text_encoders[1], CLIPTextModelWithProjection):
            raise TypeError("encode_prompts: SDXL's second text encoder must be a CLIPTextModelWithProjection "
                            f"(the pooled embedding is its projection); got {type(text_encoders[1]).__name__}")
        outputs = [encoder(ids.to(encoder.device), output_hidden_states=True, return_dict=True)
                   for encoder, ids in zip(text_encoders, input_ids)]
        device = outputs[0].hidden_states[-2].device
        hidden = torch.cat([out.hidden_states[-2].to(device) for out in outputs], dim=-1)
        return PromptEmbeddings(hidden, outputs[1].text_embeds.to(device))

    def cache_item(self, embeds: PromptEmbeddings, *, original_size, crop_top_left, resolution: int,
                   time_ids: str) -> dict[str, torch.Tensor]:
        ids = sdxl_time_ids([original_size], [crop_top_left], (resolution, resolution), convention=time_ids)[0]
        return {"prompt_embeds": embeds.hidden_states, "pooled_prompt_embeds": embeds.pooled, "time_ids": ids}

    def cached_embeddings(self, batch: Mapping[str, Any]) -> PromptEmbeddings | None:
        if "prompt_embeds" not in batch:
            return None
        return PromptEmbeddings(batch["prompt_embeds"], batch["pooled_prompt_embeds"])

    def training_conditioning(self, embeds: PromptEmbeddings, batch: Mapping[str, Any], *, resolution: int | None,
                              time_ids: str, device: torch.device) -> UNetCond:
        """Each image's own time ids: cached, else from its true size and crop (``time_ids`` convention)."""
        if "time_ids" in batch:
            ids = batch["time_ids"]
        else:
            ids = sdxl_time_ids(batch["original_sizes"], batch["crop_top_lefts"], (resolution, resolution),
                                convention=time_ids)
        return UNetCond(embeds.hidden_states.to(device), embeds.pooled.to(device), ids.to(device))

    def empty_prompt_embeddings(self, components, cond: PromptEmbeddings) -> PromptEmbeddings:
        """Zeros (``force_zeros_for_empty_prompt``, SDXL base's pipeline setting)."""
        return PromptEmbeddings(torch.zeros_like(cond.hidden_states), torch.zeros_like(cond.pooled))

    def sampling_time_ids(self, n: int, resolution: int) -> torch.Tensor:
        """``(res, res, 0, 0, res, res)`` per image: original size = target size, no crop (the pipeline's default)."""
        return sdxl_time_ids([(resolution, resolution)] * n, [(0, 0)] * n, (resolution, resolution))

    def build_pipeline(self, components, unet, scheduler):
        return self.pipeline_class()(
            vae=components.vae, text_encoder=components.text_encoders[0], text_encoder_2=components.text_encoders[1],
            tokenizer=components.tokenizers[0], tokenizer_2=components.tokenizers[1], unet=unet, scheduler=scheduler,
            add_watermarker=False,
        )
