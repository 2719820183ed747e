"""Named score normalisations, so weighted reward sums never hide a magic constant (reward-scorers.md §1.6, §12;
flow_grpo#188: normalise each reward before weighting).

- ``none``: raw scores.
- ``zscore``: ``(s - mean) / std`` with statistics given by the user (e.g. measured on a reference set).
- ``group_zscore``: per group (by default: per prompt), ``(s - mean_g) / (std_g + eps)`` with the population std,
  as in GRPO-style advantages; a group without spread (e.g. one member) gives 0.
- ``win_rate``: per group, the fraction of the *other* members with a lower score, ties counting ½ (a pointwise
  analogue of Pref-GRPO's pairwise win-rate reward); a one-member group gives ½. Range [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("none", "zscore", "group_zscore", "win_rate")


@dataclass(frozen=True)
class Normalization:
    """One named normalisation; ``mean``/``std`` are required for, and only for, ``zscore``."""

    kind: str = "none"
    mean: float | None = None
    std: float | None = None
    eps: float = 1e-6

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown normalisation {self.kind!r}; choose one of {KINDS}")
        given = self.mean is not None or self.std is not None
        if self.kind == "zscore":
            if self.mean is None or self.std is None:
                raise ValueError("zscore normalisation needs mean= and std= (statistics of a reference set)")
            if not (math.isfinite(self.std) and self.std > 0):
                raise ValueError(f"zscore std must be positive and finite, got {self.std}")
        elif given:
            raise ValueError(f"mean/std are only used by 'zscore', not by {self.kind!r}")

    def __call__(self, scores: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised float32 scores ``[B]``; ``groups [B]`` (integer ids) for the per-group kinds."""
        scores = scores.float()
        if self.kind == "none":
            return scores
        if self.kind == "zscore":
            return (scores - self.mean) / self.std
        if groups is None:
            raise ValueError(f"{self.kind!r} normalisation needs group ids (e.g. the prompt of each image)")
        if groups.shape != scores.shape:
            raise ValueError(f"groups {tuple(groups.shape)} must match scores {tuple(scores.shape)}")
        same = groups.to(scores.device).unsqueeze(0) == groups.to(scores.device).unsqueeze(1)  # [B, B]
        size = same.sum(1).float()
        if self.kind == "group_zscore":
            mean = (same * scores.unsqueeze(0)).sum(1) / size
            var = (same * (scores.unsqueeze(0) - mean.unsqueeze(1)) ** 2).sum(1) / size
            std = var.sqrt()
            return torch.where(std > 0, (scores - mean) / (std + self.eps), torch.zeros_like(scores))
        beats = (scores.unsqueeze(1) > scores.unsqueeze(0)).float() + 0.5 * (scores.unsqueeze(1) == scores.unsqueeze(0)).float()
        wins = (same * beats).sum(1) - 0.5  # drop the self-comparison (a tie, ½)
        others = size - 1
        return torch.where(others > 0, wins / others.clamp_min(1), torch.full_like(scores, 0.5))
