"""`visalign train` with no config runs the shapes quickstart (rendered pairs, training, before/after evaluation);
`--config onpolicy` the same loop on pairs sampled from the model."""

from __future__ import annotations

import json

import pytest
import torch

from visalign.cli.train import main as train_main
from visalign.evaluation.report import REPORT_JSON
from visalign.models.diffusion_io import LORA_WEIGHT_NAME
from visalign.trainers.onpolicy import OnPolicyConfig

pytestmark = pytest.mark.slow

SMALL = ["--num_prompts", "6", "--samples_per_prompt", "2", "--sample_steps", "3", "--max_steps", "2",
         "--per_device_batch_size", "2", "--num_eval_prompts", "3", "--eval_seeds", "2", "--bootstrap_resamples", "200"]


def test_default_run_is_the_shapes_quickstart(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([*SMALL, "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out

    captions = [json.loads(line) for line in (out / "pairs" / "captions.jsonl").read_text().splitlines()]
    summary = json.loads((out / "pairs" / "pairs_summary.json").read_text())
    assert summary["source"] == "rendered" and summary["near_misses"] == 1  # SMALL: 2 "samples" per prompt
    assert len(captions) == summary["pairs"] == 6 - summary["dropped_small_gap"] > 0
    assert all(row["score_chosen"] > row["score_rejected"] + 0.1 for row in captions)
    assert f"{summary['pairs']} rendered pairs (each prompt's scene vs 1 near misses" in printed
    assert not (out / "pairs" / "candidates").exists()  # nothing was sampled from the model
    assert (out / LORA_WEIGHT_NAME).is_file() and (out / "eval" / "grid.png").is_file()
    assert (out / "eval" / "report.html").is_file() and f"report: {out / 'eval' / 'report.html'}" in printed

    report = json.loads((out / "eval" / REPORT_JSON).read_text())
    section = report["scorers"]["shapes"]
    assert report["num_prompts"] == 3 and report["seeds_per_prompt"] == 2
    assert report["models"]["a"]["lora"] == str(out) and report["models"]["b"]["lora"] is None
    assert f"shapes reward before -> after: {section['mean_b']:.4f} -> {section['mean_a']:.4f}" in printed
    assert f"reward_gain: {section['mean_diff']}" in printed
    # what the reward is made of, each component's gain printed beside it
    shape = section["details"]["compared"]["shape"]
    assert set(section["details"]["compared"]) >= {"colour", "shape", "size", "position", "background", "aesthetic"}
    assert f"shape            {shape['mean_b']:.3f} -> {shape['mean_a']:.3f} ({shape['mean_diff']:+.3f}" in printed
    assert report["models"]["a"]["name"] == "after (trained LoRA)"


def test_unwritable_or_used_output_dir_fails_before_sampling(tmp_path, capsys):
    """Issue 16: an unwritable folder was found at the first write, after sampling and training."""
    (tmp_path / "file").write_text("")
    assert train_main([*SMALL, "--model", str(tmp_path / "no-model-here"), "--output_dir",
                       str(tmp_path / "file" / "run")]) == 2
    assert "is not writable" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "README.md").write_text("another run")
    assert train_main([*SMALL, "--model", str(tmp_path / "no-model-here"), "--output_dir",
                       str(tmp_path / "used")]) == 2
    assert "is not empty (holds README.md)" in capsys.readouterr().err


def test_onpolicy_config_rejects_full_fine_tuning_and_single_samples():
    with pytest.raises(ValueError, match="use_lora must be true"):
        OnPolicyConfig(model="m", use_lora=False)
    with pytest.raises(ValueError, match="samples_per_prompt must be >= 2"):
        OnPolicyConfig(model="m", samples_per_prompt=1)
    with pytest.raises(ValueError, match=r"pair_source must be one of \('policy', 'rendered'\); got 'renders'"):
        OnPolicyConfig(model="m", pair_source="renders")
    with pytest.raises(ValueError, match=r"OnPolicyConfig.sample_dtype: unknown dtype 'bf8'"):
        OnPolicyConfig(model="m", sample_dtype="bf8")
    assert OnPolicyConfig(model="m", sample_dtype="auto").sample_dtype == "auto"  # resolved on the device at load


def test_onpolicy_recipe_samples_its_pairs_from_the_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(["--config", "onpolicy", *SMALL, "--output_dir", str(out)]) == 0
    capsys.readouterr()
    captions = [json.loads(line) for line in (out / "pairs" / "captions.jsonl").read_text().splitlines()]
    summary = json.loads((out / "pairs" / "pairs_summary.json").read_text())
    assert summary["num_prompts"] == 6 and len(captions) == summary["pairs"] == 6 - summary["skipped_small_gap"]
    assert all(row["score_chosen"] > row["score_rejected"] for row in captions)
    assert len(list((out / "pairs" / "candidates").rglob("*.png"))) == 6 * 2  # 2 samples of each prompt
    assert (out / LORA_WEIGHT_NAME).is_file() and (out / "eval" / REPORT_JSON).is_file()


def test_quickstart_runs_on_the_shipped_sdxl_model(tmp_path, capsys):
    """The on-policy loop on ``builtin:shapes-sdxl``: SDXL sampling, SDXL conditioning (two encoders, time ids) in
    training, and a diffusers LoRA that ``StableDiffusionXLPipeline.load_lora_weights`` takes."""
    from diffusers import StableDiffusionXLPipeline

    from visalign.models.builtin import resolve_model

    out = tmp_path / "run"
    assert train_main(["--config", "onpolicy", *SMALL, "--model", "builtin:shapes-sdxl", "--output_dir", str(out)]) == 0
    capsys.readouterr()
    report = json.loads((out / "eval" / REPORT_JSON).read_text())
    assert report["models"]["b"]["model"] == "builtin:shapes-sdxl" and report["num_prompts"] == 3

    pipe = StableDiffusionXLPipeline.from_pretrained(resolve_model("builtin:shapes-sdxl"))
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora()
    fused = {k.replace(".base_layer", ""): v for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    assert fused.keys() == before.keys()
    changed = [k for k, v in fused.items() if not torch.equal(v, before[k])]
    assert changed and all(any(m in k for m in ("to_q", "to_k", "to_v", "to_out")) for k in changed)
