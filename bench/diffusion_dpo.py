"""Pairs/s and peak memory of visalign's diffusion trainer with its latent/text cache, against the reference recipe's
per-step work and against the bare compute, plus MaPO vs Diffusion-DPO, side by side in one run.

The model is a small SDXL-shaped pipeline built in code (``visalign.testing.diffusion.SMALL_SDXL``: SDXL's block
layout, two CLIP text encoders, text-time conditioning, a 4-block VAE so latents are image/8) with its VAE widened to
``(8, 24, 32, 32)`` so that one VAE encode costs about 0.72 UNet forwards per image, as in real SDXL at 1024²
(4.88 vs 6.76 TFLOPs; both counted here with ``torch.utils.flop_counter.FlopCounterMode``, the real one on the meta
device). It is saved with ``save_pretrained`` and every trained row loads it back with ``from_pretrained``. The data are
synthetic PNG pairs (smooth random colour fields, 1.25x the training resolution, so resize and crop run) in a
paired folder with a ``captions.jsonl``, one distinct caption per pair, exactly one epoch of pairs.

Rows (same UNet, LoRA r 8 on to_q/to_k/to_v/to_out.0 with the adapter-disabled reference, AdamW lr 1e-5 constant,
weight decay 0.01, sigmoid β 5000, no caption dropout, random flip, centre crop; the ``sdxl-dpo-lora`` recipe minus
fp16, 8-bit Adam and gradient checkpointing; ``--full`` trains the whole UNet with a frozen-copy reference):

- (a) ``DiffusionTrainer`` with ``cache_dir``: latents and text embeddings encoded once while the trainer is built
  (that one-off pass is in the note), then read from safetensors shards every step;
- (b) ``DiffusionTrainer`` without a cache: PNG decode, resize/crop, VAE encode and both text encoders every step, the
  per-step work of the official scripts (Salesforce ``train.py``, the diffusers port, MaPO), run in our loop;
- (c) the bare compute, written with plain torch/diffusers and no visalign code: the same UNet + LoRA in the same
  dtypes as (a) (with ``--precision bf16|fp16`` and LoRA, the frozen base in that dtype, the LoRA weights in fp32,
  under autocast), one batch of fixed latents and prompt embeddings already in memory, per step draw t and ε (shared
  within each pair), one policy forward over ``[chosen; rejected]``, one no-grad reference forward on the same tensors
  (adapters toggled with diffusers' ``disable_adapters()``/``enable_adapters()``), the DPO loss, backward and the same
  fused AdamW step as (a). What (a) must do and (c) leaves out, so (a)/(c) counts it as overhead: reading the batch
  from the cache, per-pair keyed noise (``visalign.trainers.diffusion`` docstring), eval mode for the reference forward
  (no effect on this UNet, whose dropout is 0, but required for models with dropout), gradient clipping, the
  non-finite check and the metrics;
- MaPO: (a) with ``MaPOConfig`` (no reference forward), compared with (a).

Timing: ``bench/_common.py``'s ``StepClock`` (wall clock from the end of the last warm-up optimizer step to the end of
the last step, so data loading, logging and per-step overhead count; set-up and the final save do not). pairs/s =
steps/s × pairs per step. Each row runs in its own fresh Python subprocess, one after another, so neither memory nor
allocator state leaks between rows.

Peak memory, the same way for every row: on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps (peak stats
reset after the warm-up). On CPU the resident-set high-water mark over the timed steps: after the warm-up the row runs
``gc.collect()`` and glibc ``malloc_trim(0)``, resets the kernel's ``VmHWM`` (``echo 5 > /proc/self/clear_refs``), and
after the last step reads ``VmHWM`` from ``/proc/self/status``; the table shows it minus the RSS the process had
after its imports, before building anything (so weights, optimizer state, caches, activations and allocator slack
count; the Python/torch runtime does not). Linux only.

Usage::

    python bench/diffusion_dpo.py                      # the full bench (~2 min on 2 idle CPU cores)
    python bench/diffusion_dpo.py --repeats 3          # 3 interleaved rounds, medians (what bench/README.md quotes)
    python bench/diffusion_dpo.py --steps 10 --warmup 2 --resolution 256 --batch-size 4 --device cpu
    python bench/diffusion_dpo.py --full               # full fine-tuning, frozen-copy reference
    python bench/diffusion_dpo.py --device cuda --precision bf16
    python bench/diffusion_dpo.py --quick              # tiny sizes, a smoke run of ~1 min
    python bench/diffusion_dpo.py --gpu --device cuda --precision bf16   # real SDXL shapes at 1024² (~3 min, H100)

``--gpu``: SDXL base 1.0's UNet and VAE architectures (``GPU_SHAPE``; the two text encoders at one width, 1024 x 24
layers, so their states concatenate to SDXL's 2048), 1024 px, 1 pair per step (2 images: a 1024² SDXL LoRA step
without gradient checkpointing holds ~15-20 GB of activations per image), random weights built on the GPU. Each GPU
row also prints its RSS beside the CUDA peak and the UNet's training FLOPs per pair counted on the meta device, read
as model FLOPs utilisation (``bench/_common.py``); MaPO's figure has no reference forward.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    MIB, Row, StepClock, TrainFlops, add_device_args, bench_result, check_device_args, flops_line, format_table,
    machine_line, rss_mib, timed_trainer_class, train_flops, weights_gib, write_json,
)

from visalign.testing.diffusion import SMALL_SDXL, TINY_SDXL, DiffusionShape, tiny_sdxl_components  # noqa: E402

#: SMALL_SDXL with the VAE widened so VAE-encode : UNet-forward FLOPs per image ≈ real SDXL's 0.72 at 1024².
BENCH_SHAPE = dataclasses.replace(SMALL_SDXL, vae_channels=(8, 24, 32, 32))
FULL = {"shape": BENCH_SHAPE, "batch_size": 4, "steps": 10, "warmup": 2}
QUICK = {"shape": TINY_SDXL, "batch_size": 2, "steps": 2, "warmup": 1}
#: SDXL base 1.0's UNet and VAE at 1024² (as ``real_sdxl_flops``); text encoders at one width (module docstring)
GPU_SHAPE = DiffusionShape(image_size=1024, unet_channels=(320, 640, 1280), unet_layers_per_block=2,
                           transformer_layers_per_block=(1, 2, 10), attention_heads=(5, 10, 20),
                           vae_channels=(128, 256, 512, 512), vae_layers_per_block=2, norm_num_groups=32,
                           text_hidden_size=1024, text_layers=24, text_heads=16, pooled_dim=1280,
                           addition_time_embed_dim=256)
GPU = {"shape": GPU_SHAPE, "batch_size": 1, "steps": 10, "warmup": 3}
CAPTION_WORDS = ["red", "blue", "green", "square", "circle", "cross", "two", "dots", "a", "on", "the", "left"]


@dataclass(frozen=True)
class RowSpec:
    """One row: ``kind`` is ``"ours"`` (``DiffusionTrainer``) or ``"bare"``; ``cached`` picks the latent/text cache."""

    key: str
    label: str
    kind: str
    method: str = "diffusion-dpo"
    cached: bool = False


ROWS = (
    RowSpec("a", "(a) visalign DPO, latent/text cache", "ours", cached=True),
    RowSpec("b", "(b) DPO, VAE + text encoders every step", "ours", cached=False),
    RowSpec("c", "(c) bare compute: policy fwd+bwd, ref fwd", "bare"),
    RowSpec("mapo", "MaPO, visalign, latent/text cache", "ours", method="mapo", cached=True),
)
BY_KEY = {r.key: r for r in ROWS}


# ------------------------------------------------------------------------------------------------- FLOPs


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def component_flops(components: dict, image_size: int) -> dict[str, float]:
    """FLOPs per image of one VAE encode, one UNet forward and one caption through both text encoders."""
    from visalign.models.diffusion import encode_prompts

    unet, vae = components["unet"], components["vae"]
    latent = image_size // 2 ** (len(vae.config.block_out_channels) - 1)
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    tokens = components["tokenizer"].model_max_length
    cond = {"encoder_hidden_states": torch.randn(1, tokens, unet.config.cross_attention_dim),
            "added_cond_kwargs": {"text_embeds": torch.randn(1, pooled), "time_ids": torch.randn(1, 6)}}
    encoders = (components["text_encoder"], components["text_encoder_2"])
    tokenizers = (components["tokenizer"], components["tokenizer_2"])
    return {
        "vae_encode": _flops(lambda: vae.encode(torch.randn(1, 3, image_size, image_size))),
        "unet_forward": _flops(lambda: unet(torch.randn(1, unet.config.in_channels, latent, latent),
                                            torch.tensor([500]), **cond)),
        "text_encode": _flops(lambda: encode_prompts(encoders, tokenizers, ["a red square on the left"])),
    }


def real_sdxl_flops() -> dict[str, float]:
    """The same counts for SDXL base 1.0's UNet and VAE architectures at 1024², built on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        cond = {"encoder_hidden_states": torch.randn(1, 77, 2048),
                "added_cond_kwargs": {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)}}
        return {"vae_encode": _flops(lambda: vae.encode(torch.randn(1, 3, 1024, 1024))),
                "unet_forward": _flops(lambda: unet(torch.randn(1, 4, 128, 128), torch.tensor([500]), **cond))}


# ------------------------------------------------------------------------------------------------- data


def write_pairs(root: Path, n: int, resolution: int, seed: int = 0) -> Path:
    """``n`` synthetic PNG pairs in a paired folder (``chosen/``, ``rejected/``, ``captions.jsonl``): smooth random
    colour fields of 1.25 × ``resolution`` (height) by 1.125 × (width), one distinct caption per pair."""
    rng = np.random.default_rng(seed)
    size = (resolution * 9 // 8, resolution * 5 // 4)  # PIL (width, height)
    for side in ("chosen", "rejected"):
        (root / side).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        for side in ("chosen", "rejected"):
            coarse = Image.fromarray(rng.integers(0, 256, (10, 9, 3), dtype=np.uint8))
            coarse.resize(size, Image.Resampling.BICUBIC).save(root / side / f"{i:05d}.png")
        caption = " ".join(rng.choice(CAPTION_WORDS, size=6)) + f" number {i}"
        lines.append(json.dumps({"file_name": f"{i:05d}.png", "caption": caption}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


# ------------------------------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory over a window (module docstring): CUDA allocator peak, or the CPU resident-set high-water mark
    minus the RSS at construction (build it right after the imports)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0.0 if device.type == "cuda" else self._status("VmRSS")

    @staticmethod
    def _status(field_name: str) -> float:
        status = Path("/proc/self/status")
        if not status.is_file():
            raise RuntimeError("CPU peak memory needs Linux /proc/self/status (VmHWM); run on Linux or with --device "
                               "cuda")
        match = re.search(rf"^{field_name}:\s+(\d+) kB", status.read_text(), re.MULTILINE)
        return int(match.group(1)) * 1024 / MIB

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / MIB
        return self._status("VmHWM") - self.baseline


# ------------------------------------------------------------------------------------------------- one row


@dataclass(frozen=True)
class Settings:
    """Everything a row subprocess needs (passed as JSON)."""

    model_dir: str
    data_dir: str
    workdir: str
    batch_size: int
    steps: int
    warmup: int
    resolution: int
    device: str
    precision: str
    full: bool

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


def run_ours(spec: RowSpec, s: Settings, memory: PeakMemory) -> dict:
    """Train ``spec`` with ``DiffusionTrainer``; steps/s and peak memory over the timed steps."""
    from visalign.trainers.diffusion import DiffusionConfig, DiffusionTrainer, MaPOConfig

    config_cls = MaPOConfig if spec.method == "mapo" else DiffusionConfig
    common = {} if spec.method == "mapo" else {"loss_type": "sigmoid", "beta": 5000.0}
    config = config_cls(
        model=s.model_dir, dataset=s.data_dir, data_schema="paired_folder",
        output_dir=str(Path(s.workdir) / f"out-{spec.key}"),
        cache_dir=str(Path(s.workdir) / f"cache-{spec.key}") if spec.cached else None,
        use_lora=not s.full, lora_r=8, lora_alpha=8.0,
        reference="none" if spec.method == "mapo" else ("frozen_copy" if s.full else "disable_adapter"),
        learning_rate=1e-5, lr_scheduler="constant", weight_decay=0.01, max_grad_norm=1.0, optimizer="adamw",
        per_device_batch_size=s.batch_size, max_steps=s.total_steps, mixed_precision=s.precision,
        resolution=s.resolution, center_crop=True, random_flip=True, caption_dropout=0.0,
        save_steps=0, logging_steps=10, seed=0, **common,
    )
    warmup = s.warmup

    class Measured(timed_trainer_class(DiffusionTrainer)):
        def _optimizer_step(self, stream):
            out = super()._optimizer_step(stream)
            if len(self.clock.ends) == warmup:
                memory.reset()
            return out

    start = time.perf_counter()
    trainer = Measured(config)
    setup_s = time.perf_counter() - start
    trainer.train()
    return {"steps_per_s": trainer.clock.steps_per_second(warmup), "peak_mib": memory.peak_mib(),
            "setup_s": setup_s}


def run_bare(s: Settings, memory: PeakMemory) -> dict:
    """The bare compute of one Diffusion-DPO step (module docstring, row (c)), plain torch and diffusers."""
    import copy

    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig

    device = torch.device(s.device)
    low_precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.precision, torch.float32)
    start = time.perf_counter()
    # as the trainer: full fine-tuning keeps fp32 master weights; LoRA puts the frozen base in the autocast dtype
    unet = UNet2DConditionModel.from_pretrained(s.model_dir, subfolder="unet",
                                                torch_dtype=torch.float32 if s.full else low_precision).to(device)
    scheduler = DDPMScheduler.from_pretrained(s.model_dir, subfolder="scheduler")
    if s.full:
        reference = copy.deepcopy(unet).requires_grad_(False).eval()
        unet.requires_grad_(True)
    else:
        reference = None
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:  # trainable weights in fp32
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, fused=True)  # as make_optimizer on cpu/cuda
    dtype = unet.dtype
    cfg = unet.config
    vae_factor = 2 ** (len(json.loads((Path(s.model_dir) / "vae" / "config.json").read_text())["block_out_channels"])
                       - 1)
    latent = s.resolution // vae_factor
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    b, g = s.batch_size, torch.Generator().manual_seed(0)
    x0 = torch.randn(2 * b, cfg.in_channels, latent, latent, generator=g).to(device)
    hidden = torch.randn(b, 77, cfg.cross_attention_dim, generator=g).repeat(2, 1, 1).to(device, dtype)
    cond = {"text_embeds": torch.randn(b, pooled, generator=g).repeat(2, 1).to(device, dtype),
            "time_ids": torch.tensor([[1.25 * s.resolution, 1.125 * s.resolution, 0, 0, s.resolution,
                                       s.resolution]]).repeat(2 * b, 1).to(device, dtype)}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16 if s.precision == "bf16" else torch.float16,
                              enabled=s.precision != "no")
    setup_s = time.perf_counter() - start
    clock = StepClock(device=device)
    for step in range(s.total_steps):
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=g).repeat(2).to(device)
        noise = torch.randn(b, *x0.shape[1:], generator=g).repeat(2, 1, 1, 1).to(device)
        x_t = scheduler.add_noise(x0, noise, t).to(dtype)
        with autocast:
            mse = (unet(x_t, t, hidden, added_cond_kwargs=cond).sample.float() - noise).pow(2).mean(dim=(1, 2, 3))
            with torch.no_grad():
                if reference is None:
                    unet.disable_adapters()
                ref_model = unet if reference is None else reference
                ref_mse = (ref_model(x_t, t, hidden, added_cond_kwargs=cond).sample.float() - noise).pow(2)
                ref_mse = ref_mse.mean(dim=(1, 2, 3))
                if reference is None:
                    unet.enable_adapters()
        (mse_c, mse_r), (ref_c, ref_r) = mse.chunk(2), ref_mse.chunk(2)
        loss = -F.logsigmoid(-0.5 * 5000.0 * ((mse_c - mse_r) - (ref_c - ref_r))).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick()
        if step + 1 == s.warmup:
            memory.reset()
    return {"steps_per_s": clock.steps_per_second(s.warmup), "peak_mib": memory.peak_mib(), "setup_s": setup_s}


def row_main(key: str, settings_json: str, result_path: str) -> None:
    """Entry point of a row subprocess: run row ``key`` and write its result as JSON."""
    import peft  # noqa: F401  everything any row imports, before the memory baseline
    import visalign.trainers.diffusion  # noqa: F401

    s = Settings(**json.loads(settings_json))
    memory = PeakMemory(torch.device(s.device))
    spec = BY_KEY[key]
    result = run_bare(s, memory) if spec.kind == "bare" else run_ours(spec, s, memory)
    result["baseline_mib"] = memory.baseline
    result["rss_mib"] = rss_mib()
    Path(result_path).write_text(json.dumps(result))


def run_row(spec: RowSpec, s: Settings) -> dict:
    """Row ``spec`` in a fresh Python subprocess with its own work folder (fresh cache, output); its result dict."""
    s = dataclasses.replace(s, workdir=tempfile.mkdtemp(prefix=f"row-{spec.key}-", dir=s.workdir))
    result_path = Path(s.workdir) / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--row", spec.key, "--settings",
           json.dumps(dataclasses.asdict(s)), "--result", str(result_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench row {spec.key!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(result_path.read_text())


# ------------------------------------------------------------------------------------------------- report


def flops_lines(flops: dict, real: dict | None, shape: DiffusionShape, resolution: int) -> list[str]:
    ratio = flops["vae_encode"] / flops["unet_forward"]
    lines = [f"FLOPs per image at {resolution}px (FlopCounterMode): VAE encode {flops['vae_encode'] / 1e9:.3f} G, "
             f"UNet forward {flops['unet_forward'] / 1e9:.3f} G, both text encoders {flops['text_encode'] / 1e9:.4f} "
             f"G per caption; VAE:UNet = {ratio:.3f}"]
    if real is not None:
        lines.append(f"real SDXL base at 1024px (meta device): VAE encode {real['vae_encode'] / 1e12:.2f} T, UNet "
                     f"forward {real['unet_forward'] / 1e12:.2f} T; VAE:UNet = "
                     f"{real['vae_encode'] / real['unet_forward']:.3f}")
    lines.append(f"model: UNet {shape.unet_channels} x{shape.unet_layers_per_block}, transformer layers "
                 f"{shape.transformer_layers_per_block}; VAE {shape.vae_channels} x{shape.vae_layers_per_block}; text "
                 f"encoders 2 x {shape.text_layers} layers, width {shape.text_hidden_size}")
    return lines


def unet_train_flops(shape: DiffusionShape, full: bool) -> tuple[TrainFlops, dict[str, float]]:
    """:class:`TrainFlops` of one pair (two images) through the UNet with LoRA r 8 (or every weight trained), and the
    UNet's real-size memory, counted on the meta device."""
    from peft import LoraConfig

    with torch.device("meta"):
        unet = tiny_sdxl_components(shape=shape)["unet"]
        if not full:
            unet.requires_grad_(False)
            unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        x = torch.zeros(2, shape.latent_channels, shape.latent_size, shape.latent_size)
        cond = {"encoder_hidden_states": torch.zeros(2, 77, 2 * shape.text_hidden_size),
                "added_cond_kwargs": {"text_embeds": torch.zeros(2, shape.pooled_dim), "time_ids": torch.zeros(2, 6)}}
        t = torch.tensor([500, 500])
    flops = train_flops(unet, lambda m: m(x, t, **cond).sample.float().pow(2).sum())
    return flops, weights_gib(unet)


def report(runs: dict[str, list[dict]], s: Settings, head: list[str], flops: TrainFlops | None = None
           ) -> tuple[str, list[Row], dict]:
    """The table (medians over the repeats; the note lists every run's pairs/s) and the headline ratios."""
    import statistics

    rows = []
    for spec in ROWS:
        rates = [r["steps_per_s"] * s.batch_size for r in runs[spec.key]]
        setup = statistics.median(r["setup_s"] for r in runs[spec.key])
        note = f"set-up {setup:.1f}s" + (" incl. the one-off cache fill" if spec.cached else "")
        if len(rates) > 1:
            note += "; runs: " + ", ".join(f"{rate:.3f}" for rate in rates)
        rows.append(Row(spec.label, statistics.median(rates),
                        statistics.median(r["peak_mib"] for r in runs[spec.key]), note,
                        flops=flops and flops.per_unit(live_reference=spec.method != "mapo"),
                        rss_mib=max(r.get("rss_mib", 0.0) for r in runs[spec.key])))
    results = {key: values[0] for key, values in runs.items()}
    by = {spec.key: row for spec, row in zip(ROWS, rows)}
    a, b, c, mapo = by["a"], by["b"], by["c"], by["mapo"]
    memory_how = ("torch.cuda.max_memory_allocated over the timed steps" if s.device == "cuda" else
                  f"RSS high-water mark over the timed steps minus RSS after imports (~{results['a']['baseline_mib']:.0f}"
                  " MiB), each row in a fresh subprocess")
    device = torch.device(s.device)
    text = "\n".join([
        *head, "",
        format_table(rows, by["c"].name, unit="pairs/s", versus="vs (c)", device=device), "",
        f"peak memory: {memory_how}",
        f"(a) / (c): {a.rate / c.rate:.2f}x pairs/s (goal >= 0.85), "
        f"{a.peak_mib / c.peak_mib:.2f}x memory",
        f"(b) / (c): {b.rate / c.rate:.2f}x pairs/s; (a) / (b): {a.rate / b.rate:.2f}x; " + _captured(a, b, c),
        f"MaPO vs Diffusion-DPO (both (a)): time per step {time_change(a.rate, mapo.rate):+.1%}, peak memory "
        f"{mapo.peak_mib / a.peak_mib - 1:+.1%} (MaPO paper, full SDXL fine-tune on GPU: -14.5% time, -17.5% memory)",
    ])
    ratios = {"a_vs_c_rate": a.rate / c.rate, "a_vs_c_memory": a.peak_mib / c.peak_mib, "b_vs_c_rate": b.rate / c.rate,
              "a_vs_b_rate": a.rate / b.rate, "mapo_vs_dpo_time": time_change(a.rate, mapo.rate),
              "mapo_vs_dpo_memory": mapo.peak_mib / a.peak_mib - 1}
    result = bench_result("diffusion_dpo", rows, peer=c.name, unit="pairs/s", device=device, config=head[-1],
                          ratios=ratios)
    return text, rows, result


def time_change(dpo_rate: float, mapo_rate: float) -> float:
    """Relative change of time per step from DPO to MaPO."""
    return dpo_rate / mapo_rate - 1


def _captured(a: Row, b: Row, c: Row) -> str:
    """The share of the time per pair that (b) spends beyond (c) which (a) removes."""
    tb, ta, tc = 1 / b.rate, 1 / a.rate, 1 / c.rate
    if tb <= tc:
        return "(b) is not slower than (c) in this run: no gain to capture"
    return f"(a) removes {(tb - ta) / (tb - tc):.0%} of the time per pair that (b) spends beyond (c)"


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, help="timed optimizer steps per row (after warm-up)")
    parser.add_argument("--warmup", type=int, help="warm-up optimizer steps excluded from timing (>= 1)")
    parser.add_argument("--resolution", type=int, help="training resolution in pixels (default: the shape's, 256)")
    parser.add_argument("--batch-size", type=int, help="pairs per step")
    add_device_args(parser)
    parser.add_argument("--repeats", type=int, default=1,
                        help="interleaved rounds of every row (each run a fresh subprocess); medians reported")
    parser.add_argument("--full", action="store_true", help="full UNet fine-tuning with a frozen-copy reference")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--row", choices=sorted(BY_KEY), help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.row:
        check_device_args(parser, args)
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the bench, print the table, return its rows."""
    args = parse_args(argv)
    if args.row:
        row_main(args.row, args.settings, args.result)
        return []
    from visalign.testing.diffusion import save_tiny_sdxl

    sizes = QUICK if args.quick else GPU if args.gpu else FULL
    resolution = args.resolution or sizes["shape"].image_size
    shape = dataclasses.replace(sizes["shape"], image_size=resolution)
    steps, warmup = args.steps or sizes["steps"], args.warmup or sizes["warmup"]
    batch_size = args.batch_size or sizes["batch_size"]
    if warmup < 1 or steps < 1:
        raise ValueError(f"--warmup and --steps must be >= 1; got {warmup} and {steps}")
    device = torch.device(args.device)
    if args.gpu:  # real size: count on the meta device (the CPU would take minutes); the shape is SDXL's own
        with torch.device("meta"):
            flops = component_flops(tiny_sdxl_components(shape=shape), resolution)
    else:
        flops = component_flops(tiny_sdxl_components(shape=shape), resolution)
    real = None if args.quick or args.gpu else real_sdxl_flops()
    unet_flops, unet_memory = unet_train_flops(shape, args.full)
    with tempfile.TemporaryDirectory(prefix="bench-diffusion-") as tmp:
        with torch.device(device):  # random weights built on the device, then saved
            model_dir = save_tiny_sdxl(Path(tmp) / "model", shape=shape)
        data_dir = write_pairs(Path(tmp) / "pairs", batch_size * (warmup + steps), resolution)
        s = Settings(str(model_dir), str(data_dir), tmp, batch_size, steps, warmup, resolution, args.device,
                     args.precision, args.full)
        runs: dict[str, list[dict]] = {spec.key: [] for spec in ROWS}
        for _ in range(args.repeats):
            for spec in ROWS:
                runs[spec.key].append(run_row(spec, s))
    head = [machine_line(device), *flops_lines(flops, real, shape, resolution),
            flops_line(unet_flops.per_unit(live_reference=True), "pair (UNet policy fwd+bwd + reference fwd)",
                       unet_memory),
            f"{'full UNet, frozen-copy reference' if args.full else 'LoRA r 8, adapter-disabled reference'}; batch "
            f"{batch_size} pairs; precision {args.precision}; {warmup} warm-up + {steps} timed steps per row; "
            f"{args.repeats} interleaved round(s)"]
    text, rows, result = report(runs, s, head, unet_flops)
    print(text)
    write_json(args.json, result)
    return rows


if __name__ == "__main__":
    main()
