"""SPO (``method: spo``) on the shipped shapes model: step-wise pairs drawn in rounds from the policy, trained with
the clipped-ratio loss on the transition likelihood; the CLI run ends with the quickstart's held-out evaluation."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.helpers.runs import Killed, assert_same_weights, killed_after, metric_lines, trainable_weights
from visalign.cli.train import main as train_main
from visalign.evaluation.report import REPORT_JSON
from visalign.models.diffusion_io import LORA_WEIGHT_NAME
from visalign.trainers.spo import ROUND_FILE, SPOConfig, SPOTrainer

pytestmark = pytest.mark.slow


def _config(out, **overrides) -> SPOConfig:
    values = dict(model="builtin:shapes-sd", output_dir=str(out), num_prompts=8, prompts_per_round=4, sample_steps=4,
                  divert_start_step=1, num_candidates=4, spo_threshold=0.0, resample_every=2, max_steps=4,
                  per_device_batch_size=2, learning_rate=0.05, lr_scheduler="constant", logging_steps=1,
                  save_steps=1, report_to="none", resolution=32)
    return SPOConfig(**{**values, **overrides})


def test_spo_trains_on_rounds_of_stepwise_pairs_drawn_from_the_policy(tmp_path):
    """(Resume across rounds, final folder and metrics names: the trainer contract's ``TestSPOTrainer``.)"""
    whole = SPOTrainer(_config(tmp_path / "whole"))
    before = trainable_weights(whole)
    whole.train()
    logged = metric_lines(tmp_path / "whole" / "metrics.jsonl")
    assert [m["data/round"] for m in logged][:2] == [0, 0] and logged[-1]["data/round"] >= 1
    assert all(m["data/round_examples"] % 2 == 0 for m in logged)  # whole global batches of 2
    assert abs(logged[0]["loss"] - 0.6931) < 1e-3  # the reference is the base: log-ratios 0 at step 1
    assert any(not torch.equal(value, before[name]) for name, value in trainable_weights(whole).items())
    assert (tmp_path / "whole" / "checkpoints" / "checkpoint-3" / ROUND_FILE).is_file()


def test_mspo_rounds_keep_each_sides_parent_and_a_killed_run_resumes_to_the_same_weights(tmp_path):
    whole = SPOTrainer(_config(tmp_path / "whole", inner_steps=1))
    whole.train()
    round_file = tmp_path / "whole" / "checkpoints" / "checkpoint-1" / ROUND_FILE
    from safetensors.torch import load_file

    rows = load_file(round_file)
    assert rows["rejected_parents"].shape == rows["parents"].shape  # MSPO: the inner steps' parents differ
    assert not torch.equal(rows["rejected_parents"], rows["parents"])
    run = tmp_path / "killed"
    with pytest.raises(Killed):
        killed_after(SPOTrainer, 3)(_config(run, inner_steps=1)).train()  # mid-round 1
    resumed = SPOTrainer(_config(run, inner_steps=1, resume_from="latest"))
    resumed.train()
    assert_same_weights(resumed, whole)


def test_spo_config_checks_its_keys_before_any_model_loads():
    with pytest.raises(ValueError, match="loss 'mapo' is defined on the diffusion likelihood only, not on transition"):
        SPOConfig(model="m", loss_type="mapo")
    for key, value, expected in (("resample_every", 0, ">= 1"), ("divert_start_step", 10, "in \\[0, sample_steps"),
                                 ("sample_eta", 0.0, "> 0"), ("num_candidates", 1, ">= 2")):
        with pytest.raises(ValueError, match=f"SPOConfig.{key} must be {expected}"):
            SPOConfig(model="m", **{key: value})
    assert SPOConfig(model="m", loss_type="sigmoid").loss_types == ["sigmoid"]  # D3PO's unclipped loss runs too


def test_visalign_train_spo_shapes_ends_with_the_held_out_evaluation(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--config", "spo-shapes", "--num_prompts", "8", "--prompts_per_round", "4", "--sample_steps", "4",
            "--divert_start_step", "1", "--spo_threshold", "0.0", "--max_steps", "2", "--per_device_batch_size", "2",
            "--num_eval_prompts", "2", "--eval_seeds", "2", "--bootstrap_resamples", "100", "--output_dir", str(out)]
    assert train_main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "eval" / REPORT_JSON).read_text())
    assert report["num_prompts"] == 2 and report["models"]["a"]["lora"] == str(out)
    assert (out / LORA_WEIGHT_NAME).is_file() and (out / "eval" / "report.html").is_file()
    assert "step-wise pairs kept of" in printed and "shapes reward before -> after" in printed


@pytest.mark.parametrize("recipe, model", [("spo-sd15", "builtin:shapes-sd"), ("spo-sdxl", "builtin:shapes-sdxl")])
def test_paper_recipes_run_two_steps_on_the_shapes_models(recipe, model, tmp_path, capsys):
    """The paper recipes' SPO settings flow into the run; model (the shipped shapes model of the same family), scorers
    (PickScore cannot load offline), sizes and precision are overridden for a CPU."""
    from visalign.cli.recipes import recipe_file
    from visalign.config_io import read_yaml_mapping

    with recipe_file(recipe) as path:
        settings = read_yaml_mapping(path)
    out = tmp_path / "run"
    argv = ["--config", recipe, "--model", model, "--vae", "none", "--prompts", "builtin:shapes-prompts",
            "--num_prompts", "8", "--prompts_per_round", "4", "--sample_steps", "4", "--divert_start_step", "1",
            "--spo_threshold", "0.0",
            "--scorer", "shapes", "--scorer_model", "none", "--step_scorer", "shapes", "--step_scorer_model", "none",
            "--max_steps", "2", "--per_device_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--resolution", "32", "--mixed_precision", "no", "--sample_dtype", "float32", "--report_to", "none",
            "--num_eval_prompts", "2", "--eval_seeds", "1", "--bootstrap_resamples", "50", "--output_dir", str(out)]
    assert train_main(argv) == 0
    capsys.readouterr()
    resolved = read_yaml_mapping(out / "config.yaml")
    for key in ("loss_type", "beta", "spo_ratio_clip", "num_candidates", "inner_steps", "sample_eta",
                "sample_guidance", "lora_r", "learning_rate", "weight_decay"):
        assert resolved[key] == settings[key], key
    assert (out / LORA_WEIGHT_NAME).is_file() and (out / "eval" / REPORT_JSON).is_file()


def test_a_pinned_evaluation_sampler_is_used_and_recorded(tmp_path):
    """SPO's recipes pin DDIM for the evaluation (RockeyCoss/SPO#12): the pipeline's own scheduler is swapped for the
    images and restored after, and the manifest records it."""
    from visalign.evaluation.generate import GenerationSettings, generate_images, load_pipeline, read_manifest

    pipeline = load_pipeline("builtin:shapes-sd")  # its own sampler is DDIM (which Euler equals at first order)
    own = type(pipeline.scheduler)
    settings = GenerationSettings(num_inference_steps=3, guidance_scale=3.0, height=32, width=32)
    plain = generate_images(pipeline, ["a red square"], tmp_path / "plain", settings=settings, progress=False)
    other = generate_images(pipeline, ["a red square"], tmp_path / "dpm", progress=False,
                            settings=dataclasses.replace(settings, scheduler="dpmsolver"))
    assert type(pipeline.scheduler) is own
    assert read_manifest(tmp_path / "dpm")[other[0].path].settings["scheduler"] == "dpmsolver"
    assert (tmp_path / "plain" / plain[0].path).read_bytes() != (tmp_path / "dpm" / other[0].path).read_bytes()
    with pytest.raises(ValueError, match="SPOConfig: GenerationSettings.scheduler must be one of ddim, euler"):
        SPOConfig(model="m", sample_scheduler="pndm")
