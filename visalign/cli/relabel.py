"""`visalign relabel`: AI-feedback labels for image preference pairs (Diffusion-DPO's AI-feedback mode, SmPO's
relabelling), keeping the scores so trainers can weight pairs.

    visalign relabel --scorer pickscore --model PATH --dataset PAIRS --out DIR \
        [--prompt-column caption --image-columns jpg_0 jpg_1] [--tie-threshold 0.0]

``PAIRS`` is anything ``visalign.data.sources.load_source`` reads (jsonl/csv/parquet file, saved dataset, hub id).
Image cells may be file paths (relative ones resolve against the dataset file's folder), PIL images, bytes, or
``{"bytes"|"path"}`` dicts (datasets' undecoded ``Image`` feature). Added columns: ``score_0``, ``score_1`` (pointwise
scorers), ``prob_0`` = P(image_0 ≻ image_1) from the scorer's ``preference``, and ``label_0`` = 1, 0 or 0.5 (tie when
``|prob_0 - 0.5| <= tie_threshold``), Pick-a-Pic's label convention. A pair without a preference (a judge answer that
did not parse: ``prob_0`` NaN) keeps ``label_0`` NaN, never a tie, and is counted apart. The dataset is written with ``save_to_disk``
and the scorer's provenance to ``DIR/relabel.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from visalign.cli.score import InputError, add_scorer_arguments, build_scorer, check_output, provenance_columns


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visalign relabel", description=__doc__.split("\n")[0])
    add_scorer_arguments(parser)
    parser.add_argument("--dataset", required=True, help="preference pairs: file, saved dataset or hub id")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", type=Path, required=True, help="output folder (datasets save_to_disk)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--prompt-column", default="prompt")
    parser.add_argument("--image-columns", nargs=2, default=["image_0", "image_1"], metavar=("COL0", "COL1"))
    parser.add_argument("--tie-threshold", type=float, default=0.0, help="|prob_0 - 0.5| <= t counts as a tie")
    return parser


def to_image(cell, root: Path | None, row: int, column: str):
    """A dataset cell as something ``reward_models`` accepts (path or PIL image)."""
    from PIL import Image

    if isinstance(cell, Image.Image):
        return cell
    if isinstance(cell, dict):
        cell = cell.get("bytes") or cell.get("path")
    if isinstance(cell, (bytes, bytearray)):
        try:
            return Image.open(io.BytesIO(cell))
        except (OSError, Image.DecompressionBombError) as err:
            raise InputError(f"row {row}, column {column!r}: undecodable image bytes ({err})") from err
    if isinstance(cell, str):
        path = Path(cell)
        if not path.is_absolute() and root is not None:
            path = root / path
        if not path.is_file():
            raise InputError(f"row {row}, column {column!r}: image file {path} does not exist")
        return path
    raise InputError(f"row {row}, column {column!r}: expected an image path, bytes or PIL image, got {type(cell).__name__}")


def relabel(scorer, dataset, *, prompt_column: str, image_columns: Sequence[str], root: Path | None,
            tie_threshold: float, batch_size: int, num_workers: int):
    """The dataset with ``score_0``, ``score_1`` (when the scorer gives them), ``prob_0`` and ``label_0`` columns
    added; ``label_0`` is NaN where ``prob_0`` is (no preference), not a tie."""
    missing = [c for c in (prompt_column, *image_columns) if c not in dataset.column_names]
    if missing:
        raise InputError(f"dataset has no column(s) {missing}; columns are {dataset.column_names}")
    if not 0.0 <= tie_threshold < 0.5:
        raise InputError(f"--tie-threshold must be in [0, 0.5), got {tie_threshold}")
    prompts = list(dataset[prompt_column])
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InputError(f"row {i}, column {prompt_column!r}: expected a prompt string, got {type(p).__name__}")
    col0, col1 = image_columns
    a = [to_image(c, root, i, col0) for i, c in enumerate(dataset[col0])]
    b = [to_image(c, root, i, col1) for i, c in enumerate(dataset[col1])]
    result = scorer.preference(prompts, a, b, batch_size=batch_size, num_workers=num_workers, progress=True)
    prob = result.probs.double().cpu()
    label = ((prob > 0.5).double()).where((prob - 0.5).abs() > tie_threshold, 0.5).where(~prob.isnan(), prob)
    scores = {f"score_{i}": result.details[key] for i, key in enumerate(("score_a", "score_b"))
              if key in result.details}
    columns = {**scores, "prob_0": prob, "label_0": label}
    for name, values in columns.items():
        if name in dataset.column_names:
            dataset = dataset.remove_columns(name)
        dataset = dataset.add_column(name, values.double().cpu().tolist())
    return dataset, result.provenance


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from visalign.data.sources import load_source

    try:
        check_output(args.out)
        if args.out.exists() and not args.out.is_dir():
            raise InputError(f"--out {args.out} is a file; relabel writes a dataset folder there")
        if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
            raise InputError(f"--out {args.out} already exists and is not empty; pass --overwrite to replace it")
        dataset = load_source(args.dataset, split=args.split)
        source = Path(args.dataset)
        root = source.parent if source.is_file() else (source if source.is_dir() else None)
        scorer = build_scorer(args)
        labelled, provenance = relabel(
            scorer, dataset, prompt_column=args.prompt_column, image_columns=args.image_columns, root=root,
            tie_threshold=args.tie_threshold, batch_size=args.batch_size, num_workers=args.num_workers,
        )
    except (InputError, ValueError, KeyError, FileNotFoundError, TypeError) as err:
        print(f"visalign relabel: error: {err}", file=sys.stderr)
        return 2
    labelled.save_to_disk(str(args.out))
    meta = {"scorer": scorer.info.name, "dataset": args.dataset, "tie_threshold": args.tie_threshold,
            "provenance": {k: provenance_columns(v) for k, v in provenance.items()}}
    (args.out / "relabel.json").write_text(json.dumps(meta, indent=2))
    labels = list(labelled["label_0"])
    unparsed = sum(math.isnan(label) for label in labels)
    print(f"relabelled {len(labels)} pairs with {scorer.info.name}: image_0 preferred {labels.count(1.0)}, "
          f"image_1 preferred {labels.count(0.0)}, ties {labels.count(0.5)}, no preference (unparsed, label_0 NaN) "
          f"{unparsed}; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
