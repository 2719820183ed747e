"""On-policy Diffusion-DPO on its online source (``resample_every``) on the shipped shapes model: later rounds are
drawn from the trained LoRA, and a run killed while drawing a round, or mid-round, resumes bit-identically."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers.runs import Killed, assert_same_weights, killed_after, metric_lines
from visalign.trainers import onpolicy
from visalign.trainers.onpolicy import OnPolicyConfig, OnPolicyTrainer

pytestmark = pytest.mark.slow


def _config(out, **overrides) -> OnPolicyConfig:
    values = dict(model="builtin:shapes-sd", output_dir=str(out), num_prompts=3, samples_per_prompt=2, sample_steps=2,
                  pairing="all", min_gap=0.0, resample_every=2, max_steps=4, per_device_batch_size=2,
                  learning_rate=0.05, lr_scheduler="constant", logging_steps=1, save_steps=1, report_to="none",
                  resolution=32)
    return OnPolicyConfig(**{**values, **overrides})


def test_rounds_come_from_the_trained_lora_and_resume_bit_identically(tmp_path, monkeypatch):
    whole = OnPolicyTrainer(_config(tmp_path / "whole"))
    whole.train()
    rounds = tmp_path / "whole" / "pairs"
    assert sorted(p.name for p in rounds.iterdir()) == ["round-0000", "round-0001"]
    summaries = [json.loads((rounds / f"round-000{r}" / "pairs_summary.json").read_text()) for r in (0, 1)]
    assert summaries[0]["lora"] is None and summaries[1]["lora"] == "policy at step 2"
    logged = metric_lines(tmp_path / "whole" / "metrics.jsonl")
    assert [m["data/round"] for m in logged] == [0, 0, 1, 1]

    # round 1 is the trained policy's: the base model with round 1's seeds draws other images
    config = _config(tmp_path / "base")
    onpolicy.sample_pairs(config, "cpu", out=tmp_path / "base" / "round-1", seed=config.seed + 1)
    candidates = sorted((rounds / "round-0001" / "candidates").glob("*.png"))
    base = [tmp_path / "base" / "round-1" / "candidates" / path.name for path in candidates]
    assert candidates and any(a.read_bytes() != b.read_bytes() for a, b in zip(candidates, base))
    assert (rounds / "round-0000" / "captions.jsonl").read_text() != (rounds / "round-0001" / "captions.jsonl"
                                                                       ).read_text()

    # killed while drawing round 1 (after checkpoint 2): its half-written folder is never picked up
    real_sample_pairs = onpolicy.sample_pairs

    def dies_in_round_1(config, device, *, out=None, **kwargs):
        summary = real_sample_pairs(config, device, out=out, **kwargs)
        if out.name == "round-0001.tmp":
            shutil.rmtree(out / "chosen")  # half written
            raise Killed
        return summary

    run = tmp_path / "run"
    monkeypatch.setattr(onpolicy, "sample_pairs", dies_in_round_1)
    with pytest.raises(Killed):
        OnPolicyTrainer(_config(run)).train()
    monkeypatch.setattr(onpolicy, "sample_pairs", real_sample_pairs)
    assert (run / "pairs" / "round-0001.tmp").is_dir() and not (run / "pairs" / "round-0001").exists()

    killed = killed_after(OnPolicyTrainer, 3)(_config(run, resume_from="latest"))  # then mid-round 1, after 3
    with pytest.raises(Killed):
        killed.train()
    assert killed.resumed_from.name == "checkpoint-2"
    resumed = OnPolicyTrainer(_config(run, resume_from="latest"))
    resumed.train()
    assert resumed.resumed_from.name == "checkpoint-3"

    assert_same_weights(resumed, whole)
    assert metric_lines(run / "metrics.jsonl") == logged
    for r in (0, 1):
        for name in ("captions.jsonl", "pairs_summary.json"):
            assert (run / "pairs" / f"round-000{r}" / name).read_text() == (rounds / f"round-000{r}" / name).read_text()
