"""Invariants of the diffusion preference trainer on tiny SD1.5/SDXL pipelines saved to disk and loaded back:
frozen_copy == disable_adapter, ln 2 at step 0 of a full fine-tune, MaPO without a reference forward, DCPO's per-side
conditioning, SDXL per-image time ids, InPO's per-image reparametrised noise, keyed noise. ln 2 with a fresh LoRA and
batch 4 == batch 1 x grad-accum 4 are the trainer contract's (``tests/contract/test_trainer_contract.py``)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.diffusion import pairs, sd15, sdxl, write_pairs  # noqa: F401 (pytest fixtures)
from visalign.models.diffusion import encode_prompts
from visalign.trainers.diffusion import DCPOConfig, DiffusionConfig, DiffusionTrainer, InPOConfig, MaPOConfig

LN2 = math.log(2.0)


def trainer(config_cls=DiffusionConfig, **overrides) -> DiffusionTrainer:
    values = dict(max_steps=2, per_device_batch_size=2, save_steps=0, logging_steps=1, lr_scheduler="constant")
    return DiffusionTrainer(config_cls(**{**values, **overrides}))


def first_batch(t: DiffusionTrainer) -> dict:
    return next(iter(t.data_source.loader))


def count_unet_calls(module: torch.nn.Module) -> list:
    """Record the keyword arguments of every forward of ``module``."""
    calls = []
    module.register_forward_pre_hook(lambda _m, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
    return calls


def test_frozen_copy_equals_disable_adapter_at_step_0_and_after_training(sd15, pairs, tmp_path):
    runs = {}
    for reference in ("frozen_copy", "disable_adapter"):
        t = trainer(model=sd15, dataset=pairs, output_dir=str(tmp_path / reference), use_lora=True,
                    reference=reference, learning_rate=1e-2, max_steps=3)
        loss, metrics = t.compute_loss(first_batch(t))
        t.train()
        weights = {n: p.detach().clone() for n, p in t.model.named_parameters() if "lora" in n}
        runs[reference] = (loss.item(), metrics, weights)
    (loss_a, metrics_a, weights_a), (loss_b, metrics_b, weights_b) = runs.values()
    assert loss_a == loss_b == pytest.approx(LN2, abs=1e-7)
    assert metrics_a == metrics_b
    assert any(w.abs().max() > 1e-4 for n, w in weights_a.items() if "lora_B" in n)  # the adapter did move
    for name, value in weights_a.items():
        torch.testing.assert_close(value, weights_b[name], rtol=0, atol=1e-6)


def test_full_fine_tune_frozen_copy_starts_at_ln2(sd15, pairs, tmp_path):
    t = trainer(model=sd15, dataset=pairs, output_dir=str(tmp_path))
    assert t.reference_strategy == "frozen_copy" and t.reference.model is not t.model
    loss, _ = t.compute_loss(first_batch(t))
    assert loss.item() == pytest.approx(LN2, abs=1e-7)


def test_mapo_runs_without_a_reference_forward(sd15, pairs, tmp_path):
    mapo = trainer(MaPOConfig, model=sd15, dataset=pairs, output_dir=str(tmp_path / "mapo"), use_lora=True)
    dpo = trainer(model=sd15, dataset=pairs, output_dir=str(tmp_path / "dpo"), use_lora=True)
    assert mapo.reference_strategy == "none" and mapo.reference.model is None and not mapo.reference.needs_forward
    counts = {}
    for name, t in (("mapo", mapo), ("dpo", dpo)):
        calls = count_unet_calls(t.accelerator.unwrap_model(t.model))
        loss, metrics = t.compute_loss(first_batch(t))
        counts[name] = len(calls)
        assert torch.isfinite(loss)
        if name == "mapo":  # mean over pairs of L_w - β·logσ(T·[f(s·L_w) - f(s·L_l)]), β = 0.1
            assert loss.item() == pytest.approx(metrics["mse/chosen"] - 0.1 * metrics["mapo/ratio"], rel=1e-6)
    assert counts == {"mapo": 1, "dpo": 2}  # policy only vs policy + adapter-disabled reference


def test_dcpo_conditions_each_side_on_its_own_caption(sd15, tmp_path):
    data = write_pairs(tmp_path / "dcpo", [("a red square", "a blurry red blob"), ("a blue circle", "a grey oval")])
    t = trainer(DCPOConfig, model=sd15, dataset=data, output_dir=str(tmp_path / "out"), use_lora=True,
                random_flip=False)
    calls = count_unet_calls(t.accelerator.unwrap_model(t.model))
    batch = first_batch(t)
    t.compute_loss(batch)
    hidden = calls[0][1]["encoder_hidden_states"]  # the policy forward
    comps = t.components
    chosen = encode_prompts(comps.text_encoders, comps.tokenizers, batch["captions_chosen"]).hidden_states
    rejected = encode_prompts(comps.text_encoders, comps.tokenizers, batch["captions_rejected"]).hidden_states
    assert batch["captions_chosen"] != batch["captions_rejected"]
    torch.testing.assert_close(hidden, torch.cat([chosen, rejected]))
    torch.testing.assert_close(calls[1][1]["encoder_hidden_states"], hidden)  # the reference sees the same


def test_sdxl_time_ids_carry_each_images_true_size_and_the_shared_crop(sdxl, tmp_path):
    # chosen 32 wide x 48 high, rejected 40 x 40: resized to the chosen's 32 x 48, centre crop top = (48 - 32) / 2
    data = write_pairs(tmp_path / "sizes", ["a red square"], sizes=((32, 48), (40, 40)))
    t = trainer(model=sdxl, dataset=data, output_dir=str(tmp_path / "out"), per_device_batch_size=1,
                random_flip=False, use_lora=True)
    calls = count_unet_calls(t.accelerator.unwrap_model(t.model))
    t.compute_loss(first_batch(t))
    expected = torch.tensor([[48.0, 32, 8, 0, 32, 32], [40, 40, 8, 0, 32, 32]])
    torch.testing.assert_close(calls[0][1]["added_cond_kwargs"]["time_ids"], expected)


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_sdxl_square_resolution_time_ids_are_the_launchers_res_res_0_0_res_res(sdxl, tmp_path, cached):
    data = write_pairs(tmp_path / "sizes", ["a red square"], sizes=((32, 48), (40, 40)))
    t = trainer(model=sdxl, dataset=data, output_dir=str(tmp_path / "out"), per_device_batch_size=1,
                random_flip=False, use_lora=True, sdxl_time_ids="square_resolution",
                cache_dir=str(tmp_path / "cache") if cached else None)
    calls = count_unet_calls(t.accelerator.unwrap_model(t.model))
    t.compute_loss(first_batch(t))
    expected = torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)  # Salesforce / InPO / DCPO: (res, res, 0, 0, res, res)
    torch.testing.assert_close(calls[0][1]["added_cond_kwargs"]["time_ids"], expected)


def test_inpo_noise_is_reparametrised_per_image_with_t_shared_in_the_pair(sd15, pairs, tmp_path):
    t = trainer(InPOConfig, model=sd15, dataset=pairs, output_dir=str(tmp_path), use_lora=True, inversion_steps=3)
    batch = first_batch(t)
    latents, cond = t.likelihood.latents(batch), t.likelihood.conditioning(batch)
    noised = t.likelihood.noised(latents, cond, batch["indices"], t.global_step)
    abar = t.components.scheduler.alphas_cumprod[noised.timesteps].view(-1, 1, 1, 1)
    torch.testing.assert_close(noised.noisy_latents, abar.sqrt() * latents + (1 - abar).sqrt() * noised.noise)
    chosen_t, rejected_t = noised.timesteps.chunk(2)
    assert torch.equal(chosen_t, rejected_t)
    chosen_eps, rejected_eps = noised.noise.chunk(2)
    assert not torch.allclose(chosen_eps, rejected_eps)  # each image its own eps~ (Diffusion-DPO shares eps)
    result = t.train()
    assert math.isfinite(result["train_loss"])


def test_noise_is_keyed_by_pair_so_batch_composition_does_not_matter(sd15, pairs, tmp_path):
    t = trainer(model=sd15, dataset=pairs, output_dir=str(tmp_path), use_lora=True, caption_dropout=0.0)
    batch = first_batch(t)
    latents, cond = t.likelihood.latents(batch), t.likelihood.conditioning(batch)
    together = t.likelihood.noised(latents, cond, batch["indices"], t.global_step)
    for i, index in enumerate(batch["indices"]):
        rows = torch.tensor([i, len(batch["indices"]) + i])
        alone = t.likelihood.noised(latents[rows], cond.select(rows), [index], t.global_step)
        torch.testing.assert_close(alone.noisy_latents, together.noisy_latents[rows], rtol=0, atol=0)
        assert torch.equal(alone.noise[0], alone.noise[1])  # random source: eps shared within the pair
        assert torch.equal(alone.timesteps[0], alone.timesteps[1])
