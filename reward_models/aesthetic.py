"""LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor; reward-scorers.md §6).

``score = MLP(e / |e|)`` where ``e`` is the projected CLIP ViT-L/14 image embedding and the MLP is five Linear layers
with dropout and no activations (state-dict keys ``layers.{0,2,4,6,7}``); scores live on the AVA-style 1-10 scale.
The prompt is ignored, so scores are comparable across prompts. The embedding runs in the model dtype, the
normalisation and head in float32 (as upstream: fp16 CLIP on GPU, fp32 head). The backbone is a full
transformers ``CLIPModel`` (its text tower is loaded but unused) so hub CLIP checkpoints load strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._clip import HFClip
from .base import Provenance, Scorer, ScorerInfo
from .preprocess import CenterCropTransform
from .weights import file_sha256, load_strict, read_state_dict

#: sha256 of ``sac+logos+ava1-l14-linearMSE.pth``, the standard head (reward-scorers.md §6.1).
STANDARD_HEAD_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"


class AestheticHead(nn.Module):
    """The v2 head: Linear dim→1024→128→64→16→1, Dropout 0.2/0.2/0.1 after the first three, no activations."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LaionAesthetic(Scorer):
    """Aesthetic score from a CLIP checkpoint (``model``) and the head file ``head`` (``.pth`` state dict or
    ``.safetensors``; the standard one is ``sac+logos+ava1-l14-linearMSE.pth`` from the GitHub repo)."""

    info = ScorerInfo(
        name="aesthetic", formula="MLP(e / |e|)", raw_range=(-float("inf"), float("inf")), differentiable=True,
        needs_prompt=False, comparable_across_prompts=True,
    )

    def __init__(self, model: str = "openai/clip-vit-large-patch14", *, head: str | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                 resize: Literal["pil", "torch"] = "pil"):
        if head is None:
            raise ValueError("the aesthetic scorer needs head=PATH to the MLP weights, e.g. "
                             "sac+logos+ava1-l14-linearMSE.pth from christophschuhmann/improved-aesthetic-predictor "
                             f"(sha256 {STANDARD_HEAD_SHA256})")
        self.backbone = HFClip(model, device=device, dtype=dtype, load_tokenizer=False)
        path = Path(head)
        if not path.is_file():
            raise FileNotFoundError(f"aesthetic head file {path} does not exist")
        self.head = AestheticHead(self.backbone.net.config.projection_dim)
        load_strict(self.head, read_state_dict(path), path)
        self.head = self.head.to(self.backbone.device).eval().requires_grad_(False)
        self.transform = CenterCropTransform(self.backbone.image_size, resize)
        head_sha = file_sha256(path)
        self.provenance = Provenance(
            f"{model} + {path.name}", f"{self.backbone.weights_sha256}+{head_sha}", self.transform.variant,
            str(self.backbone.dtype), "standard head" if head_sha == STANDARD_HEAD_SHA256 else "custom head",
        )

    def encode_prompts(self, prompts: list[str]) -> None:
        return None

    def forward(self, inputs: torch.Tensor, prompt_context: None, prompt_index: torch.Tensor):
        embedding = self.backbone.image_features(inputs).float()
        scores = self.head(F.normalize(embedding, dim=-1)).squeeze(-1)
        return scores, {"embedding_norm": embedding.norm(dim=-1)}
