"""The sampler-transition likelihood provider: log-probabilities of stored DDIM steps under a denoiser (SPO).

A batch of B step-wise pairs (``visalign.sampling.stepwise``) holds, per pair, the shared parent ``x_t``, the chosen
and rejected children ``x_{t-1}``, the timestep and the prompt. ``pair_loglik(unet, inputs)`` runs ONE guided
forward of ``unet`` on the parents (``[uncond; cond]``, 2B rows) and scores both children under the same Gaussian
step (``visalign.likelihood.transition``): ``chosen = log p(x_{t-1}^w | x_t)``, ``rejected = log p(x_{t-1}^l | x_t)``,
each the mean over C·h·w. SPO's code runs the policy and the reference once per side (four forwards per pair chunk,
reference ``diffusion-methods.md`` §6.2); with a shared parent both sides have the same input, so one forward per
model gives the same numbers. Pairs from SDXL's MSPO inner steps carry their own ``rejected_parents``; then the one
forward runs on ``[parents; rejected_parents]`` (4B rows) and each side is scored under its own parent's step.
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
    rejected_parents: torch.Tensor | None = None


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
        """``batch``: ``parents``, ``chosen``, ``rejected`` ``[B, C, h, w]`` (and MSPO's ``rejected_parents``),
        ``timesteps`` ``[B]`` and ``prompts`` (B strings). Draws nothing: the transitions were drawn when they were
        sampled."""
        prompts: Sequence[str] = batch["prompts"]
        with torch.no_grad():
            cond = self.components.adapter.sampling_conditioning(self.components, list(prompts),
                                                                 resolution=self.resolution)
        rejected_parents = batch.get("rejected_parents")
        return StoredSteps(*(batch[key].to(self.device, torch.float32) for key in ("parents", "chosen", "rejected")),
                           batch["timesteps"].to(self.device).long(), cond,
                           None if rejected_parents is None else rejected_parents.to(self.device, torch.float32))

    def pair_loglik(self, model: torch.nn.Module, inputs: StoredSteps) -> PairLogLik:
        if inputs.rejected_parents is None:  # one parent per pair: one guided forward scores both children
            mean, std = self._step(model, inputs.parents, inputs.timesteps, inputs.cond)
            return PairLogLik(transition_log_prob(inputs.chosen, mean, std),
                              transition_log_prob(inputs.rejected, mean, std))
        b = inputs.parents.shape[0]
        rows = torch.arange(b)
        cond = inputs.cond.select(torch.cat([rows, rows, rows + b, rows + b]))  # [uncond; cond] of both sides
        mean, std = self._step(model, torch.cat([inputs.parents, inputs.rejected_parents]),
                               inputs.timesteps.repeat(2), cond)
        (mean_w, mean_l), (std_w, std_l) = mean.chunk(2), std.chunk(2)
        return PairLogLik(transition_log_prob(inputs.chosen, mean_w, std_w),
                          transition_log_prob(inputs.rejected, mean_l, std_l))

    def _step(self, model, parents: torch.Tensor, timesteps: torch.Tensor, cond: UNetCond):
        """The mean and std of the guided DDIM step from ``parents`` (``cond``: their ``[uncond; cond]`` rows)."""
        output = guided_output(self.components, model, parents, timesteps, cond, self.guidance_scale)
        mean, std, _ = ddim_gaussian(self.scheduler, output, timesteps, parents, eta=self.eta)
        return mean, std
