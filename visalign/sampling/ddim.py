"""A DDIM sampler with classifier-free guidance that returns every transition's log-probability (SPO, GRPO-style RL).

It is the family's diffusers pipeline loop, written so that online methods can keep what they train on: the
conditioning comes from the family adapter (``components.adapter.sampling_conditioning``: ``[uncond; cond]``, SDXL's
time ids), each step runs the denoiser once on ``[x_t; x_t]``, guides ``eps = eps_u + g·(eps_c − eps_u)`` (Ho &
Salimans 2022, Eq. 6) and takes a DDIM step with ``eta > 0`` (``visalign.likelihood.transition.ddim_transition``).
With the same generator the final latents are those of the pipeline called with ``eta``, ``guidance_scale`` and
``output_type="latent"`` (tested), so the log-probability bookkeeping does not change what is sampled.

Noise comes from CPU generators, one per image when a list is given (diffusers' ``randn_tensor`` convention), so an
image's trajectory does not depend on the batch it is drawn in or on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from visalign.likelihood.transition import DDIMTransition, ddim_transition

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class Trajectories:
    """N sampled trajectories of S steps, fp32 on the sampling device.

    Attributes:
        latents: ``[N, S + 1, C, h, w]``: ``x_T`` (the initial noise) then each ``x_{t-1}``; ``latents[:, -1]`` is
            the sample.
        log_probs: ``[N, S]`` log-probability of each transition under the sampling policy (mean over C·h·w).
        timesteps: ``[S]`` the timestep ``t`` each transition starts from.
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    timesteps: torch.Tensor


def ddim_scheduler(components, num_inference_steps: int, device: torch.device | str) -> DDIMScheduler:
    """A ``DDIMScheduler`` from the checkpoint's scheduler config, set to ``num_inference_steps`` (as the SPO and
    DDPO samplers swap it in for the checkpoint's default sampler)."""
    scheduler = DDIMScheduler.from_config(components.scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler


def randn(shape: Sequence[int], generator: Generators, device: torch.device | str) -> torch.Tensor:
    """Standard normal fp32 noise drawn on the CPU (one generator per row when a list is given), moved to ``device``."""
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"randn: {len(generator)} generators for {shape[0]} images")
        rows = [torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generator]
        return torch.cat(rows).to(device)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)


def guided_output(components, unet, latents: torch.Tensor, timesteps: torch.Tensor, cond, guidance_scale: float
                  ) -> torch.Tensor:
    """The classifier-free-guided denoiser output for N latents: one forward on ``[x; x]`` with ``cond``'s
    ``[uncond; cond]`` rows (2N), then ``out_u + guidance_scale·(out_c − out_u)`` in fp32."""
    timesteps = torch.as_tensor(timesteps, device=latents.device).expand(latents.shape[0])
    doubled = torch.cat([latents, latents])
    out_uncond, out_cond = components.adapter.denoise(unet, doubled, torch.cat([timesteps, timesteps]), cond).chunk(2)
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def ddim_step(components, unet, scheduler: DDIMScheduler, latents: torch.Tensor, timestep: torch.Tensor, cond, *,
              guidance_scale: float, eta: float, generator: Generators = None,
              prev_latents: torch.Tensor | None = None) -> DDIMTransition:
    """One guided DDIM transition from ``latents`` at ``timestep``: drawn (noise from ``generator``), or, with
    ``prev_latents``, the stored ``x_{t-1}`` scored under the current denoiser (training)."""
    output = guided_output(components, unet, latents, timestep, cond, guidance_scale)
    noise = None if prev_latents is not None else randn(latents.shape, generator, latents.device)
    return ddim_transition(scheduler, output, timestep, latents, eta=eta, prev_sample=prev_latents, noise=noise)


@torch.no_grad()
def sample_trajectories(components, unet, prompts: Sequence[str], *, resolution: int, num_inference_steps: int = 20,
                        guidance_scale: float = 5.0, eta: float = 1.0, negative_prompts: Sequence[str] | None = None,
                        generator: Generators = None) -> Trajectories:
    """Sample one image per prompt with the guided DDIM sampler and keep every transition and its log-probability.

    Defaults are SPO's sampler (reference ``diffusion-methods.md`` §6.1: DDIM, η 1, 20 steps, CFG 5 with the
    pipeline's unconditional embedding).
    """
    device = components.vae.device
    vae_factor = 2 ** (len(components.vae.config.block_out_channels) - 1)
    if resolution % vae_factor:
        raise ValueError(f"sample_trajectories: resolution {resolution} is not a multiple of the VAE factor {vae_factor}")
    module = getattr(unet, "module", unet)
    shape = (len(prompts), module.config.in_channels, resolution // vae_factor, resolution // vae_factor)
    scheduler = ddim_scheduler(components, num_inference_steps, device)
    cond = components.adapter.sampling_conditioning(components, prompts, negative_prompts, resolution=resolution)
    latents = randn(shape, generator, device) * scheduler.init_noise_sigma
    path, log_probs = [latents], []
    for t in scheduler.timesteps:
        step = ddim_step(components, unet, scheduler, latents, t, cond, guidance_scale=guidance_scale, eta=eta,
                         generator=generator)
        latents = step.prev_sample
        path.append(latents)
        log_probs.append(step.log_prob)
    return Trajectories(torch.stack(path, dim=1), torch.stack(log_probs, dim=1), scheduler.timesteps.clone())
