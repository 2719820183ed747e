"""Turn what users pass as images into decoded ``[3,H,W]`` tensors, and prompts into one string per image.

Accepted images: a file path, a PIL image, a ``[3,H,W]`` tensor, a ``[B,3,H,W]`` tensor, or a sequence of any of
those. Tensors are ``uint8`` (0..255) or floating point in [0, 1]. Decoding happens lazily, per item, so it can run
in DataLoader workers; every error names the offending item (file, index) and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

ImageItem = Union[str, os.PathLike, Image.Image, torch.Tensor]
Images = Union[ImageItem, Sequence[ImageItem]]


def as_items(images: Images) -> Sequence[ImageItem]:
    """A sequence of single images: a ``[B,3,H,W]`` tensor stays a tensor (indexing yields ``[3,H,W]``)."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"image tensors must be [B,3,H,W] or [3,H,W] (RGB), got shape {tuple(images.shape)}")
        check_pixel_range(images, "images")
        return images
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    items = list(images)
    if not items:
        raise ValueError("no images given")
    return items


def check_pixel_range(pixels: torch.Tensor, where: str) -> None:
    """Float pixels must lie in [0, 1]; uint8 needs no check. Other dtypes are rejected."""
    if pixels.dtype == torch.uint8:
        return
    if not pixels.is_floating_point():
        raise TypeError(f"{where}: image tensors must be uint8 or floating point in [0, 1], got {pixels.dtype}")
    lo, hi = float(pixels.detach().amin()), float(pixels.detach().amax())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{where}: float images must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")


def decode(item: ImageItem, index: int) -> torch.Tensor:
    """One image as a ``[3,H,W]`` tensor: uint8 for files and PIL images (exact), the tensor itself otherwise.

    Images with alpha or palettes are converted to RGB explicitly (HPS upstream would keep 4 channels).
    """
    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] != 3:
            raise ValueError(f"image {index}: expected a [3,H,W] RGB tensor, got shape {tuple(item.shape)}")
        check_pixel_range(item, f"image {index}")
        return item
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        try:
            with Image.open(path) as img:
                return pil_to_uint8(img)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"image {index}: cannot read image file {path}: {err}") from err
    if isinstance(item, Image.Image):
        return pil_to_uint8(item)
    raise TypeError(f"image {index}: expected a path, PIL image or tensor, got {type(item).__name__}")


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """PIL image -> ``[3,H,W]`` uint8 RGB tensor (a view of one writable ``[H,W,3]`` copy of the pixels)."""
    return torch.from_numpy(np.array(to_rgb(img))).permute(2, 0, 1)


#: Greyscale modes holding 16-bit samples (16-bit PNG, TIFF and PGM decode to these).
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, the one conversion every image decoder here uses (scoring and training).

    16-bit greyscale (:data:`WIDE_GREY_MODES`; ``I`` is clipped to ``[0, 65535]``) is scaled to 8 bits,
    ``round(v * 255 / 65535)``: PIL's own ``convert("RGB")`` clips the samples to 255, so these images would read
    as solid white. Other modes use ``convert("RGB")`` (alpha is dropped, palettes expanded); an RGB ``img`` is
    returned as it is.
    """
    if img.mode in WIDE_GREY_MODES:
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    return img if img.mode == "RGB" else img.convert("RGB")


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float [0,1] -> float32 [0,1] (float inputs keep their autograd graph)."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def per_image_prompts(prompts: str | Sequence[str], n: int) -> list[str]:
    """One prompt per image: a single string is repeated; a sequence must have exactly ``n`` strings."""
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} images; pass one prompt per image (or a single string)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i}: expected a string, got {type(p).__name__}")
    return prompts


def unique_prompts(prompts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Distinct prompts in first-seen order and, per image, the index of its prompt among them."""
    position: dict[str, int] = {}
    index = [position.setdefault(p, len(position)) for p in prompts]
    return list(position), torch.tensor(index, dtype=torch.long)
