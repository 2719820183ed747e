"""DDIM sampler transitions and their Gaussian log-probabilities (SPO, GRPO-style online RL).

A DDIM step with ``eta > 0`` (Song et al. 2021, arXiv 2010.02502, Eq. 12 and Eq. 16) is a Gaussian transition

    x_{t-1} ~ N(mu, sigma_t^2 I),   mu = sqrt(abar_prev) * x0_hat + sqrt(1 - abar_prev - sigma_t^2) * eps_hat,
    sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)),

with ``x0_hat``/``eps_hat`` from the model's output at ``(x_t, t)`` (epsilon or v prediction; classifier-free
guidance is applied to the output before this step). SPO (Liang et al., CVPR 2025, arXiv 2406.04314, §3.3; reference
``diffusion-methods.md`` §6.2) scores a stored transition ``x_t -> x_{t-1}`` by the log-density of ``x_{t-1}`` under
this Gaussian, averaged over the C x H x W elements (a mean, not a sum, as SPO's ``ddim_with_logprob``):

    log p(x_{t-1} | x_t) = mean_{c,h,w} [ -(x_{t-1} - mu)^2 / (2 sigma_t^2) - log sigma_t - log sqrt(2 pi) ].

The maths follows diffusers' ``DDIMScheduler.step`` (timestep spacing, ``final_alpha_cumprod`` at the last step,
``clip_sample``), so ``prev_sample`` equals ``DDIMScheduler.step(..., eta, variance_noise=noise)``. It differs in
three deliberate ways: it runs in fp32 whatever the latents' dtype; it takes one timestep per sample (a training
batch of stored transitions mixes steps); and it returns the mean and log-probability besides the sample.
Dynamic thresholding (``thresholding: true``, a pixel-space option no Stable Diffusion scheduler sets) is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SUPPORTED_PREDICTION_TYPES = ("epsilon", "v_prediction")
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class DDIMTransition:
    """One DDIM step for N samples, all fp32: ``prev_sample``/``mean`` ``[N, C, H, W]``, ``std`` ``[N]`` (sigma_t),
    ``log_prob`` ``[N]`` (of ``prev_sample``) and ``pred_original_sample`` (x0_hat, after ``clip_sample``)."""

    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob: torch.Tensor
    pred_original_sample: torch.Tensor


def previous_timesteps(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """The DDIM predecessor of each timestep, ``t - num_train_timesteps // num_inference_steps`` (diffusers' rule;
    negative after the last step). ``scheduler.set_timesteps`` must have been called."""
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("previous_timesteps: call scheduler.set_timesteps(num_inference_steps) first")
    return timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def transition_log_prob(prev_sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``[N]`` fp32 Gaussian log-density of ``prev_sample`` under ``N(mean, std^2 I)``, averaged over the non-batch
    elements (SPO's scale). ``std`` is ``[N]``; a row with ``std == 0`` is a deterministic step (the last step of a
    scheduler with ``set_alpha_to_one: true``), which has no density: its log-probability is NaN (no stock Stable
    Diffusion scheduler config sets it; online methods form no pair there, as its candidates coincide)."""
    std = std.float()
    sigma = _broadcast(torch.where(std > 0, std, torch.ones_like(std)), mean)
    density = -((prev_sample.float() - mean.float()) ** 2) / (2.0 * sigma**2) - torch.log(sigma) - _LOG_SQRT_2PI
    return torch.where(std > 0, density.flatten(1).mean(dim=1), torch.full_like(std, math.nan))


def _check_scheduler(config) -> None:
    if config.prediction_type not in SUPPORTED_PREDICTION_TYPES:
        raise ValueError(f"scheduler.config.prediction_type={config.prediction_type!r} is not supported; expected "
                         f"one of {SUPPORTED_PREDICTION_TYPES}")
    if getattr(config, "thresholding", False):
        raise ValueError("scheduler.config.thresholding=True (dynamic thresholding) is not supported")


def predicted_original_sample(scheduler, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0_hat, eps_hat)`` in fp32 from the model output at ``(x_t, t)`` (DDIM Eq. 12's "predicted x0", after
    ``clip_sample``); ``timesteps`` is ``[N]`` or a scalar. SPO's step-aware scorer judges ``x0_hat``."""
    config = scheduler.config
    _check_scheduler(config)
    x_t = sample.float()
    timesteps = torch.as_tensor(timesteps, device=x_t.device).long().expand(x_t.shape[0])
    abar_t = scheduler.alphas_cumprod.to(device=x_t.device, dtype=torch.float32)[timesteps]
    a_t, b_t = _broadcast(abar_t, x_t), _broadcast(1.0 - abar_t, x_t)
    output = model_output.float()
    if config.prediction_type == "epsilon":
        x0, eps = (x_t - b_t.sqrt() * output) / a_t.sqrt(), output
    else:  # v_prediction
        x0, eps = a_t.sqrt() * x_t - b_t.sqrt() * output, a_t.sqrt() * output + b_t.sqrt() * x_t
    if config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    return x0, eps


def ddim_gaussian(scheduler, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor, *,
                  eta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, std, x0_hat)`` of the DDIM transition ``p(x_{t-1} | x_t)`` (module docstring), fp32; ``std`` ``[N]``."""
    if not eta > 0:
        raise ValueError(f"ddim_transition: eta must be > 0 for a transition with a density; got {eta!r}")
    x0, eps = predicted_original_sample(scheduler, model_output, timesteps, sample)
    device = x0.device
    timesteps = torch.as_tensor(timesteps, device=device).long().expand(x0.shape[0])
    prev = previous_timesteps(scheduler, timesteps)
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32, device=device)
    abar_t = alphas[timesteps]
    abar_prev = torch.where(prev >= 0, alphas[prev.clamp(min=0)], final)
    variance = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
    std = eta * variance.sqrt()
    sigma, a_prev = _broadcast(std, x0), _broadcast(abar_prev, x0)
    return a_prev.sqrt() * x0 + (1.0 - a_prev - sigma**2).sqrt() * eps, std, x0


def ddim_transition(
    scheduler, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor, *, eta: float,
    prev_sample: torch.Tensor | None = None, noise: torch.Tensor | None = None,
) -> DDIMTransition:
    """One DDIM step from ``sample`` (x_t) at ``timesteps`` (``[N]`` or a scalar) given the (guided) model output.

    Give exactly one of ``prev_sample`` (a stored transition, scored: training) and ``noise`` (standard normal, the
    shape of ``sample``: the step is drawn as ``mean + std * noise``, diffusers' ``variance_noise``).
    """
    if (prev_sample is None) == (noise is None):
        raise ValueError("ddim_transition: give exactly one of prev_sample (score it) and noise (draw it)")
    mean, std, x0 = ddim_gaussian(scheduler, model_output, timesteps, sample, eta=eta)
    if prev_sample is None:
        prev_sample = mean + _broadcast(std, mean) * noise.to(device=mean.device, dtype=torch.float32)
    prev_sample = prev_sample.float().to(mean.device)
    return DDIMTransition(prev_sample, mean, std, transition_log_prob(prev_sample, mean, std), x0)
