"""Tiny SD1.5, SD2.x and SDXL pipelines built in code, after diffusers' ``get_dummy_components()`` test fixtures.

Every component is the real class (``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel``[WithProjection],
``DDPMScheduler``) at tiny width, with word-level CLIP-style tokenizers built in code instead of fetched from the hub
(``shared/reference/tiny-models.md``). ``save_tiny_sd``/``save_tiny_sdxl`` write a ``save_pretrained`` folder that
loads with ``DiffusionPipeline.from_pretrained(path)`` or per component with ``subfolder=``.

Deliberate differences from the hub checkpoints: the scheduler is ``DDPMScheduler`` for every variant (what the
preference-training scripts load from ``subfolder="scheduler"``; the hub ships PNDM/Euler/DDIM for sampling) with SD's
``scaled_linear`` betas and ``steps_offset=1``; the VAE has ``len(vae_channels)`` blocks, so its downsampling factor
is ``2 ** (len(vae_channels) - 1)`` (2 for the tiny shapes), not 8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from visalign.testing.clip import clip_text_config, seeded
from visalign.testing.tokenizers import DEFAULT_WORDS, clip_style_tokenizer

SDVariant = Literal["sd15", "sd2"]


@dataclass(frozen=True)
class DiffusionShape:
    """Widths and depths of a tiny Stable Diffusion model (the defaults are the tiny test shape).

    ``image_size`` is in pixels; the UNet works on ``latent_size = image_size / 2 ** (len(vae_channels) - 1)``.
    ``attention_heads`` is the number of heads per cross-attention block (diffusers' ``attention_head_dim`` argument,
    which SD configs use as a head count). For SDXL, the UNet's cross-attention width is the sum of the two text
    encoders' widths and its added-condition input is ``6 * addition_time_embed_dim + pooled_dim``.
    """

    image_size: int = 32
    unet_channels: tuple[int, ...] = (4, 8)
    unet_layers_per_block: int = 1
    transformer_layers_per_block: int = 1
    attention_heads: int = 2
    vae_channels: tuple[int, ...] = (4, 8)
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 2
    text_hidden_size: int = 16
    text_layers: int = 2
    text_heads: int = 2
    pooled_dim: int = 16
    addition_time_embed_dim: int = 8

    def __post_init__(self):
        factor = 2 ** (len(self.vae_channels) - 1)
        if self.image_size % (factor * 2 ** (len(self.unet_channels) - 1)):
            raise ValueError(
                f"DiffusionShape: image_size={self.image_size} must be divisible by the VAE factor {factor} times "
                f"the UNet's downsampling 2**{len(self.unet_channels) - 1}"
            )
        for name in ("unet_channels", "vae_channels"):
            bad = [c for c in getattr(self, name) if c % self.norm_num_groups]
            if bad:
                raise ValueError(
                    f"DiffusionShape.{name}: {bad} not divisible by norm_num_groups={self.norm_num_groups}"
                )

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


#: The tiny SD1.5/SD2.x test shape: 32 px images, 16x16 latents, 4/8 channels, 1 layer per block.
TINY_SD = DiffusionShape()

#: The tiny SDXL test shape (same sizes; SDXL's own parts are sized by ``pooled_dim``, ``addition_time_embed_dim``).
TINY_SDXL = DiffusionShape()

#: A small SDXL-shaped model for benchmarks: SDXL's block layout (3 UNet levels, cross-attention in the lower two; a
#: 4-block VAE, so the latent is image/8 as in SDXL) at 256 px. The knob for the VAE-encode : UNet-forward FLOP ratio
#: per image is ``vae_channels`` (encoder FLOPs grow with the square of its widths; ``vae_layers_per_block`` scales them
#: linearly), against ``unet_channels`` / ``transformer_layers_per_block`` on the UNet side. Tune it with
#: ``dataclasses.replace(SMALL_SDXL, vae_channels=...)``. As shipped, one 256-px image costs about 1.1 GFLOPs to
#: VAE-encode and 2.0 GFLOPs per UNet forward (``torch.utils.flop_counter.FlopCounterMode``, CPU). (Real SDXL: UNet
#: (320, 640, 1280), transformer layers (1, 2, 10); VAE (128, 256, 512, 512), 2 layers per block, 1024 px.)
SMALL_SDXL = DiffusionShape(
    image_size=256,
    unet_channels=(32, 64, 128),
    unet_layers_per_block=2,
    transformer_layers_per_block=2,
    attention_heads=4,
    vae_channels=(8, 16, 32, 32),
    vae_layers_per_block=2,
    norm_num_groups=8,
    text_hidden_size=64,
    text_layers=2,
    text_heads=4,
    pooled_dim=64,
    addition_time_embed_dim=32,
)


def _scheduler(prediction_type: str) -> DDPMScheduler:
    """SD's training noise schedule (``scaled_linear`` 0.00085..0.012 over 1000 steps, ``steps_offset=1``)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type=prediction_type,
        timestep_spacing="leading",
        steps_offset=1,
    )


def _vae(shape: DiffusionShape, scaling_factor: float, seed: int) -> AutoencoderKL:
    with seeded(seed):
        return AutoencoderKL(
            block_out_channels=shape.vae_channels,
            down_block_types=("DownEncoderBlock2D",) * len(shape.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(shape.vae_channels),
            layers_per_block=shape.vae_layers_per_block,
            latent_channels=shape.latent_channels,
            norm_num_groups=shape.norm_num_groups,
            sample_size=shape.image_size,
            scaling_factor=scaling_factor,
        ).eval()


def _block_types(n: int, *, cross_attention_first: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Down/up block types: SD1.5/2.x put cross-attention in all but the lowest level, SDXL in all but the highest."""
    if cross_attention_first:
        down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    else:
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = tuple(name.replace("Down", "Up") for name in reversed(down))
    return down, up


def _unet(
    shape: DiffusionShape,
    *,
    cross_attention_first: bool,
    cross_attention_dim: int,
    use_linear_projection: bool,
    seed: int,
    **added_conditions: Any,
) -> UNet2DConditionModel:
    """A tiny ``UNet2DConditionModel`` of ``shape``; ``added_conditions`` are SDXL's ``addition_*`` arguments."""
    down, up = _block_types(len(shape.unet_channels), cross_attention_first=cross_attention_first)
    with seeded(seed):
        return UNet2DConditionModel(
            sample_size=shape.latent_size,
            in_channels=shape.latent_channels,
            out_channels=shape.latent_channels,
            block_out_channels=shape.unet_channels,
            layers_per_block=shape.unet_layers_per_block,
            down_block_types=down,
            up_block_types=up,
            transformer_layers_per_block=shape.transformer_layers_per_block,
            attention_head_dim=shape.attention_heads,
            cross_attention_dim=cross_attention_dim,
            norm_num_groups=shape.norm_num_groups,
            use_linear_projection=use_linear_projection,
            **added_conditions,
        ).eval()


def _text_encoder(cls, tokenizer, shape: DiffusionShape, hidden_act: str, seed: int):
    config = clip_text_config(
        tokenizer,
        hidden_size=shape.text_hidden_size,
        num_layers=shape.text_layers,
        num_heads=shape.text_heads,
        projection_dim=shape.pooled_dim,
        hidden_act=hidden_act,
    )
    with seeded(seed):
        return cls(config).eval()


def tiny_sd_components(
    *, variant: SDVariant = "sd15", shape: DiffusionShape = TINY_SD, seed: int = 0
) -> dict[str, Any]:
    """Components of a tiny ``StableDiffusionPipeline``, keyed by its constructor arguments.

    ``variant="sd15"``: epsilon prediction, OpenAI-CLIP text tower (``quick_gelu``). ``variant="sd2"``: SD2.x-768-v
    style, v-prediction, OpenCLIP text tower (``gelu``) and linear attention projections.
    """
    if variant not in ("sd15", "sd2"):
        raise ValueError(f"variant must be 'sd15' or 'sd2', got {variant!r}")
    sd2 = variant == "sd2"
    tokenizer = clip_style_tokenizer()
    unet = _unet(
        shape,
        cross_attention_first=True,
        cross_attention_dim=shape.text_hidden_size,
        use_linear_projection=sd2,
        seed=seed,
    )
    return {
        "unet": unet,
        "vae": _vae(shape, scaling_factor=0.18215, seed=seed + 1),
        "text_encoder": _text_encoder(CLIPTextModel, tokenizer, shape, "gelu" if sd2 else "quick_gelu", seed + 2),
        "tokenizer": tokenizer,
        "scheduler": _scheduler("v_prediction" if sd2 else "epsilon"),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_sd_pipeline(**kwargs) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` of ``tiny_sd_components(**kwargs)``, with no safety checker."""
    return StableDiffusionPipeline(**tiny_sd_components(**kwargs), requires_safety_checker=False)


def save_tiny_sd(path: str | Path, **kwargs) -> Path:
    """``save_pretrained`` a ``tiny_sd_pipeline(**kwargs)`` into ``path`` (loads with ``DiffusionPipeline``)."""
    path = Path(path)
    tiny_sd_pipeline(**kwargs).save_pretrained(path)
    return path


def tiny_sdxl_components(
    *, shape: DiffusionShape = TINY_SDXL, seed: int = 0, words: Sequence[str] = DEFAULT_WORDS
) -> dict[str, Any]:
    """Components of a tiny ``StableDiffusionXLPipeline``, keyed by its constructor arguments; both tokenizers are
    ``clip_style_tokenizer(words)``.

    As in SDXL: ``text_encoder`` is a ``CLIPTextModel`` (OpenAI CLIP, ``quick_gelu``), ``text_encoder_2`` a
    ``CLIPTextModelWithProjection`` (OpenCLIP, ``gelu``) whose projection gives the pooled embedding; the UNet
    attends to both encoders' penultimate states concatenated and takes ``addition_embed_type="text_time"`` with
    ``projection_class_embeddings_input_dim = 6 * addition_time_embed_dim + pooled_dim`` (SDXL: 6 * 256 + 1280).
    """
    tokenizer, tokenizer_2 = clip_style_tokenizer(words), clip_style_tokenizer(words)
    unet = _unet(
        shape,
        cross_attention_first=False,
        cross_attention_dim=2 * shape.text_hidden_size,
        use_linear_projection=True,
        seed=seed,
        addition_embed_type="text_time",
        addition_time_embed_dim=shape.addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * shape.addition_time_embed_dim + shape.pooled_dim,
    )
    return {
        "unet": unet,
        "vae": _vae(shape, scaling_factor=0.13025, seed=seed + 1),
        "text_encoder": _text_encoder(CLIPTextModel, tokenizer, shape, "quick_gelu", seed + 2),
        "text_encoder_2": _text_encoder(CLIPTextModelWithProjection, tokenizer_2, shape, "gelu", seed + 3),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": _scheduler("epsilon"),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_sdxl_pipeline(**kwargs) -> StableDiffusionXLPipeline:
    """A ``StableDiffusionXLPipeline`` of ``tiny_sdxl_components(**kwargs)``, without the invisible watermark."""
    return StableDiffusionXLPipeline(**tiny_sdxl_components(**kwargs), add_watermarker=False)


def save_tiny_sdxl(path: str | Path, **kwargs) -> Path:
    """``save_pretrained`` a ``tiny_sdxl_pipeline(**kwargs)`` into ``path`` (loads with ``DiffusionPipeline``)."""
    path = Path(path)
    tiny_sdxl_pipeline(**kwargs).save_pretrained(path)
    return path
