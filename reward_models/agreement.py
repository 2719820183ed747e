"""Agreement of a scorer with human preferences: the three protocols of reward-scorers.md §1.7.

They give different numbers for the same model (ImageReward on HPD v2: 74.0 under HPS's per-prompt protocol, 70.6
under MPS's), so every result carries the name of its protocol.

- ``"imagereward"`` — :func:`pair_accuracy` (ImageReward ``test.py``): all image pairs of all prompts, human ties
  skipped (counted in ``details["human_ties"]``), a predicted tie counts as wrong, accuracy = correct / pairs over
  the whole set.
- ``"hpdv2"`` — :func:`ranking_accuracy` (HPS ``evaluate_rank``/``inversion_score``): per prompt
  ``1 − inversions / C(n, 2)``, then the mean over prompts. A pair is an inversion only when model and humans order
  it strictly oppositely, so ties on either side are not inversions. HPS first turns scores into a strict ranking
  (ties broken by sort order); here tied scores stay tied, which differs only when a model outputs exactly equal
  scores.
- ``"pickapic"`` — :func:`pickapic_accuracy` (PickScore ``eval_preference_predictor.py``): predict a tie when
  ``|p0 − p1| ≤ t`` for the 2-way probabilities, else the likelier image; score 1 for the right label, 0.5 when
  exactly one of prediction and label is a tie, 0 otherwise; ``t`` is picked on a validation split from
  {0, 0.1, …, 1} by :func:`select_tie_threshold`.

Human ranks are "lower is better" (rank 1 = best), as in ImageReward's ``ranking`` and HPD v2's ``rank`` fields.
Pick-a-Pic labels are ``label_0``: 1 (first image preferred), 0 (second) or 0.5 (tie). A NaN prediction (e.g. a
VLM judge whose answer could not be parsed) counts as wrong in every protocol and is counted in
``nan_predictions``; it is never dropped silently.

:func:`evaluate_agreement` is the thin runner: it reads a local dataset, scores it with a :class:`Scorer` and applies
one protocol.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .base import Scorer

#: Tie thresholds PickScore's evaluation tries on ``validation_unique``.
TIE_THRESHOLDS: tuple[float, ...] = tuple(i / 10 for i in range(11))

PROTOCOLS = ("imagereward", "hpdv2", "pickapic")


@dataclass(frozen=True)
class Agreement:
    """An accuracy in [0, 1], the protocol that produced it and what it was computed over."""

    protocol: str
    accuracy: float
    count: int  #: pairs ("imagereward"), prompts ("hpdv2") or examples ("pickapic") the accuracy averages over
    nan_predictions: int = 0
    details: dict[str, float] = field(default_factory=dict)


def _check_groups(scores: Sequence[Sequence[float]], ranks: Sequence[Sequence[float]]) -> None:
    if len(scores) != len(ranks):
        raise ValueError(f"got scores for {len(scores)} prompts but human ranks for {len(ranks)}")
    for i, (s, r) in enumerate(zip(scores, ranks)):
        if len(s) != len(r):
            raise ValueError(f"prompt {i}: {len(s)} scores but {len(r)} human ranks")


def _pairs(n: int) -> Iterable[tuple[int, int]]:
    return ((i, j) for i in range(n) for j in range(i + 1, n))


def pair_accuracy(scores: Sequence[Sequence[float]], human_ranks: Sequence[Sequence[float]]) -> Agreement:
    """ImageReward's preference accuracy: over every image pair of every prompt whose human ranks differ, the share
    where the model's score is strictly higher for the better-ranked image (an equal score counts as wrong)."""
    _check_groups(scores, human_ranks)
    correct = total = nans = ties = 0
    for s, r in zip(scores, human_ranks):
        for i, j in _pairs(len(s)):
            if r[i] == r[j]:
                ties += 1
                continue
            total += 1
            if math.isnan(s[i]) or math.isnan(s[j]):
                nans += 1
            elif (r[i] < r[j] and s[i] > s[j]) or (r[i] > r[j] and s[i] < s[j]):
                correct += 1
    if total == 0:
        raise ValueError("no pair with different human ranks: accuracy is undefined")
    details = {"correct": float(correct), "human_ties": float(ties)}
    return Agreement("imagereward", correct / total, total, nans, details)


def ranking_accuracy(scores: Sequence[Sequence[float]], human_ranks: Sequence[Sequence[float]]) -> Agreement:
    """HPD v2's ranking accuracy: the mean over prompts of ``1 − inversions / C(n, 2)``, where a pair is an inversion
    when the higher-scored image has the strictly worse human rank (or a score is NaN)."""
    _check_groups(scores, human_ranks)
    per_prompt = []
    nans = 0
    for k, (s, r) in enumerate(zip(scores, human_ranks)):
        n = len(s)
        if n < 2:
            raise ValueError(f"prompt {k}: ranking accuracy needs at least 2 images, got {n}")
        inversions = 0
        for i, j in _pairs(n):
            if math.isnan(s[i]) or math.isnan(s[j]):
                nans += 1
                inversions += 1
            elif (s[i] > s[j] and r[i] > r[j]) or (s[i] < s[j] and r[i] < r[j]):
                inversions += 1
        per_prompt.append(1.0 - inversions / (n * (n - 1) / 2))
    if not per_prompt:
        raise ValueError("no prompts given")
    return Agreement("hpdv2", sum(per_prompt) / len(per_prompt), len(per_prompt), nans)


def _pick_score(prob_first: float, label: float, threshold: float) -> float:
    if math.isnan(prob_first):
        return 0.0
    p0, p1 = prob_first, 1.0 - prob_first
    pred = 0.5 if abs(p0 - p1) <= threshold else (1.0 if p0 > p1 else 0.0)
    if pred == label:
        return 1.0
    return 0.5 if 0.5 in (pred, label) else 0.0


def _check_pick(prob_first: Sequence[float], labels: Sequence[float]) -> None:
    if len(prob_first) != len(labels):
        raise ValueError(f"got {len(prob_first)} probabilities but {len(labels)} labels")
    if not labels:
        raise ValueError("no examples given")
    for i, label in enumerate(labels):
        if label not in (0.0, 0.5, 1.0):
            raise ValueError(f"example {i}: label_0 must be 1, 0 or 0.5 (tie), got {label!r}")


def pickapic_accuracy(prob_first: Sequence[float], labels: Sequence[float], threshold: float) -> Agreement:
    """Pick-a-Pic accuracy with ties: ``prob_first[i]`` = P(first image ≻ second), ``labels[i]`` = ``label_0``."""
    _check_pick(prob_first, labels)
    points = [_pick_score(p, label, threshold) for p, label in zip(prob_first, labels)]
    nans = sum(math.isnan(p) for p in prob_first)
    return Agreement("pickapic", sum(points) / len(points), len(points), nans, {"tie_threshold": threshold})


def select_tie_threshold(
    prob_first: Sequence[float], labels: Sequence[float], candidates: Sequence[float] = TIE_THRESHOLDS
) -> float:
    """The candidate with the best :func:`pickapic_accuracy` on validation data (the first one among equals)."""
    _check_pick(prob_first, labels)
    accuracies = [pickapic_accuracy(prob_first, labels, t).accuracy for t in candidates]
    return candidates[accuracies.index(max(accuracies))]


# ---- runner ------------------------------------------------------------------------------------------------------

#: Column names of the public test files: ImageReward ``data/test.json``, HPD v2 ``test.json``, Pick-a-Pic parquet.
DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "imagereward": {"prompt": "prompt", "images": "generations", "ranks": "ranking"},
    "hpdv2": {"prompt": "prompt", "images": "image_path", "ranks": "rank"},
    "pickapic": {"prompt": "caption", "image_0": "jpg_0", "image_1": "jpg_1", "label": "label_0"},
}


def load_rows(source: str | Path | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows of a local dataset: a ``.json``/``.jsonl``/``.parquet``/``.csv`` file or a ``save_to_disk`` folder read
    with ``datasets``, or any iterable of mappings (a ``datasets.Dataset``, a list of dicts)."""
    if not isinstance(source, (str, Path)):
        return list(source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"agreement dataset {path} does not exist")
    import datasets

    if path.is_dir():
        return list(datasets.load_from_disk(str(path)))
    builders = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
    if path.suffix not in builders:
        raise ValueError(f"{path}: unsupported dataset file type {path.suffix!r}; use one of {sorted(builders)}")
    return list(datasets.load_dataset(builders[path.suffix], data_files=str(path), split="train"))


def check_rows(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str], image_root: str | Path | None,
               source: str = "dataset") -> None:
    """Every row has the protocol's ``columns`` (``{key: column name}``; else ``KeyError``) and every image given as
    a path exists (else ``ValueError``); :func:`evaluate_agreement` checks this before scoring, ``visalign agreement``
    before the model loads."""
    if not rows:
        raise ValueError(f"{source}: no rows")
    root = Path(image_root) if image_root is not None else None
    image_keys = [k for k in columns if k in ("images", "image_0", "image_1")]
    for i, row in enumerate(rows):
        missing = [f"{name!r} ({key})" for key, name in columns.items() if name not in row]
        if missing:
            raise KeyError(f"{source}, row {i}: no column {', '.join(missing)}; columns: {sorted(row)}; "
                             "map other names with columns={KEY: NAME} (--column KEY=NAME on the command line)")
        for key in image_keys:
            cells = row[columns[key]] if key == "images" else [row[columns[key]]]
            if isinstance(cells, (str, bytes)) or not isinstance(cells, Sequence):
                raise ValueError(f"{source}, row {i}, column {columns[key]!r}: expected a list of images, "
                                 f"got {type(cells).__name__}")
            for cell in cells:
                if isinstance(cell, str) and not Path(_image(cell, root)).is_file():
                    raise ValueError(f"{source}, row {i}, column {columns[key]!r}: image file "
                                     f"{_image(cell, root)} does not exist")


def _image(value: Any, image_root: Path | None) -> Any:
    """Paths are joined to ``image_root``; raw bytes (Pick-a-Pic's ``jpg_*``) and ``{"bytes": ...}`` are decoded."""
    if isinstance(value, Mapping) and value.get("bytes") is not None:
        value = value["bytes"]
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if isinstance(value, str) and image_root is not None:
        return image_root / value
    return value


def evaluate_agreement(
    scorer: Scorer,
    dataset: str | Path | Iterable[Mapping[str, Any]],
    protocol: str,
    *,
    image_root: str | Path | None = None,
    columns: Mapping[str, str] | None = None,
    tie_threshold: float = 0.0,
    validation: str | Path | Iterable[Mapping[str, Any]] | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = False,
) -> Agreement:
    """Score a local preference dataset with ``scorer`` and measure agreement under ``protocol``.

    Ranking protocols (``"imagereward"``, ``"hpdv2"``) read one row per prompt with a list of images and a list of
    human ranks; all images are scored in one batched call. ``"pickapic"`` reads one row per pair and uses
    ``scorer.preference`` (for a pointwise scorer σ of the logit difference, the 2-way softmax of PickScore's
    evaluation); its tie threshold is selected on ``validation`` when given, else ``tie_threshold`` is used.
    ``columns`` overrides :data:`DEFAULT_COLUMNS`; image paths are relative to ``image_root``; ``progress`` shows
    the scorer's progress bar.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown agreement protocol {protocol!r}; choose one of {PROTOCOLS}")
    cols = {**DEFAULT_COLUMNS[protocol], **(columns or {})}
    root = Path(image_root) if image_root is not None else None
    opts = {"batch_size": batch_size, "num_workers": num_workers, "progress": progress}
    if protocol == "pickapic":
        if validation is not None:
            p, labels = _pick_predictions(scorer, validation, cols, root, opts)
            tie_threshold = select_tie_threshold(p, labels)
        p, labels = _pick_predictions(scorer, dataset, cols, root, opts)
        return pickapic_accuracy(p, labels, tie_threshold)

    source = str(dataset) if isinstance(dataset, (str, Path)) else "dataset"
    rows = load_rows(dataset)
    check_rows(rows, cols, root, source)
    images, prompts, ranks, sizes = [], [], [], []
    for i, row in enumerate(rows):
        row_images = list(row[cols["images"]])  # check_rows made sure every column is there
        row_ranks = [float(r) for r in row[cols["ranks"]]]
        if len(row_images) != len(row_ranks):
            raise ValueError(f"{source}, row {i}: {len(row_images)} images but {len(row_ranks)} ranks")
        images += [_image(x, root) for x in row_images]
        prompts += [row[cols["prompt"]]] * len(row_images)
        ranks.append(row_ranks)
        sizes.append(len(row_images))
    flat = scorer.score(images, prompts, **opts).scores.tolist()
    scores, start = [], 0
    for n in sizes:
        scores.append(flat[start:start + n])
        start += n
    measure = pair_accuracy if protocol == "imagereward" else ranking_accuracy
    return measure(scores, ranks)


def _pick_predictions(
    scorer: Scorer, dataset: Any, cols: Mapping[str, str], root: Path | None, opts: dict[str, Any]
) -> tuple[list[float], list[float]]:
    source = str(dataset) if isinstance(dataset, (str, Path)) else "dataset"
    rows = load_rows(dataset)
    check_rows(rows, cols, root, source)
    prompts = [row[cols["prompt"]] for row in rows]  # check_rows made sure every column is there
    first = [_image(row[cols["image_0"]], root) for row in rows]
    second = [_image(row[cols["image_1"]], root) for row in rows]
    labels = [float(row[cols["label"]]) for row in rows]
    probs = scorer.preference(prompts, first, second, **opts).probs.tolist()
    return probs, labels
