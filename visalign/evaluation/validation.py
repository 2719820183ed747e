"""Validation images during diffusion training: fixed prompts and seeds, one PNG grid per call, logged to trackers.

As the diffusers DPO scripts do (reference ``diffusion-methods.md`` §4.1, §5.2), the current UNet is wrapped in a
pipeline with the frozen components and sampled with ``DPMSolverMultistepScheduler`` (built from the training
scheduler's config) at a fixed guidance scale: by default the family's (``DiffusionFamily.default_guidance_scale``,
7.5 for SD1.5/SD2.x, 5.0 for SDXL, §16). Image ``i`` uses its own generator seeded with ``seed + i``, so the same
prompt gets the same starting noise at every step and in every run, and before/after grids are comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visalign.models.diffusion import DiffusionComponents, decode_latents
from visalign.models.families import DiffusionFamily, get_family

logger = logging.getLogger(__name__)

VALIDATION_DIR = "validation"


@dataclass(frozen=True)
class ValidationSettings:
    """What to render: ``prompts`` (one image each), ``seed`` (image i uses ``seed + i``), sampler steps, CFG scale
    (``None``: the family's default, 7.5 SD, 5.0 SDXL) and the square ``resolution`` in pixels."""

    prompts: tuple[str, ...]
    seed: int = 0
    num_inference_steps: int = 25
    guidance_scale: float | None = None
    resolution: int = 512

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("ValidationSettings.prompts must name at least one prompt")
        if self.num_inference_steps < 1:
            raise ValueError(f"ValidationSettings.num_inference_steps must be >= 1; got {self.num_inference_steps}")


def build_pipeline(components: DiffusionComponents, unet: torch.nn.Module):
    """The family's pipeline (``StableDiffusion[XL]Pipeline``, ``DiffusionFamily.build_pipeline``) over ``unet`` and
    the frozen components, sampling with the family's validation sampler (SD/SDXL: DPM-Solver++)."""
    adapter = components.adapter
    return adapter.build_pipeline(components, unet, adapter.validation_scheduler(components))


@torch.no_grad()
def render_validation_images(pipeline, settings: ValidationSettings, family: str | DiffusionFamily
                             ) -> list[Image.Image]:
    """One image per prompt, image i from a generator seeded ``settings.seed + i`` on the UNet's device, at the
    family's default CFG scale unless ``settings`` names one (``components.family`` or its adapter). The sampler
    returns latents, decoded in the VAE's dtype (:func:`~visalign.models.diffusion.decode_latents`): the latents
    follow the text encoders' dtype, which a kept-fp32 VAE does not share."""
    device = pipeline.unet.device
    guidance = (settings.guidance_scale if settings.guidance_scale is not None else
                get_family(family).default_guidance_scale)
    images = []
    for i, prompt in enumerate(settings.prompts):
        generator = torch.Generator(device=device).manual_seed(settings.seed + i)
        latents = pipeline(
            prompt, num_inference_steps=settings.num_inference_steps, guidance_scale=guidance, generator=generator,
            height=settings.resolution, width=settings.resolution, output_type="latent",
        ).images
        images.extend(pipeline.image_processor.postprocess(decode_latents(pipeline.vae, latents), output_type="pil"))
    return images


def image_grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Images of equal size tiled left to right, top to bottom (``columns`` default: ceil(sqrt(n)))."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    width, height = images[0].size
    if any(image.size != (width, height) for image in images):
        raise ValueError(f"image_grid: images differ in size: {sorted({image.size for image in images})}")
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % columns) * width, (i // columns) * height))
    return grid


def log_validation_images(accelerator, images: Sequence[Image.Image], prompts: Sequence[str], step: int,
                          output_dir: str | Path, *, tag: str = "validation") -> Path:
    """Save ``output_dir/validation/{tag}-step-{step:06d}.png`` (the grid) and log the images to every tracker
    (tensorboard: an image batch; wandb: captioned images). Call on the main process."""
    path = Path(output_dir) / VALIDATION_DIR / f"{tag}-step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            stacked = np.stack([np.asarray(image.convert("RGB")) for image in images])
            tracker.writer.add_images(tag, stacked, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Image(image, caption=p) for image, p in zip(images, prompts)]}, step=step)
    return path


def run_validation(accelerator, components: DiffusionComponents, unet: torch.nn.Module,
                   settings: ValidationSettings, step: int, output_dir: str | Path, *, tag: str = "validation"):
    """Render ``settings`` with ``unet`` (unwrapped, adapter active) on the main process, save the grid and log it;
    returns the grid's path there and ``None`` on other processes. The UNet's train/eval mode is restored."""
    if not accelerator.is_main_process:
        return None
    was_training = unet.training
    unet.eval()
    try:
        pipeline = build_pipeline(components, unet)
        pipeline.set_progress_bar_config(disable=True)
        with accelerator.autocast():  # frozen parts may be fp16/bf16 while the trained UNet is fp32
            images = render_validation_images(pipeline, settings, components.family)
    finally:
        unet.train(was_training)
    path = log_validation_images(accelerator, images, settings.prompts, step, output_dir, tag=tag)
    logger.info("validation images at step %d: %s", step, path)
    return path
