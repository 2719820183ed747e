"""On-policy preference pairs: sample K images per prompt from a model, score them, keep best vs worst.

Usage:

    python pipelines/generate_pairs.py --model runwayml/stable-diffusion-v1-5 [--lora DIR] \
        --prompts prompts.txt --scorer pickscore [--scorer-model yuvalkirstain/PickScore_v1] \
        --samples-per-prompt 4 --min-gap 0.5 --steps 50 --out pairs/
    visalign train --config sd15-dpo --model runwayml/stable-diffusion-v1-5 --dataset pairs/

Sampling, scoring and pairing are ``visalign.evaluation.pairs.generate_preference_pairs`` (its docstring has the
rules and the output layout); this script is its command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="generate_pairs.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--model", required=True, help="diffusers pipeline: hub id or local folder")
    parser.add_argument("--lora", help="diffusers LoRA folder loaded into the pipeline")
    parser.add_argument("--prompts", required=True, help=".txt (one prompt per line) or a dataset spec")
    parser.add_argument("--prompt-column", default="prompt", help="prompt column of a dataset spec")
    parser.add_argument("--max-prompts", type=int, help="use only the first N prompts")
    parser.add_argument("--scorer", required=True, help="registered scorer name or 'pkg.module:Factory'")
    parser.add_argument("--scorer-model", help="hub id or folder of the scorer's weights (scorer default if omitted)")
    parser.add_argument("--scorer-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra scorer option, value parsed as YAML; repeatable")
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="K images sampled per prompt (>= 2)")
    parser.add_argument("--min-gap", type=float, default=0.0,
                        help="keep a pair only when |score(best) - score(worst)| is above this (raw scorer units)")
    parser.add_argument("--pairing", choices=("best_worst", "all"), default="best_worst",
                        help="best vs worst image per prompt, or every ordered pair above --min-gap")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the per-(prompt, image) seeds")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps")
    parser.add_argument("--guidance", type=float, help="CFG scale (default: the pipeline's, 7.5 SD, 5.0 SDXL)")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    parser.add_argument("--score-batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="pipeline dtype")
    parser.add_argument("--scorer-dtype", default="float32")
    parser.add_argument("--out", required=True, type=Path, help="output folder (paired-folder dataset)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from reward_models import list_scorers
    from visalign.evaluation.generate import GenerationSettings, load_prompts
    from visalign.evaluation.pairs import check_pair_options, generate_preference_pairs
    from visalign.evaluation.scorer_specs import build_scorer

    try:
        check_pair_options(args.samples_per_prompt, args.min_gap, args.pairing)
        if ":" not in args.scorer and args.scorer not in list_scorers():
            raise ValueError(f"unknown scorer {args.scorer!r}; available: {', '.join(list_scorers())}")
        prompts = load_prompts(args.prompts, column=args.prompt_column, limit=args.max_prompts)
        scorer = build_scorer(args.scorer, model=args.scorer_model, device=args.device, dtype=args.scorer_dtype,
                              scorer_args=args.scorer_arg)
        settings = GenerationSettings(num_inference_steps=args.steps, guidance_scale=args.guidance,
                                      height=args.height, width=args.width)
        summary = generate_preference_pairs(
            args.model, prompts, scorer, args.out, lora=args.lora, samples_per_prompt=args.samples_per_prompt,
            min_gap=args.min_gap, pairing=args.pairing, seed=args.seed, settings=settings, device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size, score_batch_size=args.score_batch_size, progress=not args.no_progress)
    except (ValueError, KeyError, FileNotFoundError, TypeError) as err:
        print(f"generate_pairs: error: {err}", file=sys.stderr)
        return 2
    print(f"{summary['pairs']} pairs from {len(prompts)} prompts written to {args.out}; "
          f"{summary['skipped_small_gap']} prompt(s) skipped (score gap <= {args.min_gap})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
