"""Evaluate a trained checkpoint against another (by default the base model): win rates with bootstrap intervals.

Usage:

    python pipelines/evaluate.py --base runwayml/stable-diffusion-v1-5 --checkpoint-a runs/dpo \
        [--checkpoint-b runs/dpo-step500] --prompts prompts.txt --scorer pickscore --scorer hps --seeds 4 --out eval/

A checkpoint is a diffusers LoRA folder (``pytorch_lora_weights.safetensors``, as ``visalign train`` writes it; loaded
into ``--base``) or a full pipeline (hub id or ``save_pretrained`` folder). Without ``--checkpoint-b`` the comparison
is against ``--base`` itself. Everything else is ``visalign.evaluation.report.compare_models`` (the protocol of
reference diffusion-methods.md §16): the same prompts and seeds for both, every scorer on both, and ``report.json``,
``report.md``, ``scores.jsonl``, ``grid.png`` in ``--out``. For every option, use ``visalign eval``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def checkpoint_spec(checkpoint: str | None, base: str):
    """A :class:`~visalign.evaluation.report.ModelSpec` for ``checkpoint``: a LoRA folder on ``base``, a pipeline, or
    ``base`` itself when ``None``."""
    from visalign.evaluation.report import ModelSpec
    from visalign.models.diffusion_io import LORA_WEIGHT_NAME

    if checkpoint is None:
        return ModelSpec(base)
    if (Path(checkpoint) / LORA_WEIGHT_NAME).is_file():
        return ModelSpec(base, lora=checkpoint)
    return ModelSpec(checkpoint)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--base", required=True, help="base diffusers pipeline: hub id or folder")
    parser.add_argument("--checkpoint-a", required=True, help="LoRA folder or pipeline to evaluate (model A)")
    parser.add_argument("--checkpoint-b", help="LoRA folder or pipeline to compare with (default: --base)")
    parser.add_argument("--prompts", required=True, help=".txt (one prompt per line) or a dataset spec")
    parser.add_argument("--prompt-column", default="prompt")
    parser.add_argument("--scorer", action="append", required=True, metavar="NAME[=MODEL]", help="repeatable")
    parser.add_argument("--seeds", type=int, default=1, help="images per prompt and model")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, help="CFG scale (default: the pipeline's, 7.5 SD, 5.0 SDXL)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="pipeline dtype")
    parser.add_argument("--bootstrap-resamples", type=int, default=10_000)
    parser.add_argument("--out", required=True, type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from visalign.evaluation.generate import GenerationSettings, load_prompts
    from visalign.evaluation.report import compare_models, render_markdown
    from visalign.evaluation.scorer_specs import parse_scorers

    try:
        scorers = parse_scorers(args.scorer, device=args.device, dtype="float32")
        report = compare_models(
            checkpoint_spec(args.checkpoint_a, args.base), checkpoint_spec(args.checkpoint_b, args.base),
            load_prompts(args.prompts, column=args.prompt_column), scorers, args.out, num_seeds=args.seeds,
            settings=GenerationSettings(num_inference_steps=args.steps, guidance_scale=args.guidance),
            device=args.device, dtype=args.dtype, num_resamples=args.bootstrap_resamples,
        )
    except (ValueError, KeyError, FileNotFoundError, TypeError) as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
