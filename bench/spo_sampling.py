"""Transitions/s of SPO's sampling against the plain diffusers pipeline on the same model, side by side in one run.

Peer: ``StableDiffusionXLPipeline`` with its scheduler swapped for ``DDIMScheduler`` (η 1, CFG 5,
``output_type="latent"``: no VAE decode), the sampler SPO uses, on N prompts in one call. Ours, same prompts, steps,
CFG and generator:

- ``sample_trajectories``: the same guided DDIM trajectories, keeping every latent and every transition's Gaussian
  log-probability (``visalign.sampling.ddim``); its ratio to the pipeline is the log-probability bookkeeping's cost
  (issue 18's goal: at most 10 %);
- ``stepwise_pairs``: SPO's step-wise resampler (``visalign.sampling.stepwise``): from ``divert_start_step`` on,
  ``k`` children per step, each child's predicted x0 decoded by the VAE and judged by a step-aware preference model
  (``reward_models`` ``step-aware``, a random PickScore-shaped CLIP with SPO's timestep modules). Its rate counts the
  main trajectory's transitions, like the other rows, so it shows what the branching costs; the share of its time
  spent in the step scorer (decode excluded) is reported beside it.

The model is random weights of SDXL's layout built in code (``visalign.testing.diffusion``): ``SMALL_SDXL`` at 256 px
on the CPU, SDXL base's UNet and VAE at 1024² with ``--gpu``; the step scorer's CLIP is ``bench/scoring.py``'s
PickScore shape (``--gpu``: ViT-H/14). Rows are interleaved ``--repeats`` times and the median reported.

    python bench/spo_sampling.py [--prompts 4] [--steps 10] [--candidates 2] [--repeats 2] [--quick]
                                 [--device cpu|cuda] [--precision no|bf16|fp16] [--gpu] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    Row, add_device_args, bench_result, check_device_args, cuda_peak_mib, format_table, machine_line, reset_cuda_peak,
    rss_mib, synchronize, write_json,
)
from diffusion_dpo import GPU_SHAPE  # noqa: E402
from scoring import FULL as SCORER_FULL  # noqa: E402
from scoring import GPU as SCORER_GPU  # noqa: E402
from scoring import QUICK as SCORER_QUICK  # noqa: E402
from scoring import build_model as build_clip  # noqa: E402

from visalign.testing.diffusion import SMALL_SDXL, TINY_SDXL  # noqa: E402

PROMPTS = ["a red square on the left", "two blue circles", "a green cross above a red dot", "a blue square"]
FULL = {"shape": SMALL_SDXL, "clip": SCORER_FULL, "prompts": 4, "steps": 10, "candidates": 2}
QUICK = {"shape": TINY_SDXL, "clip": SCORER_QUICK, "prompts": 2, "steps": 3, "candidates": 2}
GPU = {"shape": GPU_SHAPE, "clip": SCORER_GPU, "prompts": 4, "steps": 20, "candidates": 2}
GUIDANCE, ETA = 5.0, 1.0


class TimedScorer:
    """Wraps a step scorer and adds up the seconds spent in it (its queued CUDA work included)."""

    def __init__(self, scorer, device: torch.device) -> None:
        self.scorer, self.device, self.seconds = scorer, device, 0.0

    def __call__(self, pixels, prompts, timesteps):
        synchronize(self.device)
        start = time.perf_counter()
        out = self.scorer(pixels, prompts, timesteps)
        synchronize(self.device)
        self.seconds += time.perf_counter() - start
        return out


def timed(run: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """``(seconds, peak MiB)`` of ``run()`` (CUDA peak on a GPU, else the process RSS high-water mark)."""
    reset_cuda_peak(device)
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, cuda_peak_mib(device) or rss_mib()


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, help="prompts (trajectories) per call")
    parser.add_argument("--steps", type=int, help="DDIM steps per trajectory")
    parser.add_argument("--candidates", type=int, help="children per step of the step-wise resampler (SPO-SDXL: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved timed runs per row (median reported)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    add_device_args(parser, precision_help="dtype of the diffusion model and the step scorer")
    args = parser.parse_args(argv)
    check_device_args(parser, args)
    return args


def main(argv=None) -> list[Row]:
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    from reward_models import load_scorer
    from visalign.models.diffusion import load_diffusion_components
    from visalign.sampling.ddim import sample_trajectories
    from visalign.sampling.stepwise import RewardStepScorer, stepwise_pairs
    from visalign.testing.diffusion import save_tiny_sdxl

    args = parse_args(argv)
    sizes = QUICK if args.quick else GPU if args.gpu else FULL
    n, steps, k = args.prompts or sizes["prompts"], args.steps or sizes["steps"], args.candidates or sizes["candidates"]
    device = torch.device(args.device)
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    resolution, divert = sizes["shape"].image_size, max(1, steps // 5)  # SPO: step 4 of 20
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="bench-spo-") as tmp:
        with torch.device(device):
            model_dir = save_tiny_sdxl(Path(tmp) / "model", shape=sizes["shape"])
        clip_dir = build_clip(Path(tmp) / "clip", sizes["clip"], device)
        pipeline = StableDiffusionXLPipeline.from_pretrained(model_dir, dtype=dtype).to(device)
        pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
        pipeline.set_progress_bar_config(disable=True)
        components = load_diffusion_components(model_dir, unet_dtype=dtype, weight_dtype=dtype, vae_dtype=dtype)
        for part in (components.unet, components.vae, *components.text_encoders):
            part.to(device)
        spm = load_scorer("step-aware", model=str(clip_dir), init_from_clip=True, device=str(device), dtype=dtype)
        scorer = TimedScorer(RewardStepScorer(spm), device)

        def generator():
            return torch.Generator().manual_seed(0)

        runs = {
            "pipeline DDIM (peer)": lambda: pipeline(prompts, num_inference_steps=steps, guidance_scale=GUIDANCE,
                                                     eta=ETA, height=resolution, width=resolution,
                                                     generator=generator(), output_type="latent"),
            "sample_trajectories": lambda: sample_trajectories(
                components, components.unet, prompts, resolution=resolution, num_inference_steps=steps,
                guidance_scale=GUIDANCE, eta=ETA, generator=generator()),
            f"stepwise_pairs (k {k})": lambda: stepwise_pairs(
                components, components.unet, prompts, scorer, resolution=resolution,
                generators=[torch.Generator().manual_seed(i) for i in range(n)], num_candidates=k,
                divert_start_step=divert, threshold=0.0, num_inference_steps=steps, guidance_scale=GUIDANCE, eta=ETA),
        }
        for run in runs.values():  # warm-up: first-call allocations and kernels
            run()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        shares = []
        for _ in range(args.repeats):
            for name, run in runs.items():
                scorer.seconds = 0.0
                times[name].append(timed(run, device))
                if name.startswith("stepwise"):
                    shares.append(scorer.seconds / times[name][-1][0])
    rows = [Row(name, n * steps / statistics.median(t for t, _ in runs_), max(m for _, m in runs_),
                note=f"scorer {statistics.median(shares):.0%} of its time" if name.startswith("stepwise") else "")
            for name, runs_ in times.items()]
    peer, trajectories, stepwise = rows
    ratios = {"trajectories_vs_pipeline_rate": trajectories.rate / peer.rate,
              "stepwise_vs_pipeline_rate": stepwise.rate / peer.rate, "scorer_share": statistics.median(shares)}
    config = (f"{n} prompts x {steps} DDIM steps (eta {ETA}, CFG {GUIDANCE}) at {resolution} px, {args.precision}; "
              f"step-wise: k {k} from step {divert}; {args.repeats} interleaved round(s), median")
    bookkeeping = ratios["trajectories_vs_pipeline_rate"]
    print("\n".join([machine_line(device), config, "", format_table(rows, peer.name, unit="trans/s", device=device),
                     "", f"log-prob bookkeeping: sample_trajectories runs at {bookkeeping:.2f}x the pipeline's "
                     f"transitions/s (cost {1 - bookkeeping:+.1%})",
                     f"step-wise resampler: {ratios['stepwise_vs_pipeline_rate']:.2f}x; step scorer "
                     f"{ratios['scorer_share']:.0%} of its time"]))
    write_json(args.json, bench_result("spo_sampling", rows, peer=peer.name, unit="transitions/s", device=device,
                                       config=config, ratios=ratios))
    return rows


if __name__ == "__main__":
    main()
