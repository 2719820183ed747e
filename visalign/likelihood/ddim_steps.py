"""The sampler-transition likelihood provider: log-probabilities of stored DDIM steps under a denoiser (SPO).

A batch of B step-wise pairs (``visalign.sampling.stepwise``) holds, per pair, the shared parent ``x_t``, the chosen
and rejected children ``x_{t-1}``, the timestep and the prompt. ``pair_loglik(unet, inputs)`` runs ONE guided
forward of ``unet`` on the parents (``[uncond; cond]``, 2B rows) and scores both children under the same Gaussian
step (``visalign.likelihood.transition``): ``chosen = log p(x_{t-1}^w | x_t)``, ``rejected = log p(x_{t-1}^l | x_t)``,
each the mean over C·h·w. SPO's code runs the policy and the reference once per side (four forwards per pair chunk,
reference ``diffusion-methods.md`` §6.2); with a shared parent both sides have the same input, so one forward per
model gives the same numbers (SDXL's MSPO inner steps, whose parents differ, are not built).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from visalign.likelihood.base import LikelihoodProvider
from visalign.likelihood.transition import ddim_gaussian, transition_log_prob
from visalign.losses.types import PairLogLik
from visalign.models.families.conditioning import UNetCond
from visalign.sampling.ddim import ddim_scheduler, guided_output


@dataclass
class StoredSteps:
    """A micro-batch of B stored step-wise pairs on the training device, fp32, with their ``[uncond; cond]``
    conditioning (2B rows)."""

    parents: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    timesteps: torch.Tensor
    cond: UNetCond


class DDIMStepLogProbs(LikelihoodProvider):
    """Log-probabilities of stored DDIM transitions under the denoiser (module docstring).

    Args:
        components: the model's ``DiffusionComponents`` (its adapter encodes the prompts).
        num_inference_steps, guidance_scale, eta: the sampler that drew the transitions (the same DDIM spacing,
            CFG scale and η; SPO: 20, 5.0, 1.0).
        resolution: the sampling resolution (SDXL's time ids).
        device: where the inputs go.
    """

    def __init__(self, components, *, num_inference_steps: int, guidance_scale: float, eta: float, resolution: int,
                 device: torch.device | str) -> None:
        self.components, self.guidance_scale, self.eta = components, guidance_scale, eta
        self.resolution, self.device = resolution, torch.device(device)
        self.scheduler = ddim_scheduler(components, num_inference_steps, self.device)

    def prepare(self, batch: Mapping[str, Any], step: int) -> StoredSteps:
        """``batch``: ``parents``, ``chosen``, ``rejected`` ``[B, C, h, w]``, ``timesteps`` ``[B]`` and ``prompts``
        (B strings). Draws nothing: the transitions were drawn when they were sampled."""
        prompts: Sequence[str] = batch["prompts"]
        with torch.no_grad():
            cond = self.components.adapter.sampling_conditioning(self.components, list(prompts),
                                                                 resolution=self.resolution)
        return StoredSteps(*(batch[key].to(self.device, torch.float32) for key in ("parents", "chosen", "rejected")),
                           batch["timesteps"].to(self.device).long(), cond)

    def pair_loglik(self, model: torch.nn.Module, inputs: StoredSteps) -> PairLogLik:
        output = guided_output(self.components, model, inputs.parents, inputs.timesteps, inputs.cond,
                               self.guidance_scale)
        mean, std, _ = ddim_gaussian(self.scheduler, output, inputs.timesteps, inputs.parents, eta=self.eta)
        return PairLogLik(transition_log_prob(inputs.chosen, mean, std), transition_log_prob(inputs.rejected, mean, std))
