"""What the ``UNet2DConditionModel`` families (SD1.5/SD2.x, SDXL) share: CLIP text encoders in ``text_encoder{,_2}``
subfolders, the UNet call with ``encoder_hidden_states`` (and ``added_cond_kwargs``), attention LoRA targets and
``save_lora_weights(unet_lora_layers=...)`` (the diffusers training scripts' choices)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from visalign.models.families.base import DiffusionFamily, load_strict
from visalign.models.families.conditioning import PromptEmbeddings, UNetCond, pair_cond


def unet_input_spec(unet) -> tuple[torch.dtype, torch.device]:
    """dtype and device the (possibly DDP-wrapped) UNet expects its inputs in: those of its first floating-point
    parameter (``conv_in.weight``), the parameter diffusers' ``ModelMixin.dtype``/``.device`` report too. Those
    properties also walk every submodule looking for layerwise-casting and group-offloading hooks (~15 ms per call
    on an SDXL-shaped UNet on a CPU core, twice per training step); training uses neither."""
    module = getattr(unet, "module", unet)
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    if param is None:
        raise ValueError(f"unet_input_spec: {type(module).__name__} has no floating-point parameters")
    return param.dtype, param.device


def unet_predict(unet, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: UNetCond) -> torch.Tensor:
    """The UNet's raw output (eps or v) for each sample, upcast to fp32."""
    dtype, device = unet_input_spec(unet)
    out = unet(
        noisy_latents.to(device=device, dtype=dtype),
        timesteps.to(device),
        **cond.unet_kwargs(dtype, device),
        return_dict=False,
    )[0]
    return out.float()


class UNet2DFamily(DiffusionFamily):
    """A family whose denoiser is a ``UNet2DConditionModel`` conditioned on CLIP text encoders."""

    #: ``transformers`` class names of the text encoders, in order; encoder ``i`` lives in ``text_encoder{suffix}``.
    text_encoder_classes: ClassVar[tuple[str, ...]]
    subfolder_suffixes: ClassVar[tuple[str, ...]]
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    denoiser_subfolder = "unet"
    training_scheduler = "DDPMScheduler"

    def load_denoiser(self, model: str | os.PathLike, *, dtype: torch.dtype, revision: str | None = None,
                      variant: str | None = None):
        from diffusers import UNet2DConditionModel

        return load_strict(UNet2DConditionModel, model, subfolder=self.denoiser_subfolder, dtype=dtype,
                           revision=revision, variant=variant)

    def load_text_encoders(self, model: str | os.PathLike, *, dtype: torch.dtype, revision: str | None = None,
                           variant: str | None = None) -> tuple[tuple, tuple]:
        import transformers

        text_encoders = tuple(
            load_strict(getattr(transformers, cls), model, subfolder=f"text_encoder{sfx}", dtype=dtype,
                        revision=revision, variant=variant)
            for cls, sfx in zip(self.text_encoder_classes, self.subfolder_suffixes)
        )
        tokenizers = tuple(
            transformers.AutoTokenizer.from_pretrained(model, subfolder=f"tokenizer{sfx}", revision=revision)
            for sfx in self.subfolder_suffixes
        )
        return text_encoders, tokenizers

    def check_dimensions(self, model: str, unet, text_encoders: Sequence) -> None:
        """The UNet's ``cross_attention_dim`` must be the encoders' summed hidden sizes."""
        text_dim = sum(te.config.hidden_size for te in text_encoders)
        if unet.config.cross_attention_dim != text_dim:
            raise ValueError(
                f"{model}: unet.config.cross_attention_dim={unet.config.cross_attention_dim} but the text encoders "
                f"give {text_dim}-d token embeddings"
            )

    def sampling_conditioning(self, components, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None,
                              *, resolution: int) -> UNetCond:
        """As the family's pipeline encodes for CFG: prompts and negative prompts in separate encoder calls (a
        batch's size changes the encoders' rounding), :meth:`empty_prompt_embeddings` without negative prompts, and
        :meth:`sampling_time_ids` for every row."""
        cond = self.encode_prompts(components.text_encoders, components.tokenizers, prompts)
        if negative_prompts is None:
            uncond = self.empty_prompt_embeddings(components, cond)
        else:
            uncond = self.encode_prompts(components.text_encoders, components.tokenizers, negative_prompts)
        ids = self.sampling_time_ids(len(prompts), resolution)
        return pair_cond(UNetCond(uncond.hidden_states, uncond.pooled, ids),
                         UNetCond(cond.hidden_states, cond.pooled, ids))

    def empty_prompt_embeddings(self, components, cond: PromptEmbeddings) -> PromptEmbeddings:
        """The unconditional embeddings of CFG without negative prompts: the encoding of ``""`` per prompt."""
        return self.encode_prompts(components.text_encoders, components.tokenizers, [""] * len(cond.hidden_states))

    def sampling_time_ids(self, n: int, resolution: int) -> torch.Tensor | None:
        """Per-image micro-conditioning of ``n`` sampled images, ``None`` for a family without it."""
        return None

    def validation_scheduler(self, components):
        """DPM-Solver++ (``DPMSolverMultistepScheduler``), as the diffusers DPO scripts sample validation images."""
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(components.scheduler.config)

    def denoise(self, unet, latents: torch.Tensor, timesteps: torch.Tensor, cond: UNetCond) -> torch.Tensor:
        return unet_predict(unet, latents, timesteps, cond)

    def save_lora(self, output_dir: str | os.PathLike, layers: Mapping[str, torch.Tensor], *,
                  metadata: Mapping[str, Any], weight_name: str, is_main_process: bool = True) -> None:
        self.pipeline_class().save_lora_weights(
            str(output_dir), unet_lora_layers=layers, is_main_process=is_main_process, weight_name=weight_name,
            unet_lora_adapter_metadata=metadata,
        )
