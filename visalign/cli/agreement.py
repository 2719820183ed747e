"""`visalign agreement`: how often a reward model orders images as humans did, on a local test set, under one of the
three published protocols (reward-scorers.md §1.7; ``reward_models.agreement``).

    visalign agreement --scorer pickscore --model PATH --dataset test.json --protocol imagereward|hpdv2|pickapic \
        [--image-root DIR] [--column KEY=NAME ...] [--tie-threshold X | --validation VAL] [--out report.json]

``--dataset``: a local ``.json``/``.jsonl``/``.parquet``/``.csv`` file or a ``save_to_disk`` folder. Relative image
paths resolve against ``--image-root`` (default: the dataset file's folder, or the dataset folder). ``--column``
renames a protocol column (``images=files``); the keys and default names are in ``reward_models.agreement``
``DEFAULT_COLUMNS``. Columns and image files are checked before the model loads. The summary goes to stdout, the
report (accuracy, counts, protocol settings, scorer provenance) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from visalign.cli.score import InputError, add_scorer_arguments, build_scorer, provenance_columns

#: What each protocol's accuracy averages over (``Agreement.count``).
COUNTED = {"imagereward": "image pairs", "hpdv2": "prompts", "pickapic": "pairs"}


def make_parser() -> argparse.ArgumentParser:
    from reward_models.agreement import PROTOCOLS

    parser = argparse.ArgumentParser(prog="visalign agreement", description=__doc__.split("\n")[0])
    add_scorer_arguments(parser)
    parser.add_argument("--dataset", required=True, help="local file (.json/.jsonl/.parquet/.csv) or saved dataset")
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS,
                        help="imagereward: global pair accuracy; hpdv2: per-prompt ranking accuracy; "
                             "pickapic: pair accuracy with predicted ties")
    parser.add_argument("--image-root", type=Path, help="folder relative image paths resolve against "
                                                        "(default: the dataset's folder)")
    parser.add_argument("--column", action="append", default=[], metavar="KEY=NAME",
                        help="read the protocol's KEY (prompt, images, ranks; or prompt, image_0, image_1, label) "
                             "from column NAME; repeatable")
    ties = parser.add_mutually_exclusive_group()
    ties.add_argument("--tie-threshold", type=float,
                      help="pickapic: predict a tie when |p0 - p1| <= X (default 0)")
    ties.add_argument("--validation", help="pickapic: pick the tie threshold from {0, 0.1, ..., 1} on this dataset")
    parser.add_argument("--out", type=Path, help="write the report as JSON")
    return parser


def column_map(protocol: str, items: Sequence[str]) -> dict[str, str]:
    """The protocol's columns with ``KEY=NAME`` overrides applied."""
    from reward_models.agreement import DEFAULT_COLUMNS

    columns = dict(DEFAULT_COLUMNS[protocol])
    for item in items:
        key, sep, name = item.partition("=")
        if not sep or not name:
            raise InputError(f"--column {item!r} must look like KEY=NAME")
        if key not in columns:
            raise InputError(f"--column {item!r}: protocol {protocol} has no column key {key!r}; "
                             f"keys: {', '.join(columns)}")
        columns[key] = name
    return columns


def default_root(dataset: str) -> Path:
    """The folder a dataset's relative image paths are taken from: the file's folder, or the dataset folder."""
    path = Path(dataset)
    return path if path.is_dir() else path.parent


def summary(scorer, result, *, rows: int, source: str) -> str:
    """Scorer line and a small table: protocol, accuracy, what it averages over, NaN predictions, settings."""
    p = scorer.provenance
    settings = ", ".join(f"{k} {v:g}" for k, v in result.details.items())
    head = f"{'dataset':<24} {'rows':>6} {'protocol':<12} {'accuracy':>9} {'over':>14} {'NaN':>5}  details"
    line = (f"{Path(source).name[:24]:<24} {rows:>6} {result.protocol:<12} {100 * result.accuracy:>8.2f}% "
            f"{f'{result.count} {COUNTED[result.protocol]}':>14} {result.nan_predictions:>5}  {settings}")
    return "\n".join([f"scorer {scorer.info.name} ({scorer.info.formula}); model {p.model_id}; {p.dtype}; "
                      f"{p.preprocessing}" + (f"; variant {p.variant}" if p.variant else ""), head, line])


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from reward_models.agreement import check_rows, evaluate_agreement, load_rows

    try:
        if args.protocol != "pickapic" and (args.tie_threshold is not None or args.validation is not None):
            raise InputError("--tie-threshold and --validation apply to --protocol pickapic only")
        if args.out is not None and args.out.suffix != ".json":
            raise InputError(f"--out {args.out} must end in .json")
        columns = column_map(args.protocol, args.column)
        root = args.image_root if args.image_root is not None else default_root(args.dataset)
        rows = load_rows(args.dataset)
        check_rows(rows, columns, root, args.dataset)
        validation = None
        if args.validation is not None:
            validation = load_rows(args.validation)
            check_rows(validation, columns, root, args.validation)
        scorer = build_scorer(args)
        result = evaluate_agreement(
            scorer, rows, args.protocol, image_root=root, columns=columns, tie_threshold=args.tie_threshold or 0.0,
            validation=validation, batch_size=args.batch_size, num_workers=args.num_workers, progress=True,
        )
    except (InputError, ValueError, KeyError, FileNotFoundError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err  # KeyError's str() adds quotes
        print(f"visalign agreement: error: {message}", file=sys.stderr)
        return 2
    if args.out is not None:
        report = {
            "protocol": result.protocol, "accuracy": result.accuracy, "count": result.count,
            "counted": COUNTED[result.protocol], "nan_predictions": result.nan_predictions,
            "details": result.details, "dataset": args.dataset, "rows": len(rows), "validation": args.validation,
            "columns": columns, "image_root": str(root), "scorer": scorer.info.name,
            "provenance": provenance_columns(scorer.provenance),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    print(summary(scorer, result, rows=len(rows), source=args.dataset))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
