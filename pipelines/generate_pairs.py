"""On-policy preference pairs: sample K images per prompt from a model, score them, keep best vs worst.

Usage:

    python pipelines/generate_pairs.py --model runwayml/stable-diffusion-v1-5 [--lora DIR] \
        --prompts prompts.txt --scorer pickscore [--scorer-model yuvalkirstain/PickScore_v1] \
        --samples-per-prompt 4 --min-gap 0.5 --steps 50 --out pairs/
    visalign train --config sd15-dpo --model runwayml/stable-diffusion-v1-5 --dataset pairs/

Every prompt gets K images (``visalign.evaluation.generate``: fixed per-(prompt, index) seeds, resumable, kept under
``OUT/candidates`` with their manifest), each scored by the scorer against its prompt. The best-scoring image becomes
``chosen`` and the worst ``rejected`` (the scorer's direction decides which is best). A prompt whose score gap
``|best - worst|`` is not above ``--min-gap`` gives no pair (ties always drop, as in Diffusion-DPO's data,
reference diffusion-methods.md §3.3); these are counted and reported. The output is the paired-folder layout read by
``visalign.data.diffusion.load_preference_pairs``: ``OUT/chosen/NAME.png``, ``OUT/rejected/NAME.png`` and
``OUT/captions.jsonl`` rows ``{"file_name", "caption", "score_chosen", "score_rejected", "seed_chosen",
"seed_rejected"}``; ``OUT/pairs_summary.json`` records the counts, the settings and the scorer's provenance. Scores are
the scorer's raw output (reward-scorers.md §1.6).

This is the sampling-and-labelling step of on-policy preference optimisation (the shapes-world quickstart; SPO,
reference §6.1, forms pairs the same way per denoising step, here per final image).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SUMMARY = "pairs_summary.json"


def select_pairs(scores: np.ndarray, *, min_gap: float = 0.0, higher_is_better: bool = True
                 ) -> tuple[list[tuple[int, int, int]], int]:
    """``scores [P, K]`` -> ``([(prompt, chosen k, rejected k), ...], skipped)``: per prompt, the best against the
    worst image; a prompt is skipped when ``|best - worst| <= min_gap``. The first index wins equal scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"select_pairs needs scores [prompts, samples >= 2], got shape {scores.shape}")
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0; got {min_gap}")
    signed = scores if higher_is_better else -scores
    best, worst = signed.argmax(axis=1), signed.argmin(axis=1)
    gaps = signed.max(axis=1) - signed.min(axis=1)
    pairs = [(p, int(best[p]), int(worst[p])) for p in range(len(scores)) if gaps[p] > min_gap]
    return pairs, len(scores) - len(pairs)


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


def write_pairs(out: Path, samples, scores: np.ndarray, pairs: Sequence[tuple[int, int, int]]) -> None:
    """Copy each pair's images into ``out/chosen`` and ``out/rejected`` and write ``out/captions.jsonl``."""
    grid = [samples[p * scores.shape[1]:(p + 1) * scores.shape[1]] for p in range(scores.shape[0])]
    for side in ("chosen", "rejected"):
        shutil.rmtree(out / side, ignore_errors=True)  # a rerun with other settings must not leave stale pairs
        (out / side).mkdir(parents=True)
    rows = []
    for p, k_chosen, k_rejected in pairs:
        chosen, rejected = grid[p][k_chosen], grid[p][k_rejected]
        name = f"{p:05d}.png"
        shutil.copyfile(out / "candidates" / chosen.path, out / "chosen" / name)
        shutil.copyfile(out / "candidates" / rejected.path, out / "rejected" / name)
        rows.append({"file_name": name, "caption": chosen.prompt, "score_chosen": float(scores[p, k_chosen]),
                     "score_rejected": float(scores[p, k_rejected]), "seed_chosen": chosen.seed,
                     "seed_rejected": rejected.seed})
    with open(out / "captions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from reward_models import list_scorers
    from visalign.cli.score import build_scorer
    from visalign.evaluation.generate import GenerationSettings, generate_images, load_pipeline, load_prompts, \
        score_samples

    try:
        if args.samples_per_prompt < 2:
            raise ValueError(f"--samples-per-prompt must be >= 2 to form a pair; got {args.samples_per_prompt}")
        if args.min_gap < 0:
            raise ValueError(f"--min-gap must be >= 0; got {args.min_gap}")
        if ":" not in args.scorer and args.scorer not in list_scorers():
            raise ValueError(f"unknown scorer {args.scorer!r}; available: {', '.join(list_scorers())}")
        prompts = load_prompts(args.prompts, column=args.prompt_column, limit=args.max_prompts)
        settings = GenerationSettings(num_inference_steps=args.steps, guidance_scale=args.guidance,
                                      height=args.height, width=args.width)
        pipeline = load_pipeline(args.model, lora=args.lora, device=args.device, dtype=args.dtype)
        samples = generate_images(pipeline, prompts, args.out / "candidates", num_seeds=args.samples_per_prompt,
                                  base_seed=args.seed, settings=settings, model=args.model, lora=args.lora,
                                  batch_size=args.batch_size, progress=not args.no_progress)
        del pipeline
        scorer = build_scorer(argparse.Namespace(scorer=args.scorer, model=args.scorer_model, device=args.device,
                                                 dtype=args.scorer_dtype, scorer_arg=args.scorer_arg))
        scores, result = score_samples(scorer, samples, args.out / "candidates", batch_size=args.score_batch_size,
                                       progress=not args.no_progress)
    except (ValueError, KeyError, FileNotFoundError, TypeError) as err:
        print(f"generate_pairs: error: {err}", file=sys.stderr)
        return 2
    pairs, skipped = select_pairs(scores, min_gap=args.min_gap, higher_is_better=scorer.info.higher_is_better)
    write_pairs(args.out, samples, scores, pairs)
    summary = {
        "num_prompts": len(prompts), "samples_per_prompt": args.samples_per_prompt, "pairs": len(pairs),
        "skipped_small_gap": skipped, "min_gap": args.min_gap, "model": args.model, "lora": args.lora,
        "settings": samples[0].settings, "scorer": scorer.info.name, "scale": scorer.info.formula,
        "provenance": {name: p.as_dict() for name, p in result.provenance.items()},
    }
    (args.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"{len(pairs)} pairs from {len(prompts)} prompts written to {args.out}; {skipped} prompt(s) skipped "
          f"(score gap <= {args.min_gap})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
