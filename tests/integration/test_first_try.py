"""A new user's first try (issue 21): the documented tiny SDXL run works on a CPU as docs/diffusion.md writes it, and
every documented command's failure modes (offline hub id, missing path, missing column or caption file) end in one
line on stderr with exit code 2, checked in a subprocess with ``HF_HUB_OFFLINE=1`` so the line count is real."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import AutoencoderKL, StableDiffusionXLPipeline

from tests.helpers.diffusion import write_pairs
from visalign.cli import main as cli_main
from visalign.config_io import ConfigError
from visalign.evaluation.validation import ValidationSettings, build_pipeline, render_validation_images
from visalign.models.builtin import resolve_model
from visalign.models.diffusion import load_diffusion_components
from visalign.testing.diffusion import save_tiny_sd

DOCS = Path(__file__).resolve().parents[2] / "docs" / "diffusion.md"
SHAPES_CAPTIONS = ["a large red circle on a white background", "a small blue square on a black background"]


def documented_cpu_command() -> list[str]:
    """The arguments of the ``visalign train`` block under docs/diffusion.md's "Try it on a CPU first"."""
    section = DOCS.read_text().split("### Try it on a CPU first", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    tokens = shlex.split(block.replace("\\\n", " "))
    assert tokens[:2] == ["visalign", "train"], tokens
    return tokens[1:]


def test_documented_cpu_sdxl_run_trains_and_its_lora_loads(tmp_path, monkeypatch, caplog):
    """The recipe's fp16 and fp16-fix VAE meet a CPU and a built-in model: one line each, then a complete folder."""
    write_pairs(tmp_path / "pairs", SHAPES_CAPTIONS)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert cli_main.main(documented_cpu_command()) == 0
    said = caplog.text
    assert "training on the CPU in fp32" in said and "ignoring vae=madebyollin/sdxl-vae-fp16-fix" in said
    out = tmp_path / "outputs" / "tiny-sdxl-dpo"
    ran = yaml.safe_load((out / "config.yaml").read_text())
    assert ran["mixed_precision"] == "no" and ran["vae"] is None  # the config records what ran
    assert (out / "README.md").is_file() and list((out / "validation").glob("final-*.png"))
    pipe = StableDiffusionXLPipeline.from_pretrained(resolve_model("builtin:shapes-sdxl"))
    pipe.load_lora_weights(str(out))
    assert pipe.get_list_adapters()["unet"]


def test_validation_decodes_in_the_vae_dtype():
    """bf16 text encoders and UNet give bf16 latents; the kept-fp32 VAE decodes them (diffusers' pipeline did not)."""
    components = load_diffusion_components("builtin:shapes-sdxl", unet_dtype=torch.bfloat16,
                                           weight_dtype=torch.bfloat16)
    assert components.vae.dtype == torch.float32
    pipeline = build_pipeline(components, components.unet)
    pipeline.set_progress_bar_config(disable=True)
    settings = ValidationSettings((SHAPES_CAPTIONS[0],), num_inference_steps=2, resolution=32)
    (image,) = render_validation_images(pipeline, settings, components.family)
    assert image.size == (32, 32)


def test_a_vae_must_fit_the_unet(tmp_path):
    model = save_tiny_sd(tmp_path / "sd")
    AutoencoderKL(latent_channels=8, block_out_channels=(8,), norm_num_groups=8).save_pretrained(tmp_path / "vae")
    with pytest.raises(ConfigError, match=r"vae '.*vae' does not fit .*8-channel latents, the UNet takes 4; pass "
                                          r"--vae none"):
        load_diffusion_components(model, vae=tmp_path / "vae")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("first-try")
    write_pairs(root / "pairs", SHAPES_CAPTIONS)
    write_pairs(root / "uncaptioned", SHAPES_CAPTIONS)
    (root / "uncaptioned" / "captions.jsonl").unlink()
    (root / "pairs.jsonl").write_text(json.dumps({"image": "pairs/chosen/p0.png", "text": "a cat"}) + "\n")
    return root


TRAIN = "train --config sdxl-dpo-lora --max_steps 1"
FAILURES = {  # command -> what its one line must say
    f"{TRAIN} --dataset ./pairs": r"model 'stabilityai/stable-diffusion-xl-base-1.0' is not in the Hugging Face "
                                  r"cache and HF_HUB_OFFLINE is set: download it first",
    f"{TRAIN} --model ./no-such-model --dataset ./pairs": r"model './no-such-model': no such file or folder",
    f"{TRAIN} --model builtin:shapes-sdxl --dataset ./pairs.jsonl": r"pairs.jsonl: missing column\(s\) \['caption', "
                                                                    r"'chosen', 'rejected'\]",
    f"{TRAIN} --model builtin:shapes-sdxl --dataset ./uncaptioned": r"uncaptioned: 2 pair\(s\) have no caption",
    "score --scorer pickscore --images pairs/chosen --prompt cat": r"scorer model 'yuvalkirstain/PickScore_v1' is not "
                                                                    r"in the Hugging Face cache",
    "score --scorer pickscore --model ./no-such-weights --images pairs/chosen --prompt cat":
        r"scorer model './no-such-weights': no such file or folder",
}


@pytest.fixture(scope="module")
def failures(workspace) -> dict[str, subprocess.CompletedProcess]:
    """Every command of :data:`FAILURES` run as a user would (``python -m visalign``), started together."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = {command: subprocess.Popen([sys.executable, "-m", "visalign", *shlex.split(command)], cwd=workspace,
                                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for command in FAILURES}
    finished = {command: process.communicate(timeout=300) for command, process in started.items()}
    return {command: subprocess.CompletedProcess(started[command].args, started[command].returncode, *streams)
            for command, streams in finished.items()}


@pytest.mark.parametrize("command", list(FAILURES))
def test_documented_failures_are_one_line_and_exit_2(command, failures):
    done = failures[command]
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert re.search(r"^visalign \w+: error: .*" + FAILURES[command], lines[0]), lines[0]
