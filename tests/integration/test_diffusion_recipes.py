"""Every shipped diffusion recipe loads through `visalign train` and runs 2 steps in-process on tiny components of its
model family (SD1.5, SD2.x v-prediction, SDXL); model, data, steps, resolution and precision come from the command
line, everything else (loss, β, reference, optimizer, noise source, checkpointing, validation) from the recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from visalign.cli.recipes import recipe_file
from visalign.cli.train import main
from visalign.config_io import read_yaml_mapping
from visalign.testing.diffusion import save_tiny_sd, save_tiny_sdxl

RECIPES = {  # recipe -> (tiny model kind, method, LoRA output?)
    "sd15-dpo": ("sd15", "diffusion-dpo", False),
    "sdxl-dpo": ("sdxl", "diffusion-dpo", False),
    "sdxl-dpo-lora": ("sdxl", "diffusion-dpo", True),
    "sdxl-mapo": ("sdxl", "mapo", False),
    "sd21-dcpo": ("sd2", "dcpo", False),
    "sdxl-inpo": ("sdxl", "inpo", False),
    "sd15-inpo": ("sd15", "inpo", False),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"sd15": save_tiny_sd(root / "sd15"), "sd2": save_tiny_sd(root / "sd2", variant="sd2"),
            "sdxl": save_tiny_sdxl(root / "sdxl")}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A paired folder of 4 random 36x40 PNG pairs with per-side captions (used by DCPO; one caption otherwise)."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        for side in ("chosen", "rejected"):
            (root / side).mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(root / side / f"p{i}.png")
        rows.append(json.dumps({"file_name": f"p{i}.png", "caption_chosen": f"a red square {i}",
                                "caption_rejected": f"a dull red blob {i}"}))
    (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return root


def test_every_diffusion_recipe_is_covered():
    from visalign.cli.recipes import recipe_names

    diffusion = {name for name in recipe_names()
                 if read_yaml_mapping(recipe_path(name)).get("method") in {"diffusion-dpo", "mapo", "dcpo", "inpo"}}
    assert diffusion == set(RECIPES)


def recipe_path(name):
    with recipe_file(name) as path:
        return path


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_runs_two_steps_on_tiny_components(recipe, models, pairs, tmp_path):
    kind, method, lora = RECIPES[recipe]
    with recipe_file(recipe) as path:
        text = path.read_text()
        settings = read_yaml_mapping(path)
    assert text.startswith("# description: ") and settings["method"] == method
    out = tmp_path / "run"
    argv = ["--config", recipe, "--model", str(models[kind]), "--dataset", str(pairs), "--output_dir", str(out),
            "--max_steps", "2", "--per_device_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--resolution", "32", "--mixed_precision", "no", "--vae", "none", "--report_to", "none",
            "--save_steps", "1", "--logging_steps", "1", "--validation_inference_steps", "2"]
    assert main(argv) == 0
    resolved = read_yaml_mapping(out / "config.yaml")
    for key in ("method", "loss_type", "beta", "optimizer", "noise_source", "gradient_checkpointing", "use_lora"):
        if key in settings:
            assert resolved[key] == settings[key], key  # the recipe's paper settings were used
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2]
    assert all(np.isfinite(line["loss"]) for line in lines if "loss" in line)
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    weights = out / ("pytorch_lora_weights.safetensors" if lora else "unet/diffusion_pytorch_model.safetensors")
    assert weights.is_file() and (out / "README.md").is_file()
    if settings.get("validation_prompts"):
        assert (out / "validation" / "final-step-000002.png").is_file()
    if method == "mapo":
        assert resolved["reference"] == "none" and "ref_mse/chosen" not in lines[0]
