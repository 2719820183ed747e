"""Image preprocessing of the CLIP-family scorers as explicit, testable transforms (reward-scorers.md §1.1–1.3).

Two geometries:

- :class:`CenterCropTransform` — CLIP style (PickScore, CLIP score, aesthetic): shortest edge -> ``size`` (bicubic;
  long edge ``int(size * long / short)``), centre crop ``size``x``size`` with offset ``(L - size) // 2``. This is
  the arithmetic of transformers' CLIP image processor; torchvision's ``CenterCrop`` (used by clipscore/aesthetic
  upstream) rounds the offset instead, which differs by one pixel when ``L - size`` is odd.
- :class:`PadTransform` — HPS ``ResizeMaxSize``: longest edge -> ``size`` (short edge ``round(size * s / L)``),
  zero pad (black: before normalisation) with left/top ``pad // 2``. Deliberate difference from upstream: an image
  whose longest edge already equals ``size`` is still padded (upstream skips the pad and cannot batch it).

Resize backends: ``"pil"`` resizes a uint8 PIL image with PIL's antialiasing bicubic (what the HF processor behind
PickScore and the torchvision-on-PIL pipelines of clipscore/aesthetic do); float inputs are rounded to uint8 first.
``"torch"`` resizes float tensors with ``interpolate(bicubic, antialias=True)``; it is differentiable and is what
HPS upstream does (``ToTensor`` then a tensor resize; torchvision >= 0.17 antialiases). The batched
:meth:`batch` path is always ``"torch"``. All then normalise with the OpenAI CLIP mean/std.

The per-image ``"pil"`` path never leaves uint8 until the last step, which maps each byte through a 256-entry table
per channel (:func:`normalize_uint8`, bit-identical to ``normalize(x / 255)``). It runs in PIL and numpy, one thread
per image, so it neither spawns torch's intra-op threads for small tensors (which stall on a busy CPU) nor competes
with the model for them; parallelism across images comes from DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .inputs import to_float

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after resizing the shortest edge to ``size``."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def longest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after resizing the longest edge to ``size`` (``round`` as in open_clip's ``ResizeMaxSize``)."""
    scale = size / max(height, width)
    return round(height * scale), round(width * scale)


def center_crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the ``size``x``size`` centre crop."""
    if height < size or width < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from a {height}x{width} image")
    return (height - size) // 2, (width - size) // 2


def pad_amounts(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that brings an image within ``size`` to ``size``x``size``."""
    pad_h, pad_w = size - height, size - width
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def normalize(pixels: torch.Tensor, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> torch.Tensor:
    """``(x - mean) / std`` per channel of ``[..., 3, H, W]`` floats."""
    m = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    return (pixels - m) / s


def resize_torch(pixels: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of float ``[B,3,H,W]`` (differentiable; no clamping, as torchvision on floats)."""
    if tuple(pixels.shape[-2:]) == tuple(hw):
        return pixels
    return F.interpolate(pixels, size=hw, mode="bicubic", antialias=True, align_corners=False)


def resize_pil(image: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize of one ``[3,H,W]`` image (uint8, or float rounded to uint8) -> uint8 ``[h,w,3]`` array."""
    if image.dtype != torch.uint8:
        image = (image.detach().float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    pil = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    if pil.size != (hw[1], hw[0]):
        pil = pil.resize((hw[1], hw[0]), resample=Image.BICUBIC)
    return np.asarray(pil)


@lru_cache(maxsize=8)
def _uint8_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``[3, 256]`` float32: :func:`normalize` of every byte value ``v / 255``, per channel."""
    levels = to_float(torch.arange(256, dtype=torch.uint8)).expand(3, 1, 256)
    return normalize(levels, mean, std)[:, 0].numpy()


def normalize_uint8(pixels: np.ndarray, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> torch.Tensor:
    """uint8 ``[H,W,3]`` -> normalised float32 ``[3,H,W]`` by table look-up (bit-identical to ``normalize(x/255)``)."""
    table = _uint8_table(tuple(mean), tuple(std))
    planar = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    out = np.empty(planar.shape, dtype=np.float32)
    for c in range(3):
        np.take(table[c], planar[c], out=out[c])
    return torch.from_numpy(out)


@dataclass(frozen=True)
class CenterCropTransform:
    """Shortest edge -> ``size`` (bicubic), centre crop, OpenAI normalisation."""

    size: int = 224
    backend: Literal["pil", "torch"] = "pil"

    def __post_init__(self):
        if self.backend not in ("pil", "torch"):
            raise ValueError(f"backend must be 'pil' or 'torch', got {self.backend!r}")

    @property
    def variant(self) -> str:
        return f"clip-shortest{self.size}-bicubic-centercrop-{self.backend}"

    @property
    def batch_variant(self) -> str:
        return f"clip-shortest{self.size}-bicubic-centercrop-torch"

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        hw = shortest_edge_size(image.shape[-2], image.shape[-1], self.size)
        if self.backend == "pil":
            top, left = center_crop_offsets(*hw, self.size)
            return normalize_uint8(resize_pil(image, hw)[top : top + self.size, left : left + self.size])
        return normalize(self._crop(resize_torch(to_float(image.detach()).unsqueeze(0), hw)[0]))

    def batch(self, pixels: torch.Tensor) -> torch.Tensor:
        hw = shortest_edge_size(pixels.shape[-2], pixels.shape[-1], self.size)
        return normalize(self._crop(resize_torch(to_float(pixels), hw)))

    def _crop(self, pixels: torch.Tensor) -> torch.Tensor:
        top, left = center_crop_offsets(pixels.shape[-2], pixels.shape[-1], self.size)
        return pixels[..., top : top + self.size, left : left + self.size]


@dataclass(frozen=True)
class PadTransform:
    """HPS ``ResizeMaxSize``: longest edge -> ``size`` (antialiased bicubic on tensors), zero pad, normalise."""

    size: int = 224

    @property
    def variant(self) -> str:
        return f"hps-longest{self.size}-bicubic-antialias-zeropad-torch"

    @property
    def batch_variant(self) -> str:
        return self.variant

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.batch(to_float(image.detach()).unsqueeze(0))[0]

    def batch(self, pixels: torch.Tensor) -> torch.Tensor:
        hw = longest_edge_size(pixels.shape[-2], pixels.shape[-1], self.size)
        resized = resize_torch(to_float(pixels), hw)
        return normalize(F.pad(resized, pad_amounts(*hw, self.size), value=0.0))
