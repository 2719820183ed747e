"""PickScore v1 (Kirstain et al., "Pick-a-Pic", NeurIPS 2023; reward-scorers.md §2).

``score = exp(logit_scale) * cos(t, v)`` with a transformers ``CLIPModel`` (ViT-H/14); image preprocessing as the
laion ViT-H ``CLIPImageProcessor`` (shortest edge 224 bicubic, centre crop, OpenAI mean/std), done by
:class:`~reward_models.preprocess.CenterCropTransform`. ``rank`` gives the paper's softmax over candidates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from ._clip import DualEncoderScorer, HFClip
from .base import ScorerInfo
from .preprocess import CenterCropTransform

#: The PickScore repo ships no processor; upstream loads it from the base model's repo.
DEFAULT_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


class PickScore(DualEncoderScorer):
    """PickScore on a transformers CLIP checkpoint (``model``: hub id or folder). ``tokenizer`` defaults to the
    model folder when it holds tokenizer files, else to the laion ViT-H repo. ``resize="torch"`` swaps PIL's resize
    for the differentiable tensor one in :meth:`score` too."""

    info = ScorerInfo(
        name="pickscore", formula="exp(logit_scale) * cos(t, v)", raw_range=(-100.0, 100.0), differentiable=True,
    )

    def __init__(self, model: str = "yuvalkirstain/PickScore_v1", *, tokenizer: str | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                 resize: Literal["pil", "torch"] = "pil"):
        if tokenizer is None:
            has_files = any((Path(model) / f).is_file() for f in _TOKENIZER_FILES)
            tokenizer = model if has_files else DEFAULT_TOKENIZER
        backbone = HFClip(model, tokenizer=tokenizer, device=device, dtype=dtype)
        super().__init__(backbone, CenterCropTransform(backbone.image_size, resize))

    def from_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        return self.backbone.logit_scale.exp() * cosine
