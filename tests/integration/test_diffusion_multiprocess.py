"""Two CPU processes (gloo) train the same weights as one process with the same global batch: the noise of every pair
is keyed by (seed, step, pair index), not by the process.

Launch: `accelerate launch --cpu --num_processes 2` starts ONE process (its CPU path expects mpirun), so the test uses
accelerate's torchrun launcher (`--multi_gpu`) with `ACCELERATE_USE_CPU=true`, which makes accelerate pick
MULTI_CPU with the gloo backend."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import numpy as np
import pytest
import torch
import yaml
from diffusers import UNet2DConditionModel
from PIL import Image

from visalign.cli.train import main
from visalign.testing.diffusion import save_tiny_sd

# Adam's first steps are ~lr·sign(g): float noise in near-zero gradients (which DDP's all-reduce order changes) would
# flip whole steps. A large epsilon makes the update lr·g/(|g|+eps) smooth in g (≈ SGD with lr/eps), so the two runs
# agree to float precision when, and only when, their gradients agree.
SETTINGS = dict(method="diffusion-dpo", max_steps=3, gradient_accumulation_steps=1, learning_rate=0.05,
                adam_epsilon=10.0, lr_scheduler="constant", save_steps=0, logging_steps=1, caption_dropout=0.5,
                report_to="none")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_pairs(root, n=4):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        for side in ("chosen", "rejected"):
            (root / side).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(root / side / f"p{i}.png")
        rows.append(json.dumps({"file_name": f"p{i}.png", "caption": f"a red square number {i}"}))
    (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return root


def launch_two(recipe, output_dir, launch_flags, cwd, *, cpu=True) -> subprocess.CompletedProcess:
    """`accelerate launch <launch_flags>` of `visalign train` on 2 processes, per-device batch 1."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    command = ["accelerate", "launch", *launch_flags, "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", "visalign", "train", "--config", str(recipe), "--output_dir", str(output_dir),
               "--per_device_batch_size", "1"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=cwd)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="needs the accelerate launcher")
def test_two_processes_train_the_same_weights_as_one_with_the_same_global_batch(tmp_path):
    model, data = save_tiny_sd(tmp_path / "sd15"), write_pairs(tmp_path / "pairs")
    recipe = tmp_path / "run.yaml"
    recipe.write_text(yaml.safe_dump({**SETTINGS, "model": str(model), "dataset": str(data)}))

    single = tmp_path / "one"
    assert main(["--config", str(recipe), "--output_dir", str(single), "--per_device_batch_size", "2"]) == 0

    double = tmp_path / "two"
    done = launch_two(recipe, double, ["--multi_gpu"], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]

    losses = [[json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
              for out in (single, double)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-3)  # β = 5000 scales float noise in the MSEs
    start = UNet2DConditionModel.from_pretrained(model, subfolder="unet").state_dict()
    one, two = (UNet2DConditionModel.from_pretrained(out, subfolder="unet").state_dict() for out in (single, double))
    assert max((one[k] - start[k]).abs().max().item() for k in one) > 1e-4  # training moved the weights
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=0, atol=1e-6)


FSDP = ["--use_fsdp", "--fsdp_version", "2"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="needs the accelerate launcher")
@pytest.mark.parametrize("launch_flags, cpu, message", [
    (FSDP, True, "asked for FSDP (ACCELERATE_USE_FSDP=true) but accelerate set up MULTI_CPU"),
    (FSDP, False, "asked for FSDP (ACCELERATE_USE_FSDP=true) but accelerate set up NO"),
    (["--multi_gpu"], False, "2 processes were launched (WORLD_SIZE) but accelerate set up NO with 1 process"),
], ids=["fsdp-cpu-ddp", "fsdp-alone", "ddp-alone"])
def test_a_launch_accelerate_does_not_build_on_cpus_fails_before_training(tmp_path, launch_flags, cpu, message):
    """accelerate builds FSDP only on GPUs, and without ACCELERATE_USE_CPU it builds nothing distributed on CPUs: the
    launch would silently train DDP, or two independent runs into one folder. The run stops before any model loads,
    saying what accelerate built (docs/diffusion.md, "Many GPUs")."""
    model, data = save_tiny_sd(tmp_path / "sd15"), write_pairs(tmp_path / "pairs")
    recipe = tmp_path / "run.yaml"
    recipe.write_text(yaml.safe_dump({**SETTINGS, "model": str(model), "dataset": str(data)}))
    done = launch_two(recipe, tmp_path / "out", launch_flags, tmp_path, cpu=cpu)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr[-4000:]
    assert not (tmp_path / "out" / "unet").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="needs the accelerate launcher")
def test_spo_on_two_processes_trains_the_same_lora_as_one_with_the_same_global_batch(tmp_path):
    """SPO's rounds are drawn by the main process and sent to the others, cut to whole global batches: 2 processes
    train on exactly the batches 1 process does, and only the main process evaluates."""
    from safetensors.torch import load_file

    from visalign.models.diffusion_io import LORA_WEIGHT_NAME

    recipe = tmp_path / "spo.yaml"
    recipe.write_text(yaml.safe_dump({
        "method": "spo", "model": "builtin:shapes-sd", "resolution": 32, "num_prompts": 12, "prompts_per_round": 6,
        "sample_steps": 4, "divert_start_step": 1, "num_candidates": 4, "spo_threshold": 0.0, "resample_every": 2,
        "max_steps": 4, "gradient_accumulation_steps": 1, "learning_rate": 0.05, "adam_epsilon": 10.0,
        "lr_scheduler": "constant", "save_steps": 0, "logging_steps": 1, "report_to": "none",
        "num_eval_prompts": 2, "eval_seeds": 1, "bootstrap_resamples": 50}))
    single = tmp_path / "one"
    assert main(["--config", str(recipe), "--output_dir", str(single), "--per_device_batch_size", "2"]) == 0
    double = tmp_path / "two"
    done = launch_two(recipe, double, ["--multi_gpu"], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [[json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] for out in (single, double)]
    assert [m["data/round_examples"] for m in lines[1]] == [m["data/round_examples"] for m in lines[0]]
    np.testing.assert_allclose([m["loss"] for m in lines[1]], [m["loss"] for m in lines[0]], rtol=1e-4)
    one, two = (load_file(out / LORA_WEIGHT_NAME) for out in (single, double))
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=0, atol=1e-6)
    assert (double / "eval" / "report.json").is_file()
