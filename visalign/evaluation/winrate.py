"""Head-to-head win rates of model A against model B under one scorer, with paired bootstrap confidence intervals.

Protocol (reference ``diffusion-methods.md`` §16; DPO paper Fig. 6, ``compare_rate.py``): both models render the same
prompts from the same seeds; image ``k`` of prompt ``p`` from A is compared with image ``k`` of prompt ``p`` from B
under the same scorer. Scores are arrays ``[P]`` or ``[P, N]`` (P prompts, N seeds each).

- Outcome of a comparison: a strict *win* when A beats B by more than ``tie_tolerance``, a *loss* when B beats A by
  more than it, a *tie* otherwise (``|a - b| <= tie_tolerance``); "beats" follows the scorer's direction
  (``higher_is_better``). Rates are fractions of all ``P * N`` comparisons and sum to 1; ties are never split.
- ``mean_diff`` is the raw ``mean(a - b)`` in the scorer's own units (negative is better for lower-is-better scorers).
- Confidence intervals: percentile bootstrap over *prompts* (Efron & Tibshirani 1993, ch. 13), paired (a resampled
  prompt brings its A and B images and all N seeds with it, since seeds of one prompt are not independent), seeded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: Upper bound on ``resamples * prompts`` indices held in memory at once by :func:`bootstrap_means`.
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class HeadToHead:
    """Result of :func:`head_to_head`: point estimates, their intervals (``(low, high)``) and how they were made."""

    num_prompts: int
    samples_per_prompt: int
    win: float
    tie: float
    loss: float
    win_ci: tuple[float, float]
    tie_ci: tuple[float, float]
    loss_ci: tuple[float, float]
    mean_a: float
    mean_b: float
    median_a: float
    median_b: float
    mean_diff: float
    mean_diff_ci: tuple[float, float]
    tie_tolerance: float
    higher_is_better: bool
    confidence: float
    num_resamples: int
    seed: int

    def as_dict(self) -> dict:
        return asdict(self)


def as_score_matrix(scores, name: str) -> np.ndarray:
    """``[P]`` or ``[P, N]`` scores (array, tensor or nested list) as float64 ``[P, N]``; empty or non-finite raise."""
    if hasattr(scores, "detach"):
        scores = scores.detach().float().cpu().numpy()
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"{name}: expected scores of shape [prompts] or [prompts, seeds], got {matrix.shape}")
    bad = np.argwhere(~np.isfinite(matrix))
    if len(bad):
        p, k = bad[0]
        raise ValueError(f"{name}: non-finite score {matrix[p, k]} at prompt {p}, seed {k}")
    return matrix


def outcomes(scores_a, scores_b, *, tie_tolerance: float = 0.0, higher_is_better: bool = True) -> np.ndarray:
    """Per comparison ``[P, N]``: ``1`` A wins, ``0`` tie, ``-1`` A loses (module docstring)."""
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0; got {tie_tolerance}")
    a, b = as_score_matrix(scores_a, "scores_a"), as_score_matrix(scores_b, "scores_b")
    if a.shape != b.shape:
        raise ValueError(f"scores_a {a.shape} and scores_b {b.shape} must have the same [prompts, seeds] shape")
    margin = (a - b) if higher_is_better else (b - a)
    return np.where(margin > tie_tolerance, 1, np.where(margin < -tie_tolerance, -1, 0)).astype(np.int8)


def bootstrap_means(per_prompt: np.ndarray, *, num_resamples: int, seed: int) -> np.ndarray:
    """``[num_resamples, K]`` means of ``per_prompt [P, K]`` over prompts drawn with replacement (P draws each),
    from ``numpy.random.default_rng(seed)``; all K statistics share the draws (a paired bootstrap)."""
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1; got {num_resamples}")
    per_prompt = np.asarray(per_prompt, dtype=np.float64)
    num_prompts = per_prompt.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // num_prompts)
    means = []
    for start in range(0, num_resamples, chunk):
        rows = rng.integers(0, num_prompts, size=(min(chunk, num_resamples - start), num_prompts))
        means.append(per_prompt[rows].mean(axis=1))
    return np.concatenate(means)


def percentile_interval(distribution: np.ndarray, confidence: float) -> np.ndarray:
    """``[2, K]`` lower and upper ``(1 ± confidence) / 2`` quantiles of each column of ``distribution [B, K]``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    alpha = (1 - confidence) / 2
    return np.quantile(distribution, [alpha, 1 - alpha], axis=0)


def head_to_head(
    scores_a,
    scores_b,
    *,
    tie_tolerance: float = 0.0,
    higher_is_better: bool = True,
    num_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> HeadToHead:
    """Strict win/tie/loss rates of A against B, mean and median score of each, the mean difference ``a - b``, and
    paired bootstrap intervals over prompts for the three rates and the difference (module docstring)."""
    a, b = as_score_matrix(scores_a, "scores_a"), as_score_matrix(scores_b, "scores_b")
    result = outcomes(a, b, tie_tolerance=tie_tolerance, higher_is_better=higher_is_better)
    per_prompt = np.stack([(result == 1).mean(1), (result == 0).mean(1), (result == -1).mean(1), (a - b).mean(1)], 1)
    point = per_prompt.mean(0)  # every prompt has N comparisons, so the mean of prompt means is the overall mean
    low, high = percentile_interval(bootstrap_means(per_prompt, num_resamples=num_resamples, seed=seed), confidence)
    ci = [(float(lo), float(hi)) for lo, hi in zip(low, high)]
    return HeadToHead(
        num_prompts=a.shape[0], samples_per_prompt=a.shape[1],
        win=float(point[0]), tie=float(point[1]), loss=float(point[2]),
        win_ci=ci[0], tie_ci=ci[1], loss_ci=ci[2],
        mean_a=float(a.mean()), mean_b=float(b.mean()), median_a=float(np.median(a)), median_b=float(np.median(b)),
        mean_diff=float(point[3]), mean_diff_ci=ci[3],
        tie_tolerance=float(tie_tolerance), higher_is_better=higher_is_better, confidence=confidence,
        num_resamples=num_resamples, seed=seed,
    )
