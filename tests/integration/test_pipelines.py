"""pipelines/generate_pairs.py and pipelines/evaluate.py run in-process on a tiny SD pipeline and a tiny PickScore."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig

from visalign.data.diffusion import load_preference_pairs
from visalign.evaluation.pairs import select_pairs
from visalign.models.diffusion import SD
from visalign.models.diffusion_io import save_diffusion_lora
from visalign.testing.clip import save_tiny_clip
from visalign.testing.diffusion import save_tiny_sd

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a small red square"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"pipelines_{name}", PIPELINES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate_pairs = load_script("generate_pairs")
evaluate = load_script("evaluate")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    base = save_tiny_sd(root / "sd")
    pipe = DiffusionPipeline.from_pretrained(base)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    save_diffusion_lora(root / "lora", pipe.unet, SD)
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return {"base": str(base), "lora": str(root / "lora"), "prompts": str(root / "prompts.txt"),
            "pickscore": str(save_tiny_clip(root / "pickscore", image_size=32, patch_size=8))}


def test_select_pairs_by_hand():
    scores = np.array([[0.1, 0.9, 0.5],   # best 1, worst 0, gap 0.8
                       [2.0, 2.0, 2.0],   # a tie: never a pair
                       [0.3, 0.2, 0.6]])  # best 2, worst 1, gap 0.4
    assert select_pairs(scores) == ([(0, 1, 0), (2, 2, 1)], 1)
    assert select_pairs(scores, min_gap=0.5) == ([(0, 1, 0)], 2)
    assert select_pairs(scores, higher_is_better=False) == ([(0, 0, 1), (2, 1, 2)], 1)
    with pytest.raises(ValueError, match=r"samples >= 2"):
        select_pairs(scores[:, :1])


def test_generate_pairs_writes_a_paired_folder_the_data_module_reads(models, tmp_path, capsys):
    out = tmp_path / "pairs"
    argv = ["--model", models["base"], "--prompts", models["prompts"], "--scorer", "pickscore",
            "--scorer-model", models["pickscore"], "--samples-per-prompt", "3", "--steps", "2", "--out", str(out),
            "--no-progress"]
    assert generate_pairs.main(argv) == 0
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and sorted(p.name for p in (out / "chosen").iterdir()) == [r["file_name"] for r in rows]
    candidates = [json.loads(line) for line in (out / "candidates" / "manifest.jsonl").read_text().splitlines()]
    assert len(candidates) == 12
    for row in rows:
        assert row["score_chosen"] > row["score_rejected"] and row["seed_chosen"] != row["seed_rejected"]
        chosen = next(c for c in candidates if c["seed"] == row["seed_chosen"])
        assert chosen["prompt"] == row["caption"]
        assert (out / "chosen" / row["file_name"]).read_bytes() == (out / "candidates" / chosen["path"]).read_bytes()
    pairs = load_preference_pairs(str(out))
    assert len(pairs) == 4 and pairs.captions_chosen == PROMPTS

    # a gap threshold between the observed gaps keeps exactly the wider pairs and reports the rest
    gaps = sorted(r["score_chosen"] - r["score_rejected"] for r in rows)
    threshold = (gaps[1] + gaps[2]) / 2
    capsys.readouterr()
    assert generate_pairs.main(argv + ["--min-gap", str(threshold)]) == 0
    printed = capsys.readouterr().out
    assert "2 pairs from 4 prompts" in printed and "2 prompt(s) skipped" in printed
    summary = json.loads((out / "pairs_summary.json").read_text())
    assert (summary["pairs"], summary["skipped_small_gap"], summary["num_prompts"]) == (2, 2, 4)
    assert summary["provenance"]["pickscore"]["model_id"] == models["pickscore"]
    assert len(list((out / "chosen").iterdir())) == 2 and len(load_preference_pairs(str(out))) == 2
    assert len((out / "candidates" / "manifest.jsonl").read_text().splitlines()) == 12  # candidates were reused


def test_generate_pairs_rejects_one_sample_per_prompt(models, tmp_path, capsys):
    argv = ["--model", models["base"], "--prompts", models["prompts"], "--scorer", "pickscore",
            "--samples-per-prompt", "1", "--out", str(tmp_path / "pairs")]
    assert generate_pairs.main(argv) == 2
    assert "samples_per_prompt must be >= 2" in capsys.readouterr().err


def test_evaluate_compares_a_lora_checkpoint_with_its_base(models, tmp_path):
    out = tmp_path / "eval"
    assert evaluate.main(["--base", models["base"], "--checkpoint-a", models["lora"], "--prompts", models["prompts"],
                          "--scorer", f"pickscore={models['pickscore']}", "--steps", "2",
                          "--bootstrap-resamples", "200", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["models"]["a"] == {**report["models"]["a"], "model": models["base"], "lora": models["lora"]}
    assert report["models"]["b"]["model"] == models["base"] and report["models"]["b"]["lora"] is None
    assert report["scorers"]["pickscore"]["num_prompts"] == 4


@pytest.mark.parametrize("script", [generate_pairs, evaluate])
def test_scripts_have_a_usage_block_and_help(script, capsys):
    assert "Usage:" in script.__doc__
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0 and "Usage:" in capsys.readouterr().out


def test_all_pairing_takes_every_ordered_pair_above_the_gap():
    scores = np.array([[0.1, 0.5, 0.3], [0.2, 0.2, 0.2]])
    assert select_pairs(scores, pairing="all") == ([(0, 1, 0), (0, 1, 2), (0, 2, 0)], 1)
    assert select_pairs(scores, pairing="all", min_gap=0.25) == ([(0, 1, 0)], 1)
    with pytest.raises(ValueError, match="pairing must be one of"):
        select_pairs(scores, pairing="random")
