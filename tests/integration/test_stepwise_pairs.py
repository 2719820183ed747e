"""SPO's step-wise resampler (``visalign.sampling.stepwise``) on a tiny SD checkpoint, with a constructed step scorer
whose judgements the tests can recompute."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from diffusers import DDIMScheduler

from visalign.models.diffusion import decode_latents, load_diffusion_components
from visalign.sampling.ddim import ddim_scheduler, sample_trajectories
from visalign.sampling.stepwise import stepwise_pairs
from visalign.testing.diffusion import TINY_SD, save_tiny_sd

PROMPTS = ["a red square", "a blue circle", "a green triangle"]
STEPS, DIVERT, K = 6, 2, 3


class BrightnessScorer:
    """Preference logits ``scale · mean pixel``; remembers every call."""

    def __init__(self, scale: float = 50.0):
        self.scale, self.calls = scale, []

    def __call__(self, pixels, prompts, timesteps):
        logits = self.scale * pixels.flatten(1).mean(1)
        self.calls.append((list(prompts), timesteps.clone(), logits.clone()))
        return logits


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    loaded = load_diffusion_components(save_tiny_sd(tmp_path_factory.mktemp("sd") / "model"))
    scheduler = DDIMScheduler.from_config(loaded.scheduler.config, set_alpha_to_one=False, steps_offset=1)
    return dataclasses.replace(loaded, scheduler=scheduler)


def _generators(seeds=(1, 2, 3)):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _pairs(components, scorer, prompts=PROMPTS, seeds=(1, 2, 3), threshold=0.0):
    return stepwise_pairs(components, components.unet, prompts, scorer, resolution=TINY_SD.image_size,
                          generators=_generators(seeds), num_candidates=K, divert_start_step=DIVERT,
                          threshold=threshold, num_inference_steps=STEPS)


def test_each_compared_step_keeps_its_best_and_worst_child_above_the_threshold(components):
    scorer = BrightnessScorer()
    pairs = _pairs(components, scorer, threshold=0.0)
    assert pairs.comparisons == len(PROMPTS) * (STEPS - DIVERT)
    assert len(scorer.calls) == STEPS - DIVERT  # one batched judgement of n·k children per compared step
    gaps = []
    for prompts, timesteps, logits in scorer.calls:
        assert prompts == [p for p in PROMPTS for _ in range(K)]
        per_prompt = logits.view(len(PROMPTS), K)
        gaps.append(torch.tanh((per_prompt.max(1).values - per_prompt.min(1).values) / 2))
    gaps = torch.stack(gaps, dim=1)  # [prompt, compared step]
    kept = gaps > 0
    assert len(pairs) == int(kept.sum())
    torch.testing.assert_close(pairs.gaps.sort().values, gaps[kept].sort().values)
    # the last step judges the children themselves at t = 0; earlier ones their predicted x0 at the next timestep
    assert (scorer.calls[-1][1] == 0).all() and (scorer.calls[0][1] > 0).all()
    # chosen is brighter than rejected when decoded at the step the scorer judged them (last step: exactly)
    last = pairs.timesteps == pairs.timesteps.min()
    bright = [decode_latents(components.vae, pairs.chosen[last]).mean((1, 2, 3)),
              decode_latents(components.vae, pairs.rejected[last]).mean((1, 2, 3))]
    assert (bright[0] > bright[1]).all()


def test_a_higher_threshold_keeps_only_the_wider_gaps(components):
    everything = _pairs(components, BrightnessScorer(), threshold=0.0)
    middle = float(everything.gaps.median())
    some = _pairs(components, BrightnessScorer(), threshold=middle)
    assert 0 < len(some) < len(everything) and (some.gaps > middle).all()
    assert some.comparisons == everything.comparisons
    none = _pairs(components, BrightnessScorer(), threshold=math.tanh(1e9))
    assert len(none) == 0 and none.comparisons == everything.comparisons and none.parents.shape[1:] == (4, 16, 16)


def test_the_trajectory_before_the_divert_step_is_the_plain_samplers(components):
    scorer = BrightnessScorer()
    pairs = _pairs(components, scorer, threshold=0.0)
    plain = sample_trajectories(components, components.unet, PROMPTS, resolution=TINY_SD.image_size,
                                num_inference_steps=STEPS, generator=_generators())
    first = pairs.timesteps == pairs.timesteps.max()
    torch.testing.assert_close(pairs.parents[first], plain.latents[pairs.prompt_indices[first], DIVERT])


def test_a_prompts_pairs_do_not_depend_on_its_batch(components):
    together = _pairs(components, BrightnessScorer(), threshold=0.0)
    alone = _pairs(components, BrightnessScorer(), prompts=PROMPTS[1:2], seeds=(2,), threshold=0.0)
    mine = together.prompt_indices == 1
    torch.testing.assert_close(together.chosen[mine], alone.chosen, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(together.timesteps[mine], alone.timesteps)


def test_reward_scorers_judge_children_and_a_step_aware_one_judges_them_at_their_timestep(tmp_path):
    from reward_models import load_scorer
    from tests.contract.test_step_aware_scorer import save_trained_spm
    from visalign.testing.clip import save_tiny_clip
    from visalign.sampling.stepwise import RewardStepScorer

    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    early, late = torch.tensor([951, 951, 951]), torch.tensor([0, 0, 0])
    shapes = RewardStepScorer(load_scorer("shapes"))
    torch.testing.assert_close(shapes(pixels, PROMPTS, early), shapes(pixels, PROMPTS, late))  # t-agnostic
    assert shapes(pixels, PROMPTS, early).shape == (3,)
    clip = save_tiny_clip(tmp_path / "clip", image_size=32, patch_size=8)
    spm = RewardStepScorer(load_scorer("step-aware", model=str(save_trained_spm(tmp_path / "spm", clip))))
    assert not torch.allclose(spm(pixels, PROMPTS, early), spm(pixels, PROMPTS, late))


def test_mspo_pairs_every_transition_of_the_best_and_worst_branch_and_branches_every_1_plus_j_steps(components):
    scorer, inner = BrightnessScorer(), 2
    pairs = stepwise_pairs(components, components.unet, PROMPTS, scorer, resolution=TINY_SD.image_size,
                           generators=_generators(), num_candidates=K, divert_start_step=DIVERT, threshold=0.0,
                           num_inference_steps=STEPS, inner_steps=inner)
    groups = [list(range(DIVERT, DIVERT + 1 + inner)), list(range(DIVERT + 1 + inner, STEPS))]  # [2, 3, 4], [5]
    assert len(scorer.calls) == len(groups) and pairs.comparisons == len(PROMPTS) * len(groups)
    assert len(pairs) == len(PROMPTS) * sum(len(g) for g in groups)  # threshold 0: every comparison kept
    timesteps = ddim_scheduler(components, STEPS, "cpu").timesteps
    for prompt in range(len(PROMPTS)):
        mine = (pairs.prompt_indices == prompt).nonzero().flatten()
        assert pairs.timesteps[mine].tolist() == [int(timesteps[s]) for g in groups for s in g]
        first, *inners = mine[: 1 + inner].tolist()
        torch.testing.assert_close(pairs.rejected_parents[first], pairs.parents[first])  # the branching step
        for before, after in zip([first, *inners], inners):  # inside a branch each side continues its own chain
            torch.testing.assert_close(pairs.parents[after], pairs.chosen[before])
            torch.testing.assert_close(pairs.rejected_parents[after], pairs.rejected[before])
            assert not torch.equal(pairs.parents[after], pairs.rejected_parents[after])
    single = _pairs(components, BrightnessScorer(), threshold=0.0)
    assert single.rejected_parents is None  # one parent per pair without inner steps
