"""The sampler-transition provider (``visalign.likelihood.ddim_steps.DDIMStepLogProbs``) on step-wise pairs of a tiny
SD checkpoint: it scores the stored transitions as the sampler's own step does, and SPO's loss starts at ln 2."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from diffusers import DDIMScheduler

from visalign.likelihood.ddim_steps import DDIMStepLogProbs
from visalign.losses import preference_loss
from visalign.models.diffusion import load_diffusion_components
from visalign.sampling.ddim import ddim_scheduler, ddim_step
from visalign.sampling.stepwise import stepwise_pairs
from visalign.testing.diffusion import TINY_SD, save_tiny_sd

PROMPTS = ["a red square", "a blue circle"]
STEPS = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    loaded = load_diffusion_components(save_tiny_sd(tmp_path_factory.mktemp("sd") / "model"))
    scheduler = DDIMScheduler.from_config(loaded.scheduler.config, set_alpha_to_one=False, steps_offset=1)
    components = dataclasses.replace(loaded, scheduler=scheduler)
    pairs = stepwise_pairs(components, components.unet, PROMPTS, lambda px, p, t: 50 * px.flatten(1).mean(1),
                           resolution=TINY_SD.image_size, generators=[torch.Generator().manual_seed(s) for s in (1, 2)],
                           num_candidates=2, divert_start_step=1, threshold=0.0, num_inference_steps=STEPS)
    batch = {"parents": pairs.parents, "chosen": pairs.chosen, "rejected": pairs.rejected,
             "timesteps": pairs.timesteps, "prompts": [PROMPTS[i] for i in pairs.prompt_indices.tolist()]}
    provider = DDIMStepLogProbs(components, num_inference_steps=STEPS, guidance_scale=5.0, eta=1.0,
                                resolution=TINY_SD.image_size, device="cpu")
    return components, batch, provider


def test_each_side_is_scored_as_the_samplers_step_scores_it(setup):
    components, batch, provider = setup
    assert len(batch["prompts"]) >= 4
    scored = provider.pair_loglik(components.unet, provider.prepare(batch, step=0))
    scheduler = ddim_scheduler(components, STEPS, "cpu")
    for side in ("chosen", "rejected"):
        for i, prompt in enumerate(batch["prompts"]):
            cond = components.adapter.sampling_conditioning(components, [prompt], resolution=TINY_SD.image_size)
            alone = ddim_step(components, components.unet, scheduler, batch["parents"][i:i + 1],
                              batch["timesteps"][i], cond, guidance_scale=5.0, eta=1.0,
                              prev_latents=batch[side][i:i + 1])
            torch.testing.assert_close(getattr(scored, side)[i:i + 1], alone.log_prob, atol=1e-4, rtol=1e-4)


def test_swapping_the_sides_swaps_the_scores_and_gradients_reach_the_unet(setup):
    components, batch, provider = setup
    unet = copy.deepcopy(components.unet).train()
    scored = provider.pair_loglik(unet, provider.prepare(batch, step=0))
    swapped = provider.pair_loglik(unet, provider.prepare({**batch, "chosen": batch["rejected"],
                                                          "rejected": batch["chosen"]}, step=0))
    torch.testing.assert_close(scored.chosen, swapped.rejected)
    (scored.chosen - scored.rejected).sum().backward()
    assert sum(p.grad.abs().sum() for p in unet.parameters() if p.grad is not None) > 0


def test_spo_loss_is_ln2_against_an_identical_reference_and_moves_after_an_update(setup):
    components, batch, provider = setup
    inputs = provider.prepare(batch, step=0)
    policy = copy.deepcopy(components.unet).train()
    ref = provider.pair_loglik(components.unet, inputs)
    out = preference_loss("spo", provider.pair_loglik(policy, inputs), ref, beta=10.0)
    assert out.losses.mean().item() == pytest.approx(math.log(2), abs=1e-5)
    out.losses.mean().backward()
    with torch.no_grad():
        for p in policy.parameters():
            if p.grad is not None:
                p -= 1e-2 * p.grad.sign()
    after = preference_loss("spo", provider.pair_loglik(policy, inputs), ref, beta=10.0)
    assert after.losses.mean().item() < math.log(2)


def test_mspo_pairs_are_scored_each_side_under_its_own_parent(setup):
    components, _, provider = setup
    pairs = stepwise_pairs(components, components.unet, PROMPTS, lambda px, p, t: 50 * px.flatten(1).mean(1),
                           resolution=TINY_SD.image_size, generators=[torch.Generator().manual_seed(s) for s in (1, 2)],
                           num_candidates=2, divert_start_step=1, threshold=0.0, num_inference_steps=STEPS,
                           inner_steps=2)
    batch = {"parents": pairs.parents, "rejected_parents": pairs.rejected_parents, "chosen": pairs.chosen,
             "rejected": pairs.rejected, "timesteps": pairs.timesteps,
             "prompts": [PROMPTS[i] for i in pairs.prompt_indices.tolist()]}
    scored = provider.pair_loglik(components.unet, provider.prepare(batch, step=0))
    scheduler = ddim_scheduler(components, STEPS, "cpu")
    for side, parent in (("chosen", "parents"), ("rejected", "rejected_parents")):
        for i, prompt in enumerate(batch["prompts"]):
            cond = components.adapter.sampling_conditioning(components, [prompt], resolution=TINY_SD.image_size)
            alone = ddim_step(components, components.unet, scheduler, batch[parent][i:i + 1], batch["timesteps"][i],
                              cond, guidance_scale=5.0, eta=1.0, prev_latents=batch[side][i:i + 1])
            torch.testing.assert_close(getattr(scored, side)[i:i + 1], alone.log_prob, atol=1e-4, rtol=1e-4)
