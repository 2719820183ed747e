"""CLIP score, parameterised over the variants found in the literature (reward-scorers.md §4, §1.6).

- Hessel et al., "CLIPScore" (EMNLP 2021), Eq. 1: ``w * max(cos(E_c, E_v), 0)`` with ``w = 2.5``, clamped per
  sample, captions prefixed with ``"A photo depicts "`` (the defaults here, on OpenAI ViT-B/32).
- torchmetrics ``CLIPScore``: ``max(mean(100 * cos), 0)`` — ``weight=100, clamp="after_mean", prefix=""``; the
  per-sample scores are then unclamped ``100 * cos`` and :meth:`CLIPScore.aggregate` applies the clamp.
- raw cosine (ImageReward's baseline): ``weight=1, clamp="none", prefix=""``.
The variant is recorded in ``Provenance.variant``. Backbone: transformers ``CLIPModel`` or open_clip.
"""

from __future__ import annotations

from typing import Literal

import torch

from ._clip import DualEncoderScorer, HFClip, OpenClip
from .base import ScorerInfo
from .preprocess import CenterCropTransform

WEIGHTS = (1.0, 2.5, 100.0)
CLAMPS = ("per_sample", "after_mean", "none")
HESSEL_PREFIX = "A photo depicts "


class CLIPScore(DualEncoderScorer):
    """CLIP score with weight ``w`` ∈ {1, 2.5, 100}, ``clamp`` ∈ {per_sample, after_mean, none} and a caption
    ``prefix``. ``backend="transformers"``: ``model`` is a ``CLIPModel`` hub id or folder. ``backend="open_clip"``:
    ``model`` is a state-dict file / folder / hub repo holding ``filename`` for architecture ``arch``."""

    def __init__(self, model: str = "openai/clip-vit-base-patch32", *,
                 backend: Literal["transformers", "open_clip"] = "transformers", weight: float = 2.5,
                 clamp: str = "per_sample", prefix: str = HESSEL_PREFIX, arch: str | None = None,
                 filename: str = "open_clip_model.safetensors", tokenizer: str | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                 resize: Literal["pil", "torch"] = "pil"):
        if float(weight) not in WEIGHTS:
            raise ValueError(f"CLIP score weight must be one of {WEIGHTS}, got {weight!r}")
        if clamp not in CLAMPS:
            raise ValueError(f"CLIP score clamp must be one of {CLAMPS}, got {clamp!r}")
        if backend == "transformers":
            backbone = HFClip(model, tokenizer=tokenizer, device=device, dtype=dtype)
        elif backend == "open_clip":
            if arch is None:
                raise ValueError("backend='open_clip' needs arch= (an open_clip model name, e.g. 'ViT-B-32')")
            backbone = OpenClip(model, arch=arch, filename=filename, device=device, dtype=dtype)
        else:
            raise ValueError(f"backend must be 'transformers' or 'open_clip', got {backend!r}")
        self.weight, self.clamp, self.prefix = float(weight), clamp, prefix
        low = 0.0 if clamp == "per_sample" else -self.weight
        self.info = ScorerInfo(name="clip_score", formula=f"{self.weight:g} * cos(t, v), clamp={clamp}",
                               raw_range=(low, self.weight), differentiable=True)
        super().__init__(backbone, CenterCropTransform(backbone.image_size, resize),
                         variant=f"w={self.weight:g}, clamp={clamp}, prefix={prefix!r}, backend={backend}")

    def text_inputs(self, prompts: list[str]) -> list[str]:
        return [self.prefix + p for p in prompts]

    def from_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        scaled = self.weight * cosine
        return scaled.clamp_min(0.0) if self.clamp == "per_sample" else scaled

    def aggregate(self, scores: torch.Tensor) -> torch.Tensor:
        mean = scores.float().mean()
        return mean.clamp_min(0.0) if self.clamp == "after_mean" else mean

    def preference_logits(self, scores: torch.Tensor) -> torch.Tensor:
        """``exp(logit_scale) * cos`` recovered from the score (per-sample clamping maps negatives to a tie)."""
        return self.backbone.logit_scale.exp().to(scores.device) / self.weight * scores
