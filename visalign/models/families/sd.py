"""Stable Diffusion 1.5 / 2.x: one ``CLIPTextModel`` whose last hidden state conditions the UNet (``diffusers``
``StableDiffusionPipeline.encode_prompt`` with ``clip_skip=None``); ε or v prediction as the scheduler says."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from visalign.models.families.conditioning import PromptEmbeddings, UNetCond
from visalign.models.families.unet2d import UNet2DFamily


class SDFamily(UNet2DFamily):
    """SD1.5 / SD2.x (``StableDiffusionPipeline``): a UNet without added conditioning."""

    name = "sd"
    pipeline_name = "StableDiffusionPipeline"
    num_text_encoders = 1
    text_encoder_classes = ("CLIPTextModel",)
    subfolder_suffixes = ("",)
    default_guidance_scale = 7.5
    card_tags = ("stable-diffusion",)
    cache_keys = ("prompt_embeds",)

    def matches(self, denoiser_config: Mapping[str, Any]) -> bool:
        """Any UNet without SDXL's pooled-text + time-ids embedding (``addition_embed_type`` unset)."""
        return denoiser_config.get("addition_embed_type") is None

    def embed_token_ids(self, text_encoders: Sequence, input_ids: Sequence[torch.Tensor]) -> PromptEmbeddings:
        """The last hidden state of the one encoder."""
        (encoder,), (ids,) = text_encoders, input_ids
        return PromptEmbeddings(encoder(ids.to(encoder.device), return_dict=True).last_hidden_state)

    def cache_item(self, embeds: PromptEmbeddings, *, original_size, crop_top_left, resolution: int,
                   time_ids: str) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": embeds.hidden_states}

    def cached_embeddings(self, batch: Mapping[str, Any]) -> PromptEmbeddings | None:
        return PromptEmbeddings(batch["prompt_embeds"]) if "prompt_embeds" in batch else None

    def training_conditioning(self, embeds: PromptEmbeddings, batch: Mapping[str, Any], *, resolution: int | None,
                              time_ids: str, device: torch.device) -> UNetCond:
        return UNetCond(embeds.hidden_states.to(device))

    def build_pipeline(self, components, unet, scheduler):
        return self.pipeline_class()(
            vae=components.vae, text_encoder=components.text_encoders[0], tokenizer=components.tokenizers[0],
            unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
