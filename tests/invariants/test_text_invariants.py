"""Invariants of the text trainer that hold for any correct implementation (DESIGN.md "Tests", reference §C.11).

- at step 0 the policy equals its reference, so every log-ratio is 0: IPO is (1/(2β))² (the sigmoid's ln 2 and
  batch 4 == batch 1 x grad-accum 4 are the trainer contract's: ``tests/contract/test_trainer_contract.py``);
- with a fresh LoRA (B = 0) the frozen-copy and adapter-disabled references are the same model;
- a precomputed reference gives the same losses as the live one.
"""

from __future__ import annotations

import math

import pytest
import torch

from visalign.testing.text_data import synthetic_preferences
from visalign.trainers.text import DPOConfig, DPOTrainer

MODEL = "builtin:tiny-llama"


def _trainer(tmp_path, data, **overrides) -> DPOTrainer:
    values = dict(model=MODEL, output_dir=str(tmp_path / "run"), per_device_batch_size=4, learning_rate=1e-2,
                  lr_scheduler="constant", max_length=64, save_steps=0, logging_steps=1)
    return DPOTrainer(args=DPOConfig(**{**values, **overrides}), train_dataset=data, eval_dataset=data)


def _params(trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def pairs():
    return synthetic_preferences("train").select(range(8))


@pytest.mark.parametrize("beta", [0.1, 0.25])
def test_step_zero_ipo_is_inverse_two_beta_squared(tmp_path, pairs, beta):
    metrics = _trainer(tmp_path, pairs, loss_type="ipo", beta=beta).evaluate()
    assert metrics["eval_loss"] == pytest.approx((1.0 / (2.0 * beta)) ** 2, rel=1e-6)


def test_frozen_copy_equals_disable_adapter_for_a_fresh_lora(tmp_path, pairs):
    lora = dict(use_lora=True, lora_r=4, lora_alpha=8, max_steps=1)
    copied = _trainer(tmp_path / "copy", pairs, reference="frozen_copy", **lora)
    disabled = _trainer(tmp_path / "disable", pairs, reference="disable_adapter", **lora)
    at_start_copy, at_start_disabled = copied.evaluate(), disabled.evaluate()
    assert at_start_copy == pytest.approx(at_start_disabled, abs=1e-7)
    assert at_start_copy["eval_loss"] == pytest.approx(math.log(2.0), abs=1e-6)
    copied.train()
    disabled.train()
    a, b = _params(copied), _params(disabled)
    assert a.keys() == b.keys() and all("lora_" in n for n in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-7, rtol=0, msg=name)


def test_precomputed_reference_equals_live_reference(tmp_path, pairs):
    live = _trainer(tmp_path / "live", pairs, reference="frozen_copy", max_steps=2)
    cached = _trainer(tmp_path / "cached", pairs, reference="precomputed", max_steps=2)
    assert cached.reference.model is None and not cached.reference.needs_forward  # no reference model in memory
    assert "ref_chosen_logps" in cached.train_dataset.column_names
    live_result, cached_result = live.train(), cached.train()
    for key in ("train_loss", "eval_loss", "eval_rewards/margins", "eval_rewards/chosen"):
        assert cached_result[key] == pytest.approx(live_result[key], abs=1e-5), key
