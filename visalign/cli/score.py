"""`visalign score`: score a folder (or glob) of images with a reward model.

    visalign score --scorer pickscore --model yuvalkirstain/PickScore_v1 --images out/ --prompt "a cat" \
        [--prompts prompts.txt|prompts.jsonl] [--out scores.jsonl|scores.csv] [--scorer-arg version=v2.0 ...]

``--prompts``: a ``.txt`` file with one prompt per image in sorted file order, or a ``.jsonl`` file of
``{"image": FILE_NAME, "prompt": TEXT}`` rows. Every output row carries the score, the scorer's details and its
provenance (model id, weight sha256, preprocessing, dtype, variant). A summary table per prompt goes to stdout.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from visalign.errors import InputError
from visalign.evaluation import scorer_specs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def add_scorer_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Flags that choose and load a scorer (shared with `visalign relabel`, `agreement` and `label`)."""
    parser.add_argument("--scorer", required=required, help="registered scorer name or 'pkg.module:Factory'")
    parser.add_argument("--model", help="hub id or local path of the scorer's weights (scorer default if omitted)")
    parser.add_argument("--scorer-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra scorer option, value parsed as YAML (e.g. version=v2.0, head=aes.pth); repeatable")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1")
    parser.add_argument("--dtype", default="float32",
                        help="compute dtype: float32, bfloat16, float16, or auto (bf16/fp16 where the device has it)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")


def build_scorer(args: argparse.Namespace):
    """Load the scorer chosen by :func:`add_scorer_arguments` flags (``scorer_specs.build_scorer``)."""
    return scorer_specs.build_scorer(args.scorer, model=args.model, device=args.device, dtype=args.dtype,
                                     scorer_args=args.scorer_arg)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visalign score", description=__doc__.split("\n")[0])
    add_scorer_arguments(parser)
    parser.add_argument("--images", required=True, help="a folder of images or a glob pattern")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="one prompt for every image")
    prompt.add_argument("--prompts", type=Path, help=".txt (one line per image, sorted order) or .jsonl (image, prompt)")
    parser.add_argument("--out", type=Path, help="write per-image rows to a .jsonl or .csv file")
    return parser


def find_images(spec: str) -> list[Path]:
    """Image files of a folder (sorted) or of a glob pattern (sorted)."""
    folder = Path(spec)
    candidates = sorted(folder.iterdir()) if folder.is_dir() else sorted(Path(p) for p in glob.glob(spec))
    images = [p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found at {spec!r}")
    return images


def read_prompts(path: Path, images: list[Path]) -> list[str]:
    """One prompt per image from a ``.txt`` (line per image, sorted order) or ``.jsonl`` (``image``, ``prompt``)."""
    if not path.is_file():
        raise InputError(f"prompts file {path} does not exist")
    if path.suffix == ".txt":
        lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
        lines = [line for line in lines if line.strip()]
        if len(lines) != len(images):
            raise InputError(f"{path} has {len(lines)} prompts for {len(images)} images (one line per image)")
        return lines
    if path.suffix == ".jsonl":
        by_name: dict[str, str] = {}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                by_name[Path(row["image"]).name] = str(row["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise InputError(f"{path} line {n}: expected {{\"image\": ..., \"prompt\": ...}} ({err})") from err
        missing = [p.name for p in images if p.name not in by_name]
        if missing:
            raise InputError(f"{path} has no prompt for image(s) {', '.join(missing[:5])}")
        return [by_name[p.name] for p in images]
    raise InputError(f"prompts file {path} must be .txt or .jsonl")


def check_output(path: Path) -> None:
    """Fail before any model loads when ``path`` cannot be created or written: its nearest existing folder must be a
    writable folder (and ``path`` itself writable when it exists), so no scoring is lost at the final write."""
    existing = path if path.exists() else next(p for p in path.absolute().parents if p.exists())
    if existing != path and not existing.is_dir():
        raise InputError(f"--out {path}: cannot be created, {existing} is not a folder")
    if not os.access(existing, os.W_OK | (os.X_OK if existing.is_dir() else 0)):
        raise InputError(f"--out {path}: {existing} is not writable; choose another --out")


def provenance_columns(provenance) -> dict[str, str | None]:
    return {"model_id": provenance.model_id, "weights_sha256": provenance.weights_sha256,
            "preprocessing": provenance.preprocessing, "dtype": provenance.dtype, "variant": provenance.variant}


def write_rows(path: Path, rows: list[dict]) -> None:
    """Rows to ``.jsonl`` or ``.csv`` (chosen by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    elif path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        raise InputError(f"--out {path} must end in .jsonl or .csv")


def summary(scorer, prompts: list[str], images: list[Path], scores) -> str:
    """Per-prompt table: n, aggregate (the scorer's corpus score), std, min, max and the best image."""
    import torch

    p = scorer.provenance
    lines = [f"scorer {scorer.info.name} ({scorer.info.formula}); model {p.model_id}; "
             f"sha256 {(p.weights_sha256 or 'unknown')[:16]}; {p.dtype}; {p.preprocessing}"
             + (f"; variant {p.variant}" if p.variant else ""),
             f"{'prompt':<40} {'n':>5} {'score':>10} {'std':>9} {'min':>10} {'max':>10}  best"]
    for prompt in dict.fromkeys(prompts):
        idx = [i for i, q in enumerate(prompts) if q == prompt]
        s = scores[idx]
        best = images[idx[int(torch.argmax(s if scorer.info.higher_is_better else -s))]].name
        std = float(s.std()) if len(idx) > 1 else 0.0
        label = prompt if len(prompt) <= 40 else prompt[:37] + "..."
        lines.append(f"{label:<40} {len(idx):>5} {float(scorer.aggregate(s)):>10.4f} {std:>9.4f} "
                     f"{float(s.min()):>10.4f} {float(s.max()):>10.4f}  {best}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        images = find_images(args.images)
        prompts = [args.prompt] * len(images) if args.prompt is not None else read_prompts(args.prompts, images)
        if args.out is not None:
            if args.out.suffix not in (".jsonl", ".csv"):
                raise InputError(f"--out {args.out} must end in .jsonl or .csv")
            check_output(args.out)
        scorer = build_scorer(args)
        result = scorer.score(images, prompts, batch_size=args.batch_size, num_workers=args.num_workers,
                              progress=True)
    except (InputError, ValueError, KeyError, FileNotFoundError, TypeError) as err:
        print(f"visalign score: error: {err}", file=sys.stderr)
        return 2
    if args.out is not None:
        prov = provenance_columns(result.provenance[scorer.info.name])
        rows = [{"image": str(img), "prompt": prompt, **record, "scorer": scorer.info.name, **prov}
                for img, prompt, record in zip(images, prompts, result.records())]
        write_rows(args.out, rows)
    print(summary(scorer, prompts, images, result.scores))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
