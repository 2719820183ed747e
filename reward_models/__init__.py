"""reward_models: image reward scorers (PickScore, HPS v2/v2.1, CLIP score, LAION aesthetic, ...) behind one API.

>>> from reward_models import load_scorer
>>> scorer = load_scorer("pickscore", model="yuvalkirstain/PickScore_v1", device="cuda", dtype="bf16")
>>> result = scorer.score(["a.png", "b.png"], "a cat")   # result.scores: float32 [2]

Scorer modules are imported on first use; importing this package loads only torch.
"""

from .base import (
    ImageTransform,
    PreferenceResult,
    Provenance,
    RankResult,
    Scorer,
    ScoreResult,
    ScorerInfo,
    resolve_dtype,
)
from .combine import WeightedSum
from .normalize import Normalization
from .registry import list_scorers, load_scorer, register_scorer

__all__ = [
    "ImageTransform",
    "Normalization",
    "PreferenceResult",
    "Provenance",
    "RankResult",
    "ScoreResult",
    "Scorer",
    "ScorerInfo",
    "WeightedSum",
    "list_scorers",
    "load_scorer",
    "register_scorer",
    "resolve_dtype",
]
