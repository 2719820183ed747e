"""Joint transforms of a preference pair: both images get the same resize, flip and crop.

Order, as the diffusers SDXL DPO port (``train_diffusion_dpo_sdxl.py``, reference ``diffusion-methods.md`` §4.2)
applies it to its 6-channel ``[chosen; rejected]`` tensor:

1. resize so the short side is ``resolution`` (bilinear, antialiased; the long side is ``int(res * long / short)``,
   torchvision's ``Resize(res)`` rule). The rejected image is resized to the chosen image's resized size, so the pair
   shares one spatial size (an image whose aspect ratio differs from its partner's is stretched);
2. horizontal flip of both images, with probability 0.5 when ``random_flip``;
3. crop ``resolution x resolution`` at the same top-left for both: the centre (``round((H - res) / 2)``, torchvision's
   ``CenterCrop``) or a uniformly random offset;
4. ``[0, 255] -> [-1, 1]`` (``ToTensor`` then ``Normalize(0.5, 0.5)``).

The crop top-left is recorded in the frame it was taken in (the resized, possibly flipped image), as the diffusers
SDXL scripts record it for ``add_time_ids``. Where we differ from the port: each image keeps its own true original size
(the port uses ``jpg_0``'s size for both); Salesforce's ``train.py`` instead flips and crops the two images
independently and hard-codes the time ids to ``(res, res, 0, 0, res, res)`` (§3.3, §3.4).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from reward_models.inputs import to_rgb

#: What decoding a corrupt, truncated, missing or otherwise unreadable image raises (PIL raises all of these).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def resolve_image_path(path: str | Path, base_dir: str | Path | None = None, *, confine: bool = False) -> Path:
    """The file an image path names: relative paths are taken relative to ``base_dir`` (the dataset's folder).

    With ``confine`` the file, symlinks followed, must lie under ``base_dir``; anything else (``/etc/passwd``,
    ``../x.png``, no ``base_dir``) raises ``ValueError``.
    """
    path = Path(path)
    full = path if path.is_absolute() or base_dir is None else Path(base_dir) / path
    if confine:
        if base_dir is None:
            raise ValueError(f"image path {str(path)!r} cannot be confined: the dataset has no local folder")
        root = Path(base_dir).resolve()
        if not full.resolve().is_relative_to(root):
            raise ValueError(f"image path {str(path)!r} is outside the dataset folder {root} (confine_image_paths)")
    return full


def open_rgb(source, *, base_dir: str | Path | None = None, confine: bool = False) -> Image.Image:
    """Decode an image reference to a fully loaded 8-bit RGB image (``reward_models.inputs.to_rgb``: 16-bit
    greyscale is scaled, not clipped), EXIF orientation applied.

    ``source`` is encoded bytes, a ``datasets`` ``Image(decode=False)`` value (``{"bytes", "path"}``), a path (as
    :func:`resolve_image_path` with ``base_dir`` and ``confine``) or a PIL image. Raises one of :data:`IMAGE_ERRORS`
    when unreadable.
    """
    if isinstance(source, dict):
        source = source.get("bytes") or source.get("path")
    if isinstance(source, (bytes, bytearray, memoryview)):
        image = Image.open(io.BytesIO(source))
    elif isinstance(source, (str, Path)):
        image = Image.open(resolve_image_path(source, base_dir, confine=confine))
    elif isinstance(source, Image.Image):
        image = source
    else:
        raise ValueError(f"not an image reference: {type(source).__name__}")
    image.load()
    return to_rgb(ImageOps.exif_transpose(image))


def resized_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """``(h, w)`` after resizing the short side to ``resolution`` (torchvision ``Resize(int)``: long side truncated)."""
    if height <= width:
        return resolution, int(resolution * width / height)
    return int(resolution * height / width), resolution


def center_crop_top_left(height: int, width: int, resolution: int) -> tuple[int, int]:
    """Top-left ``(top, left)`` of torchvision's ``CenterCrop(resolution)`` on an ``height x width`` image."""
    return int(round((height - resolution) / 2.0)), int(round((width - resolution) / 2.0))


def draw_flip(rng: np.random.Generator, random_flip: bool) -> bool:
    """The pair's flip decision. Always consumes one draw, so later draws do not depend on ``random_flip``."""
    coin = rng.random()
    return bool(random_flip and coin < 0.5)


def to_model_pixels(image: Image.Image) -> torch.Tensor:
    """``[3, H, W]`` fp32 in ``[-1, 1]`` from an RGB image: ``(x / 255 - 0.5) / 0.5``."""
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
    return (array / 255.0 - 0.5) / 0.5


@dataclass(frozen=True)
class TransformedPair:
    """A transformed pair: pixels ``[3, res, res]`` in ``[-1, 1]``, each image's true original ``(h, w)``, the
    shared crop ``(top, left)`` and whether both were flipped."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    original_size_chosen: tuple[int, int]
    original_size_rejected: tuple[int, int]
    crop_top_left: tuple[int, int]
    flipped: bool


@dataclass(frozen=True)
class PairTransform:
    """Resize, flip and crop both images of a pair identically (module docstring).

    Args:
        resolution: training resolution (square crops of this side).
        center_crop: centre crop (True) or a random crop (False).
        random_flip: flip the pair horizontally with probability 0.5.
    """

    resolution: int
    center_crop: bool = True
    random_flip: bool = True

    def __post_init__(self):
        if not isinstance(self.resolution, int) or self.resolution < 1:
            raise ValueError(f"PairTransform.resolution must be a positive int; got {self.resolution!r}")

    def __call__(
        self, chosen: Image.Image, rejected: Image.Image, rng: np.random.Generator, *, flip: bool | None = None
    ) -> TransformedPair:
        """Transform a pair of RGB images. ``rng`` draws the flip (unless ``flip`` is given) and the random crop."""
        res = self.resolution
        height, width = resized_size(chosen.height, chosen.width, res)
        images = [im if im.size == (width, height) else im.resize((width, height), Image.BILINEAR)
                  for im in (chosen, rejected)]
        flipped = draw_flip(rng, self.random_flip) if flip is None else bool(flip)
        if flipped:
            images = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in images]
        if self.center_crop:
            top, left = center_crop_top_left(height, width, res)
        else:
            top, left = int(rng.integers(0, height - res + 1)), int(rng.integers(0, width - res + 1))
        box = (left, top, left + res, top + res)
        pixels = [to_model_pixels(im.crop(box)) for im in images]
        return TransformedPair(
            pixels[0], pixels[1], (chosen.height, chosen.width), (rejected.height, rejected.width), (top, left), flipped
        )
