"""The DDIM sampler with transition log-probabilities (``visalign.sampling.ddim``) on tiny SD and SDXL checkpoints:
it samples what the family's diffusers pipeline samples, and its log-probabilities are those of the transitions."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from visalign.models.diffusion import load_diffusion_components
from visalign.sampling.ddim import ddim_scheduler, ddim_step, sample_trajectories
from visalign.testing.diffusion import TINY_SD, save_tiny_sd, save_tiny_sdxl

PROMPTS = ["a red square", "a blue circle on the left"]
STEPS = 4
SIZE = TINY_SD.image_size


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def checkpoint(request, tmp_path_factory):
    save = save_tiny_sd if request.param == "sd" else save_tiny_sdxl
    pipeline_cls = StableDiffusionPipeline if request.param == "sd" else StableDiffusionXLPipeline
    return save(tmp_path_factory.mktemp(request.param) / "model"), pipeline_cls


def _sample(components, prompts=PROMPTS, generator=None, **kwargs):
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    return sample_trajectories(components, components.unet, prompts, resolution=SIZE, num_inference_steps=STEPS,
                               guidance_scale=5.0, eta=1.0, generator=generator, **kwargs)


def test_the_samples_are_the_pipelines_ddim_samples_with_the_same_generator(checkpoint):
    path, pipeline_cls = checkpoint
    trajectories = _sample(load_diffusion_components(path))
    pipeline = pipeline_cls.from_pretrained(path)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    expected = pipeline(PROMPTS, num_inference_steps=STEPS, guidance_scale=5.0, eta=1.0, height=SIZE, width=SIZE,
                        generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert trajectories.latents.shape == (2, STEPS + 1, *expected.shape[1:])
    torch.testing.assert_close(trajectories.latents[:, -1], expected, atol=1e-4, rtol=1e-4)


def test_each_stored_log_prob_is_its_transition_scored_again(checkpoint):
    components = load_diffusion_components(checkpoint[0])
    # SD1.5's and SDXL's own scheduler configs: the step after the last keeps abar_0 < 1, so every step has a density
    scheduler = DDIMScheduler.from_config(components.scheduler.config, set_alpha_to_one=False, steps_offset=1)
    components = dataclasses.replace(components, scheduler=scheduler)
    trajectories = _sample(components)
    assert torch.isfinite(trajectories.log_probs).all()
    scheduler = ddim_scheduler(components, STEPS, "cpu")
    cond = components.adapter.sampling_conditioning(components, PROMPTS, resolution=SIZE)
    for i, t in enumerate(trajectories.timesteps):
        step = ddim_step(components, components.unet, scheduler, trajectories.latents[:, i], t, cond,
                         guidance_scale=5.0, eta=1.0, prev_latents=trajectories.latents[:, i + 1])
        torch.testing.assert_close(step.log_prob, trajectories.log_probs[:, i], atol=1e-5, rtol=1e-5)
    # another guidance scale is another policy: the same transitions score differently under it
    other = ddim_step(components, components.unet, scheduler, trajectories.latents[:, 1], trajectories.timesteps[1],
                      cond, guidance_scale=1.0, eta=1.0, prev_latents=trajectories.latents[:, 2])
    assert not torch.allclose(other.log_prob, trajectories.log_probs[:, 1])


def test_an_images_trajectory_does_not_depend_on_its_batch(checkpoint):
    components = load_diffusion_components(checkpoint[0])
    both = _sample(components, generator=[torch.Generator().manual_seed(s) for s in (7, 8)])
    alone = _sample(components, PROMPTS[1:], generator=[torch.Generator().manual_seed(8)])
    torch.testing.assert_close(both.latents[1:], alone.latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.log_probs[1:], alone.log_probs, atol=1e-5, rtol=1e-5, equal_nan=True)
