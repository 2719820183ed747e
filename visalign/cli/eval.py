"""`visalign eval`: generate (or reuse) images from two models, score them, write win rates with confidence intervals.

    visalign eval --model-a runwayml/stable-diffusion-v1-5 --lora-a runs/dpo --model-b runwayml/stable-diffusion-v1-5 \
        --prompts prompts.txt --scorer pickscore=yuvalkirstain/PickScore_v1 --scorer hps --seeds 4 --out eval/

Model A is compared against model B: the same prompts and seeds for both (safety checker off; CFG: ``--guidance``, else
the pipeline's default, 7.5 for SD and 5.0 for SDXL), every ``--scorer`` on both, and per scorer mean/median scores,
strict A win/tie/loss rates and the mean difference with paired bootstrap intervals over prompts. ``--out`` receives
``report.html`` (open it in a browser), ``report.json``, ``report.md``, ``scores.jsonl``, ``grid.png`` and
``images/{a,b}`` with manifests; a rerun reuses existing images (reference diffusion-methods.md §16; module
``visalign.evaluation.report``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from visalign.cli.score import InputError
from visalign.evaluation.scorer_specs import parse_scorers


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visalign eval", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    models = parser.add_argument_group("models")
    models.add_argument("--model-a", required=True, help="diffusers pipeline of model A: hub id or local folder")
    models.add_argument("--lora-a", help="diffusers LoRA folder loaded into model A (pipe.load_lora_weights)")
    models.add_argument("--model-b", required=True, help="diffusers pipeline of model B (usually the base model)")
    models.add_argument("--lora-b", help="diffusers LoRA folder loaded into model B")
    models.add_argument("--device", default="cpu", help="torch device for the pipelines and scorers, e.g. cuda")
    models.add_argument("--dtype", default="float32", help="pipeline dtype: float32, float16, bfloat16, or auto "
                        "(bf16 where the device has it natively, else fp32)")
    prompts = parser.add_argument_group("prompts and sampling")
    prompts.add_argument("--prompts", required=True,
                         help="a .txt file (one prompt per line) or a dataset spec (.jsonl/.csv/.parquet, hub id)")
    prompts.add_argument("--prompt-column", default="prompt", help="prompt column of a dataset spec")
    prompts.add_argument("--prompt-split", default="train", help="split of a hub or saved dataset")
    prompts.add_argument("--max-prompts", type=int, help="use only the first N prompts")
    prompts.add_argument("--seeds", type=int, default=1, help="images per prompt and model (same seeds for A and B)")
    prompts.add_argument("--seed", type=int, default=0, help="base seed the per-(prompt, image) seeds derive from")
    prompts.add_argument("--steps", type=int, default=50, help="sampler steps")
    prompts.add_argument("--guidance", type=float, help="CFG scale (default: the pipeline's, 7.5 SD, 5.0 SDXL)")
    prompts.add_argument("--height", type=int, help="image height (default: the pipeline's)")
    prompts.add_argument("--width", type=int, help="image width (default: the pipeline's)")
    prompts.add_argument("--negative-prompt", help="negative prompt for every image")
    prompts.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    scoring = parser.add_argument_group("scoring and statistics")
    scoring.add_argument("--scorer", action="append", required=True, metavar="NAME[=MODEL]",
                         help="registered scorer (or 'pkg.module:Factory') and optionally its weights; repeatable")
    scoring.add_argument("--scorer-arg", action="append", default=[], metavar="NAME:KEY=VALUE",
                         help="option of one scorer, value parsed as YAML (e.g. hps:version=v2.0); repeatable")
    scoring.add_argument("--scorer-dtype", default="float32", help="scorer compute dtype")
    scoring.add_argument("--score-batch-size", type=int, default=16)
    scoring.add_argument("--tie-tolerance", action="append", default=[], metavar="[NAME=]VALUE",
                         help="|a - b| <= VALUE is a tie, for every scorer or for scorer NAME (default 0); repeatable")
    scoring.add_argument("--bootstrap-resamples", type=int, default=10_000)
    scoring.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals")
    scoring.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument("--grid-prompts", type=int, default=8, help="prompts (rows) in grid.png")
    parser.add_argument("--out", required=True, type=Path, help="output folder (reused images are kept)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def parse_tolerances(items: Sequence[str], scorer_keys: Sequence[str]) -> dict[str, float]:
    """``VALUE`` (every scorer) and ``NAME=VALUE`` items -> ``{scorer key: tolerance}``; later items win."""
    tolerances = dict.fromkeys(scorer_keys, 0.0)
    for item in items:
        name, sep, value = item.rpartition("=")
        if sep and name not in tolerances:
            raise InputError(f"--tie-tolerance {item!r} names scorer {name!r}, which is not a --scorer")
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"--tie-tolerance {item!r}: {value!r} is not a number") from None
        if number < 0:
            raise InputError(f"--tie-tolerance {item!r} must be >= 0")
        tolerances.update({name: number} if sep else dict.fromkeys(scorer_keys, number))
    return tolerances


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        from visalign.evaluation.generate import GenerationSettings, load_prompts
        from visalign.evaluation.report import ModelSpec, compare_models

        for flag in ("lora_a", "lora_b"):
            if getattr(args, flag) is not None and not Path(getattr(args, flag)).exists():
                raise InputError(f"--{flag.replace('_', '-')} {getattr(args, flag)} does not exist")
        for flag in ("seeds", "batch_size", "score_batch_size", "bootstrap_resamples", "grid_prompts"):
            if getattr(args, flag) < 1:
                raise InputError(f"--{flag.replace('_', '-')} must be >= 1; got {getattr(args, flag)}")
        scorers = parse_scorers(args.scorer, args.scorer_arg, device=args.device, dtype=args.scorer_dtype)
        tolerances = parse_tolerances(args.tie_tolerance, [s.key for s in scorers])
        prompts = load_prompts(args.prompts, column=args.prompt_column, split=args.prompt_split,
                               limit=args.max_prompts)
        settings = GenerationSettings(num_inference_steps=args.steps, guidance_scale=args.guidance,
                                      height=args.height, width=args.width, negative_prompt=args.negative_prompt)
        report = compare_models(
            ModelSpec(args.model_a, args.lora_a), ModelSpec(args.model_b, args.lora_b), prompts, scorers, args.out,
            num_seeds=args.seeds, base_seed=args.seed, settings=settings, device=args.device, dtype=args.dtype,
            batch_size=args.batch_size, score_batch_size=args.score_batch_size, tie_tolerance=tolerances,
            num_resamples=args.bootstrap_resamples, confidence=args.confidence, bootstrap_seed=args.bootstrap_seed,
            grid_prompts=args.grid_prompts, progress=not args.no_progress,
        )
    except (InputError, ValueError, KeyError, FileNotFoundError, TypeError) as err:
        print(f"visalign eval: error: {err}", file=sys.stderr)
        return 2
    from visalign.evaluation.report import render_markdown

    print(render_markdown(report))
    print(f"report written to {args.out}; open {args.out / 'report.html'} in a browser")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
