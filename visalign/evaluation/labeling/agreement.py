"""Agreement between annotators (and with a scorer, in `visalign label --agreement`) over their labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visalign.errors import DataError, NotFoundError


def read_labels(out: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``{annotator: Pick-a-Pic rows}`` of every annotator file ``out/NAME.jsonl``."""
    files = sorted(Path(out).glob("*.jsonl"))
    if not files:
        raise NotFoundError(f"{out}: no annotator files (NAME.jsonl); collect labels first with `visalign label "
                            f"--pairs DIR --out {out}`")
    labels = {}
    for file in files:
        rows = []
        for line_no, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{file} line {line_no}: not valid JSON ({err})") from None
        labels[file.stem] = rows
    return labels


def annotator_agreement(labels: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Agreement of every two annotators over the pairs both labelled (matched by ``jpg_0``, ``jpg_1``), scored as
    Pick-a-Pic's protocol (reward-scorers.md §1.7): 1 for the same label, 0.5 when exactly one is a tie, 0 otherwise,
    i.e. ``pickapic_accuracy`` with one annotator's ``label_0`` as the prediction and tie threshold 0. Keys
    ``"A|B"``; ``"all"`` pools every annotator pair's shared pairs."""
    from reward_models.agreement import pickapic_accuracy

    keyed = {name: {(r["jpg_0"], r["jpg_1"]): float(r["label_0"]) for r in rows} for name, rows in labels.items()}
    names, result, pooled = sorted(keyed), {}, ([], [])
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(keyed[a].keys() & keyed[b].keys())
            if not shared:
                continue
            first, second = [keyed[a][k] for k in shared], [keyed[b][k] for k in shared]
            result[f"{a}|{b}"] = {"agreement": pickapic_accuracy(first, second, 0.0).accuracy, "pairs": len(shared)}
            pooled[0].extend(first)
            pooled[1].extend(second)
    if pooled[0]:
        result["all"] = {"agreement": pickapic_accuracy(*pooled, 0.0).accuracy, "pairs": len(pooled[0])}
    return result
