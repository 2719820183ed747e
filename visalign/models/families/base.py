"""The adapter interface of a diffusion model family (DESIGN.md "The axes as objects").

A family (``sd``, ``sdxl``; ``sd3``, ``flux`` next) owns everything that differs between text-to-image checkpoints:
which text encoders and tokenizers it loads and how its prompts are encoded, the conditioning its denoiser takes in
training and in sampling (with classifier-free guidance), the denoiser call, the LoRA targets and save format, the
diffusers pipeline class, its default CFG scale and native resolution, the model-card tags and what the latent/text
cache stores per item. Code outside ``visalign.models.families`` asks the adapter (``components.adapter``) and never
compares family names. A new family is one module here plus its line in the registry (``families/__init__.py``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from visalign.models.families.conditioning import PromptEmbeddings, UNetCond

if TYPE_CHECKING:
    from visalign.models.diffusion import DiffusionComponents


def load_strict(cls, path, **kwargs):
    """``cls.from_pretrained(path, **kwargs)``, raising if any weight key is missing, unexpected or mismatched."""
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    keys = ("missing_keys", "unexpected_keys", "mismatched_keys")
    problems = {key: sorted(map(str, info.get(key) or ())) for key in keys if info.get(key)}
    if problems:
        where = os.path.join(str(path), kwargs.get("subfolder") or "")
        raise ValueError(f"loading {cls.__name__} from {where}: weights do not match the architecture: {problems}")
    return model


class DiffusionFamily(ABC):
    """One diffusion model family. Adapters are stateless; the registry holds one instance of each."""

    #: The family's name (``components.family``, the registry key).
    name: ClassVar[str]
    #: The diffusers pipeline class (by name, so importing the adapter does not import diffusers).
    pipeline_name: ClassVar[str]
    #: How many text encoders (and tokenizers) the family loads.
    num_text_encoders: ClassVar[int]
    #: CFG scale of validation images when the config names none (reference ``diffusion-methods.md`` §16).
    default_guidance_scale: ClassVar[float]
    #: Module names a LoRA adapts by default (``lora_target_modules`` overrides them).
    lora_targets: ClassVar[tuple[str, ...]]
    #: The model-card tags that name the family (``write_model_card``).
    card_tags: ClassVar[tuple[str, ...]]
    #: The per-side keys of a cached item (``<key>_chosen``/``<key>_rejected``, collated into ``<key>``).
    cache_keys: ClassVar[tuple[str, ...]]
    #: The diffusers scheduler class of training noise, built from the checkpoint's ``scheduler`` config.
    training_scheduler: ClassVar[str]
    #: The checkpoint subfolder of the denoiser (``unet``; ``transformer`` for SD3/FLUX), whose config detects it.
    denoiser_subfolder: ClassVar[str]

    # ------------------------------------------------------------------------------------------------ loading

    @abstractmethod
    def matches(self, denoiser_config: Mapping[str, Any]) -> bool:
        """True when a checkpoint whose denoiser has this config belongs to the family."""

    @abstractmethod
    def load_denoiser(self, model: str | os.PathLike, *, dtype: torch.dtype, revision: str | None = None,
                      variant: str | None = None):
        """The denoiser (UNet or transformer) of the checkpoint folder ``model``, loaded strictly."""

    @abstractmethod
    def load_text_encoders(self, model: str | os.PathLike, *, dtype: torch.dtype, revision: str | None = None,
                           variant: str | None = None) -> tuple[tuple, tuple]:
        """``(text_encoders, tokenizers)`` of the checkpoint folder ``model``, loaded strictly (:func:`load_strict`)."""

    @abstractmethod
    def check_dimensions(self, model: str, unet, text_encoders: Sequence) -> None:
        """Fail before any compute, naming the config keys, if the denoiser cannot consume these encoders' outputs."""

    def native_resolution(self, unet, vae) -> int:
        """The square resolution in pixels the denoiser was built for: its latent ``sample_size`` times the VAE's
        downsampling factor."""
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        return int(unet.config.sample_size) * vae_factor

    # ------------------------------------------------------------------------------------------------ prompts

    @abstractmethod
    def embed_token_ids(self, text_encoders: Sequence, input_ids: Sequence[torch.Tensor]) -> PromptEmbeddings:
        """Prompt embeddings from token ids (one ``[N, L]`` tensor per encoder), with autograd."""

    @torch.no_grad()
    def encode_prompts(self, text_encoders: Sequence, tokenizers: Sequence, prompts: Sequence[str]
                       ) -> PromptEmbeddings:
        """Encode prompts as the family's pipeline conditions its denoiser (each tokenizer's ids, then
        :meth:`embed_token_ids`), in the encoders' dtype and on their device."""
        from visalign.models.families.tokens import tokenize_prompts

        return self.embed_token_ids(text_encoders, [tokenize_prompts(tokenizer, prompts) for tokenizer in tokenizers])

    # ------------------------------------------------------------------------------------------------ training

    @abstractmethod
    def cache_item(self, embeds: PromptEmbeddings, *, original_size, crop_top_left, resolution: int,
                   time_ids: str) -> dict[str, torch.Tensor]:
        """What the cache stores for one image (keys :attr:`cache_keys`): its caption's embeddings (unbatched) and
        any per-image conditioning (SDXL: its time ids under the ``time_ids`` convention)."""

    @abstractmethod
    def cached_embeddings(self, batch: Mapping[str, Any]) -> PromptEmbeddings | None:
        """The prompt embeddings of a collated cached batch, or ``None`` for a batch that carries captions only."""

    @abstractmethod
    def training_conditioning(self, embeds: PromptEmbeddings, batch: Mapping[str, Any], *, resolution: int | None,
                              time_ids: str, device: torch.device) -> UNetCond:
        """The denoiser conditioning of a collated batch's images (one row per image, on ``device``), given their
        captions' ``embeds``; per-image conditioning comes from the batch (SDXL: cached ``time_ids``, else each
        image's ``original_sizes``/``crop_top_lefts`` with target ``resolution``)."""

    # ------------------------------------------------------------------------------------------------ sampling

    @abstractmethod
    def sampling_conditioning(self, components: DiffusionComponents, prompts: Sequence[str],
                              negative_prompts: Sequence[str] | None = None, *, resolution: int) -> UNetCond:
        """``[uncond; cond]`` conditioning (2N rows) for sampling N images at ``resolution`` pixels with
        classifier-free guidance, as the family's diffusers pipeline builds it: ``uncond`` from ``negative_prompts``
        (default: the pipeline's own unconditional embedding)."""

    @abstractmethod
    def denoise(self, unet, latents: torch.Tensor, timesteps: torch.Tensor, cond: UNetCond) -> torch.Tensor:
        """The denoiser's raw output (ε, v or velocity, as the scheduler says) per sample, upcast to fp32; inputs
        are cast to the (possibly DDP-wrapped) denoiser's dtype and device."""

    # ------------------------------------------------------------------------------------------------ outputs

    def pipeline_class(self):
        """The diffusers pipeline class of the family (imported here: diffusers takes seconds to import)."""
        import diffusers

        return getattr(diffusers, self.pipeline_name)

    @abstractmethod
    def validation_scheduler(self, components: DiffusionComponents):
        """The sampler of validation images, built from the training scheduler's config."""

    @abstractmethod
    def build_pipeline(self, components: DiffusionComponents, unet, scheduler):
        """A :meth:`pipeline_class` over ``unet``, ``scheduler`` and the frozen components, safety checker and
        watermarker off (validation images)."""

    @abstractmethod
    def save_lora(self, output_dir: str | os.PathLike, layers: Mapping[str, torch.Tensor], *,
                  metadata: Mapping[str, Any], weight_name: str, is_main_process: bool = True) -> None:
        """Write the denoiser's LoRA ``layers`` (diffusers key format) in the pipeline's own LoRA format, loadable by
        ``pipe.load_lora_weights(output_dir)``; ``metadata`` is the adapter config (rank, alpha, targets)."""
