"""Weighted sums of scorers with explicit per-component normalisation (reward-scorers.md §1.6, §12).

``WeightedSum({"pickscore": 1.0, "hps": 0.5})`` loads each named scorer (or takes given instances), scores the same
images and prompts with each, normalises each component as asked (default: none) and returns
``sum_k w_k * norm_k(s_k)``. Every component survives in ``details``: ``"<name>"`` raw scores,
``"<name>/normalized"``, and the component's own details as ``"<name>/<key>"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .base import Scorer, ScoreResult
from .inputs import Images, per_image_prompts, unique_prompts
from .normalize import Normalization
from .registry import load_scorer


class WeightedSum:
    """``weights``: scorer name -> weight. ``scorers``: already built instances by name (others are loaded with
    ``load_scorer(name, **load_kwargs.get(name, {}))``). ``normalize``: name -> :class:`Normalization`."""

    def __init__(self, weights: Mapping[str, float], *, scorers: Mapping[str, Scorer] | None = None,
                 normalize: Mapping[str, Normalization] | None = None,
                 load_kwargs: Mapping[str, Mapping[str, Any]] | None = None):
        if not weights:
            raise ValueError("WeightedSum needs at least one scorer weight")
        for name, w in weights.items():
            if not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"weight of {name!r} must be a finite number, got {w!r}")
        scorers, normalize, load_kwargs = dict(scorers or {}), dict(normalize or {}), dict(load_kwargs or {})
        for label, mapping in (("scorers", scorers), ("normalize", normalize), ("load_kwargs", load_kwargs)):
            extra = set(mapping) - set(weights)
            if extra:
                raise KeyError(f"{label} names {sorted(extra)} have no weight; weights are for {sorted(weights)}")
        self.weights = {k: float(v) for k, v in weights.items()}
        self.normalize = {k: normalize.get(k, Normalization()) for k in weights}
        self.scorers = {k: scorers[k] if k in scorers else load_scorer(k, **load_kwargs.get(k, {})) for k in weights}

    def score(self, images: Images, prompts: str | Sequence[str], *, groups: torch.Tensor | None = None,
              **kwargs: Any) -> ScoreResult:
        """Weighted sum of normalised component scores. ``groups`` (integer ids ``[B]``) drive the per-group
        normalisations; by default each prompt is a group. ``kwargs`` go to every component's ``score``."""
        total, details, provenance = None, {}, {}
        for name, scorer in self.scorers.items():
            result = scorer.score(images, prompts, **kwargs)
            if groups is None:
                groups = unique_prompts(per_image_prompts(prompts, len(result)))[1]
            normalized = self.normalize[name](result.scores, groups)
            details[name] = result.scores
            details[f"{name}/normalized"] = normalized
            details.update({f"{name}/{k}": v for k, v in result.details.items()})
            provenance[name] = result.provenance[scorer.info.name]
            term = self.weights[name] * normalized.to(result.scores.device)
            total = term if total is None else total + term.to(total.device)
        return ScoreResult(total, details, provenance)
