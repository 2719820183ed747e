"""Human Preference Score v2 / v2.1 (Wu et al., "Human Preference Score v2", 2023; reward-scorers.md §3).

``score = cos(t, v)`` of open_clip ViT-H-14 features after HPS's ``ResizeMaxSize`` preprocessing (longest edge 224,
zero pad). v2.0 and v2.1 scores are not comparable with each other, so the version is a required choice recorded
in every result. Pairwise/listwise probabilities use ``exp(logit_scale) * cos``, the logits HPS was trained with.
Differences from upstream: weights are loaded once (``hpsv2.score`` re-reads them per call), no LAION download
before the HPS weights, the pad is applied even when the longest edge is already 224, and compute runs in the
requested dtype instead of autocast.
"""

from __future__ import annotations

import torch

from ._clip import DualEncoderScorer, OpenClip
from .base import ScorerInfo
from .preprocess import PadTransform

#: Files of the ``xswu/HPSv2`` hub repo, per version.
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


class HPSv2(DualEncoderScorer):
    """HPS ``version`` ("v2.0" or "v2.1") from ``model``: the hub repo (default ``xswu/HPSv2``), a folder holding
    the version's file, or a checkpoint file (``.pt`` with a ``state_dict`` key, or ``.safetensors``). ``arch`` is
    the open_clip architecture name."""

    info = ScorerInfo(name="hps", formula="cos(t, v)", raw_range=(-1.0, 1.0), differentiable=True)

    def __init__(self, model: str = "xswu/HPSv2", *, version: str = "v2.1", arch: str = "ViT-H-14",
                 device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None):
        if version not in HPS_FILES:
            raise ValueError(f"HPS version must be one of {sorted(HPS_FILES)}, got {version!r}")
        backbone = OpenClip(model, arch=arch, filename=HPS_FILES[version], device=device, dtype=dtype)
        super().__init__(backbone, PadTransform(backbone.image_size), variant=f"HPS {version}")
        self.version = version

    def from_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        return cosine

    def preference_logits(self, scores: torch.Tensor) -> torch.Tensor:
        return self.backbone.logit_scale.exp().to(scores.device) * scores
