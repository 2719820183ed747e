"""SPO's step-wise resampler: preference pairs formed at each denoising step (Liang et al., CVPR 2025,
arXiv 2406.04314, §3.2; reference ``diffusion-methods.md`` §6.1, ``flow-and-online.md`` §1).

For N prompts, one guided DDIM trajectory (η > 0) runs to step ``divert_start_step``; from there on, at each step

1. ``num_candidates`` children ``x_{t-1}`` of the current ``x_t`` are drawn (one mean, k noises);
2. each child's predicted ``x0`` (one guided forward at the next timestep; at the last step the child itself) is
   decoded and judged by the step scorer at that timestep;
3. the best and worst children form a pair when ``softmax(best, worst)`` gives the best a probability larger than
   the worst's by more than ``threshold`` (``tanh((l_best − l_worst) / 2) > threshold`` for preference logits
   ``l``); the pair stores ``(x_t, x_{t-1}^best, x_{t-1}^worst, t, prompt)``;
4. the trajectory continues from a uniformly random child (SPO's ablation: better than continuing from the winner),
   whose forward from step 2 is the next step's model output (no second forward).

Steps before ``divert_start_step`` (SPO: 4 of 20, i.e. t > κ = 750) are never compared. Each prompt draws from its
own CPU generator (noise and the random child), so a prompt's pairs do not depend on its batch.

SDXL's MSPO (``inner_steps`` j, SPO's ``num_inner_step``: 3 for SDXL; ``flow-and-online.md`` §1): each of the k
branches runs j more independent DDIM steps after the branching one before it is judged (its predicted x0 at the
step after, as above); every transition of the best and of the worst branch becomes a pair under the branch's label,
``(x_t^best, x_{t-1}^best, x_t^worst, x_{t-1}^worst, t)`` (in the inner steps the parents differ), and the trajectory
continues from the end of a random branch, so it branches every ``1 + j`` steps. With ``inner_steps`` 0 (SD1.5) every
step branches and the draws are those of the single-step procedure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from visalign.likelihood.transition import ddim_transition, predicted_original_sample
from visalign.models.diffusion import decode_latents
from visalign.sampling.ddim import ddim_scheduler, guided_output, randn


class StepScorer(Protocol):
    """Judges predicted clean images at a denoising step: ``pixels`` ``[N, 3, H, W]`` in [0, 1], one prompt and one
    timestep per image -> ``[N]`` preference logits (Bradley–Terry: ``P(a ≻ b) = σ(l_a − l_b)``)."""

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor) -> torch.Tensor: ...


class RewardStepScorer:
    """A ``reward_models`` scorer as a step scorer, through the scorer's own ``preference_logits``. A step-aware
    scorer (``step-aware``, SPO's SPM) judges each image at its timestep; any other judges the predicted ``x0``
    whatever the timestep (the "plain scorer" row of SPO's ablation). A differentiable scorer takes the decoded
    pixels as they are (``score_tensor``: no trip through the CPU, and the preprocessing the SPM is trained with);
    any other scores them as images."""

    def __init__(self, scorer) -> None:
        from reward_models.step_aware import StepAwareScorer

        self.scorer = scorer
        self.step_aware = isinstance(scorer, StepAwareScorer)

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor) -> torch.Tensor:
        kwargs = {"timesteps": timesteps.cpu()} if self.step_aware else {}
        if self.scorer.info.differentiable:
            scores = self.scorer.score_tensor(pixels, list(prompts), **kwargs).scores
        else:
            scores = self.scorer.score(list(pixels.cpu()), list(prompts), **kwargs).scores
        return self.scorer.preference_logits(scores).float()


@dataclass
class StepwisePairs:
    """P step-wise pairs, fp32 latents on the sampling device.

    Attributes:
        parents: ``[P, C, h, w]`` the ``x_t`` of each pair (of its chosen side).
        chosen, rejected: ``[P, C, h, w]`` the best and worst children ``x_{t-1}``.
        rejected_parents: ``[P, C, h, w]`` the rejected side's ``x_t`` with MSPO's inner steps (where the parents
            differ); None when every pair shares its parent.
        timesteps: ``[P]`` the step's ``t``.
        prompt_indices: ``[P]`` index of each pair's prompt.
        gaps: ``[P]`` ``p_best − p_worst`` of the pair.
        comparisons: (prompt, step) comparisons made (pairs kept + pairs below the threshold).
    """

    parents: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    timesteps: torch.Tensor
    prompt_indices: torch.Tensor
    gaps: torch.Tensor
    comparisons: int
    rejected_parents: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.parents.shape[0]


def _pixels(components, latents: torch.Tensor) -> torch.Tensor:
    return (decode_latents(components.vae, latents) / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def stepwise_pairs(components, unet, prompts: Sequence[str], step_scorer: StepScorer, *, resolution: int,
                   generators: Sequence[torch.Generator], num_candidates: int = 4, divert_start_step: int = 4,
                   threshold: float = 0.3, num_inference_steps: int = 20, guidance_scale: float = 5.0,
                   eta: float = 1.0, negative_prompts: Sequence[str] | None = None,
                   inner_steps: int = 0) -> StepwisePairs:
    """Sample one trajectory per prompt and keep its step-wise pairs (module docstring). Defaults: SPO SD1.5 (k 4,
    threshold 0.3, DDIM η 1, 20 steps, CFG 5, no inner steps; SDXL: k 2, threshold 0.4, ``inner_steps`` 3);
    ``generators`` holds one CPU generator per prompt."""
    n, k = len(prompts), num_candidates
    if inner_steps < 0:
        raise ValueError(f"stepwise_pairs: inner_steps must be >= 0; got {inner_steps}")
    if len(generators) != n:
        raise ValueError(f"stepwise_pairs: {len(generators)} generators for {n} prompts")
    if k < 2:
        raise ValueError(f"stepwise_pairs: num_candidates must be >= 2; got {k}")
    if not 0 <= divert_start_step < num_inference_steps:
        raise ValueError(f"stepwise_pairs: divert_start_step must be in [0, {num_inference_steps}); "
                         f"got {divert_start_step}")
    device = components.vae.device
    vae_factor = 2 ** (len(components.vae.config.block_out_channels) - 1)
    module = getattr(unet, "module", unet)
    shape = (n, module.config.in_channels, resolution // vae_factor, resolution // vae_factor)
    scheduler = ddim_scheduler(components, num_inference_steps, device)
    cond = components.adapter.sampling_conditioning(components, prompts, negative_prompts, resolution=resolution)
    rows = torch.arange(n).repeat_interleave(k)
    cond_k = cond.select(torch.cat([rows, rows + n]))  # [uncond; cond] of every child
    prompts_k = [prompts[i] for i in rows.tolist()]
    x = randn(shape, generators, device) * scheduler.init_noise_sigma
    output = None
    kept: list[tuple] = []
    comparisons = 0
    timesteps = scheduler.timesteps
    i = 0
    while i < len(timesteps):
        t = timesteps[i]
        if output is None:
            output = guided_output(components, unet, x, t, cond, guidance_scale)
        if i < divert_start_step:
            x = ddim_transition(scheduler, output, t, x, eta=eta, noise=randn(shape, generators, device)).prev_sample
            output, i = None, i + 1
            continue
        branches, branch_output, transitions = x.repeat_interleave(k, 0), output.repeat_interleave(k, 0), []
        for step_t in timesteps[i : i + 1 + inner_steps]:  # the branching step, then MSPO's inner steps
            if transitions:
                branch_output = guided_output(components, unet, branches, step_t, cond_k, guidance_scale)
            noise = torch.stack([randn((k, *shape[1:]), [g] * k, device) for g in generators])  # [n, k, ...]
            children = ddim_transition(scheduler, branch_output, step_t, branches, eta=eta,
                                       noise=noise.flatten(0, 1)).prev_sample
            transitions.append((branches.view(n, k, *shape[1:]), children.view(n, k, *shape[1:]), step_t))
            branches = children
        i += len(transitions)
        last = i == len(timesteps)
        if last:
            judged, judged_t, output_k = branches, torch.zeros(n * k, dtype=torch.long, device=device), None
        else:
            output_k = guided_output(components, unet, branches, timesteps[i], cond_k, guidance_scale)
            judged = predicted_original_sample(scheduler, output_k, timesteps[i], branches)[0]
            judged_t = timesteps[i].expand(n * k)
        logits = step_scorer(_pixels(components, judged), prompts_k, judged_t).to(device).view(n, k)
        best, worst = logits.argmax(dim=1), logits.argmin(dim=1)
        gaps = torch.tanh((logits.gather(1, best[:, None]) - logits.gather(1, worst[:, None]))[:, 0] / 2)
        comparisons += n
        for j in torch.nonzero(gaps > threshold).flatten().tolist():
            for parents, children, step_t in transitions:
                kept.append((parents[j, best[j]], children[j, best[j]], parents[j, worst[j]], children[j, worst[j]],
                             step_t, j, gaps[j]))
        pick = torch.stack([torch.randint(k, (1,), generator=g) for g in generators]).flatten().to(device)
        rows_n = torch.arange(n, device=device)
        x = branches.view(n, k, *shape[1:])[rows_n, pick]
        output = None if last else output_k.view(n, k, *shape[1:])[rows_n, pick]
    if not kept:
        empty = torch.empty((0, *shape[1:]), device=device)
        none = torch.empty(0, dtype=torch.long, device=device)
        return StepwisePairs(empty, empty, empty.clone(), none, none.clone(), torch.empty(0, device=device),
                             comparisons, empty.clone() if inner_steps else None)
    parents, chosen, rejected_parents, rejected, ts, idx, gaps = zip(*kept)
    return StepwisePairs(torch.stack(parents), torch.stack(chosen), torch.stack(rejected),
                         torch.stack([torch.as_tensor(v, device=device) for v in ts]).long(),
                         torch.tensor(idx, device=device), torch.stack(gaps), comparisons,
                         torch.stack(rejected_parents) if inner_steps else None)
