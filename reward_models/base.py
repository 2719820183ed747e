"""The scorer interface every reward model implements, and the result types it returns.

A scorer maps (image, prompt) pairs to float32 scores ``[B]``. Implementations provide four pieces:

- ``info``: a class-level :class:`ScorerInfo` (raw range, direction, differentiability, comparability);
- ``transform``: a picklable per-image preprocessing object (:class:`ImageTransform`) run in DataLoader workers,
  with a batched tensor path for gradients;
- ``encode_prompts(prompts)``: work done once per distinct prompt (text embeddings, token ids, the strings);
- ``forward(inputs, prompt_context, prompt_index)``: the batched model computation.

The base class owns the rest: input decoding, batching, the DataLoader, no-grad scoring, the differentiable path
(:meth:`Scorer.score_tensor`), pairwise preference and listwise ranking, and provenance on every result.
Scores are only comparable between images of the same prompt unless ``info.comparable_across_prompts``
(reference: reward-scorers.md, summary; tgxs002/HPSv2#9).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .inputs import Images, ImageItem, as_items, check_pixel_range, decode, per_image_prompts, unique_prompts

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


#: CPU features with native bf16 dot products (x86 AVX512-BF16, AMX-BF16; Arm BF16), in ``torch.cpu.get_capabilities``.
_CPU_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def auto_dtype(device: str | torch.device) -> torch.dtype:
    """Half precision where ``device`` computes it natively, else float32: CUDA -> bfloat16 (float16 on GPUs without
    bf16); CPU -> bfloat16 with native bf16 dot products (:data:`_CPU_BF16_FEATURES`), else float32; others float32.
    Scorers keep their final products (cosines, heads, scores) in float32 whatever this returns."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return torch.bfloat16 if any(capabilities.get(f, False) for f in _CPU_BF16_FEATURES) else torch.float32
    return torch.float32


def resolve_dtype(dtype: torch.dtype | str | None, device: str | torch.device | None = None) -> torch.dtype:
    """``None`` -> float32; strings such as ``"bf16"``/``"float16"`` -> the torch dtype; ``"auto"`` ->
    :func:`auto_dtype` of ``device`` (which must then be given); bad names raise."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() == "auto":
        if device is None:
            raise ValueError("dtype 'auto' depends on the device, and none was given; pick float32, bfloat16 or "
                             "float16 explicitly")
        return auto_dtype(device)
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose 'auto' or one of {sorted(_DTYPES)}") from None


@dataclass(frozen=True)
class ScorerInfo:
    """What a scorer's raw number means (reward-scorers.md §1.6, §13)."""

    name: str
    formula: str  #: the raw score, e.g. ``"exp(logit_scale) * cos(t, v)"``
    raw_range: tuple[float, float]  #: bounds of the raw score (``±inf`` when unbounded)
    differentiable: bool  #: :meth:`Scorer.score_tensor` propagates gradients to the pixels
    higher_is_better: bool = True
    needs_prompt: bool = True
    comparable_across_prompts: bool = False


@dataclass(frozen=True)
class Provenance:
    """What produced a score: enough to tell two runs' numbers apart."""

    model_id: str  #: hub id or local path as given
    weights_sha256: str | None  #: sha256 of the weight file (of the sorted per-file hashes when sharded)
    preprocessing: str  #: preprocessing variant actually used, e.g. ``"clip-crop224-bicubic-pil"``
    dtype: str  #: compute dtype of the model, e.g. ``"torch.bfloat16"``
    variant: str = ""  #: scorer-specific variant (HPS version, CLIP-score weight/clamp/prefix, ...)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoreResult:
    """Float32 ``scores [B]``, per-sample ``details`` (each ``[B]``) and the provenance of every scorer involved."""

    scores: torch.Tensor
    details: dict[str, torch.Tensor] = field(default_factory=dict)
    provenance: dict[str, Provenance] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.scores.shape[0]

    def records(self) -> list[dict[str, float]]:
        """One plain dict per sample: ``score`` and every detail, as Python floats."""
        columns = {"score": self.scores, **self.details}
        cpu = {k: v.detach().float().cpu().tolist() for k, v in columns.items()}
        return [{k: cpu[k][i] for k in cpu} for i in range(len(self))]


@dataclass
class PreferenceResult:
    """``probs[i]`` = P(a_i ≻ b_i); ``details`` hold what it came from (``score_a``/``score_b`` for pointwise scorers)."""

    probs: torch.Tensor
    details: dict[str, torch.Tensor] = field(default_factory=dict)
    provenance: dict[str, Provenance] = field(default_factory=dict)


@dataclass
class RankResult:
    """Scores of K candidates for one prompt, their softmax probabilities and the order best-first."""

    scores: torch.Tensor
    probs: torch.Tensor
    order: torch.Tensor
    provenance: dict[str, Provenance] = field(default_factory=dict)


class ImageTransform(Protocol):
    """Per-image preprocessing, picklable and model-free so DataLoader workers can run it."""

    variant: str  #: recorded in :attr:`Provenance.preprocessing` by :meth:`Scorer.score`
    batch_variant: str  #: recorded by :meth:`Scorer.score_tensor` (the differentiable tensor path)

    def __call__(self, image: torch.Tensor) -> Any:
        """One decoded ``[3,H,W]`` image (uint8, or float in [0,1]) -> the model input for that image (no grad)."""

    def batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable path: float ``[B,3,H,W]`` in [0,1] -> model inputs; gradients flow to ``pixels``."""


class _DecodedImages(Dataset):
    def __init__(self, items: Sequence[ImageItem], transform: ImageTransform):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.transform(decode(self.items[i], i))


class Scorer(abc.ABC):
    """Base class of all reward scorers; see the module docstring for what subclasses implement."""

    info: ScorerInfo  #: class attribute, or set per instance when it depends on options (CLIP score's weight)
    transform: ImageTransform
    provenance: Provenance

    # ---- implemented by subclasses -------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Any:
        """Per-prompt work, done once for each distinct prompt of a call."""

    @abc.abstractmethod
    def forward(self, inputs: Any, prompt_context: Any, prompt_index: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Score one batch: ``inputs`` from :meth:`collate`, the context from :meth:`encode_prompts`, and for each
        image the index of its prompt. Returns float32 scores ``[b]`` and per-sample details ``{name: [b]}``."""

    def collate(self, items: list[Any]) -> Any:
        """Stack transformed images into a batch (override for non-tensor inputs)."""
        return torch.stack(items)

    def preference_logits(self, scores: torch.Tensor) -> torch.Tensor:
        """Bradley–Terry logits of raw scores, used by :meth:`preference` and :meth:`rank`. Identity by default
        (right for PickScore, whose score already carries ``exp(logit_scale)``); cosine scorers scale by theirs."""
        return scores

    def aggregate(self, scores: torch.Tensor) -> torch.Tensor:
        """Corpus-level score of many samples: the mean (CLIP score overrides it for its clamp-after-mean variant)."""
        return scores.float().mean()

    # ---- provided ------------------------------------------------------------------------------------------
    def score(
        self,
        images: Images,
        prompts: str | Sequence[str],
        *,
        batch_size: int = 16,
        num_workers: int = 0,
        progress: bool = False,
    ) -> ScoreResult:
        """Score images (paths, PIL, uint8/float tensors) against one prompt per image, without gradients.

        Images are decoded and preprocessed in a DataLoader (``num_workers`` processes); each distinct prompt is
        encoded once. ``prompts`` may be a single string for all images.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        items = as_items(images)
        prompt_list = per_image_prompts(prompts, len(items))
        distinct, index = unique_prompts(prompt_list)
        if isinstance(items, torch.Tensor):
            num_workers = 0  # already in memory (maybe on GPU): nothing to decode in parallel
        loader = DataLoader(
            _DecodedImages(items, self.transform), batch_size=batch_size, num_workers=num_workers,
            collate_fn=self.collate, shuffle=False,
        )
        scores, details = [], []
        with torch.no_grad():
            context = self.encode_prompts(distinct)
            start = 0
            for inputs in tqdm(loader, disable=not progress, desc=f"scoring ({self.info.name})", unit="batch"):
                stop = min(start + batch_size, len(items))
                s, d = self.forward(inputs, context, index[start:stop])
                scores.append(s)
                details.append(d)
                start = stop
        return self._result(scores, details)

    def score_tensor(self, pixels: torch.Tensor, prompts: str | Sequence[str]) -> ScoreResult:
        """Differentiable scoring of float ``[B,3,H,W]`` pixels in [0,1]: gradients flow to ``pixels`` through the
        tensor preprocessing (``transform.batch``) and the model. Only for ``info.differentiable`` scorers."""
        if not self.info.differentiable:
            raise TypeError(f"scorer {self.info.name!r} is not differentiable; use score() instead")
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"score_tensor expects a float [B,3,H,W] tensor, got {getattr(pixels, 'shape', pixels)}")
        if not pixels.is_floating_point():
            raise TypeError(f"score_tensor expects float pixels in [0,1], got {pixels.dtype}")
        check_pixel_range(pixels, "pixels")
        distinct, index = unique_prompts(per_image_prompts(prompts, pixels.shape[0]))
        s, d = self.forward(self.transform.batch(pixels), self.encode_prompts(distinct), index)
        return self._result([s], [d], preprocessing=self.transform.batch_variant)

    def __call__(self, images: Images, prompts: str | Sequence[str], **kwargs: Any) -> ScoreResult:
        return self.score(images, prompts, **kwargs)

    def preference(self, prompts: str | Sequence[str], a: Images, b: Images, **kwargs: Any) -> PreferenceResult:
        """P(a_i ≻ b_i) = σ(logit(s_a) − logit(s_b)) for each pair (the 2-way softmax of the Pick-a-Pic/HPS
        objectives); ``a`` and ``b`` are equally long image batches, ``prompts`` one per pair or a single string."""
        items_a, items_b = as_items(a), as_items(b)
        if len(items_a) != len(items_b):
            raise ValueError(f"preference needs as many 'a' as 'b' images, got {len(items_a)} and {len(items_b)}")
        ra, rb = self.score(items_a, prompts, **kwargs), self.score(items_b, prompts, **kwargs)
        probs = torch.sigmoid(self.preference_logits(ra.scores) - self.preference_logits(rb.scores))
        return PreferenceResult(probs, {"score_a": ra.scores, "score_b": rb.scores}, ra.provenance)

    def rank(self, prompt: str, images: Images, **kwargs: Any) -> RankResult:
        """Scores of K candidate images for one prompt, softmax probabilities over them, and the order best-first."""
        if not isinstance(prompt, str):
            raise TypeError(f"rank takes one prompt string, got {type(prompt).__name__}")
        result = self.score(images, prompt, **kwargs)
        logits = self.preference_logits(result.scores)
        signed = logits if self.info.higher_is_better else -logits
        return RankResult(result.scores, torch.softmax(signed, dim=0), torch.argsort(signed, descending=True),
                          result.provenance)

    def _result(self, scores: list, details: list[dict], preprocessing: str | None = None) -> ScoreResult:
        merged = {k: torch.cat([d[k] for d in details]) for k in details[0]} if details else {}
        provenance = self.provenance
        if preprocessing is not None and preprocessing != provenance.preprocessing:
            provenance = Provenance(**{**provenance.as_dict(), "preprocessing": preprocessing})
        return ScoreResult(torch.cat(scores).float(), merged, {self.info.name: provenance})

    def __repr__(self) -> str:
        p = self.provenance
        return f"{type(self).__name__}(model={p.model_id!r}, variant={p.variant!r}, dtype={p.dtype})"


UNBOUNDED = (-math.inf, math.inf)
