"""Read a shapes-world scene back from pixels: background, the shape's colour, kind, size and position.

Batched over ``[B,3,H,W]`` float images in [0,1] (any size, any device), exact and deterministic:

1. **background** = per-channel median of the border pixels; its class is the nearest :data:`BACKGROUNDS` colour.
2. **foreground** = pixels nearer (RGB Euclidean) to some :data:`COLOURS` entry than to the background estimate;
   the **object** is its largest 8-connected component (label propagation). No object of at least
   ``MIN_OBJECT_FRACTION`` of the image means nothing was drawn (``detected`` false).
3. **colour** = the palette colour nearest to the object's mean colour.
4. **shape** = the template with the highest soft IoU (``Σmin/Σmax``) with the object's mask, both resampled to a
   ``TEMPLATE_SIZE``² grid over their own bounding box (4x4 bilinear samples per cell): fill ratio, symmetry and
   corners all enter through the template, which is drawn by the renderer's own geometry.
5. **size**: extent (longer bounding-box side / image side) against the midpoint of :data:`SIZES`.
6. **position**: offset ``d`` of the bounding-box centre from the image centre (image units): "center" if both
   ``|dx|, |dy| <= POSITION_TOLERANCE``, otherwise the side of the larger component.
7. **aesthetic** in [0, 1] = ½·centredness + ½·largeness, centredness = ``1 − min(1, ‖d‖₂ / 0.5)`` and
   largeness = ``min(1, extent / SIZES["large"])``: a preference for big, centred shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .render import Placement, coverage
from .world import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, ShapeSpec

MIN_OBJECT_FRACTION = 0.005  #: smallest object, as a fraction of the image area (5 px at 32²)
TEMPLATE_SIZE = 16
POSITION_TOLERANCE = 0.07  #: half the smallest centre offset the renderer uses for off-centre shapes, minus jitter
SIZE_THRESHOLD = (SIZES["small"] + SIZES["large"]) / 2
_SUBSAMPLES = 4
_POSITION_INDEX = {p: i for i, p in enumerate(POSITIONS)}


@dataclass
class SceneAnalysis:
    """What :func:`analyse` read from each image; every field is a ``[B]`` tensor (``shape_iou`` is ``[B, S]``).

    Class fields are indices into :data:`world.OPTIONS` order; they are meaningful only where ``detected``.
    """

    detected: torch.Tensor  #: bool: an object of at least MIN_OBJECT_FRACTION of the image was found
    background: torch.Tensor  #: long, index into BACKGROUNDS
    colour: torch.Tensor  #: long, index into COLOURS
    shape: torch.Tensor  #: long, index into SHAPES (argmax of shape_iou)
    size: torch.Tensor  #: long, index into SIZES
    position: torch.Tensor  #: long, index into POSITIONS
    shape_iou: torch.Tensor  #: float [B, S]: soft IoU of the object's mask with each shape's template
    extent: torch.Tensor  #: float: longer side of the object's bounding box / image side
    offset_x: torch.Tensor  #: float: bounding-box centre minus image centre, image units (+ = right)
    offset_y: torch.Tensor  #: float: same, vertical (+ = down)
    object_fraction: torch.Tensor  #: float: object area / image area
    aesthetic: torch.Tensor  #: float in [0, 1]

    def spec(self, i: int) -> ShapeSpec:
        """Image ``i`` as a :class:`ShapeSpec` (only the background when nothing was detected)."""
        background = list(BACKGROUNDS)[int(self.background[i])]
        if not bool(self.detected[i]):
            return ShapeSpec(background=background)
        return ShapeSpec(shape=SHAPES[int(self.shape[i])], colour=list(COLOURS)[int(self.colour[i])],
                         size=list(SIZES)[int(self.size[i])], position=list(POSITIONS)[int(self.position[i])],
                         background=background)


def _palette(colours: dict[str, tuple[int, int, int]], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(colours.values()), dtype=torch.float32, device=device) / 255.0


def _nearest(colours: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Index of the nearest palette entry for each ``[..., 3]`` colour."""
    return torch.cdist(colours.reshape(-1, 3), palette).argmin(-1).reshape(colours.shape[:-1])


def border_median(pixels: torch.Tensor) -> torch.Tensor:
    """Per-channel median of the image border, ``[B,3]`` (the lower median, so it is one of the border values)."""
    border = torch.cat([pixels[..., 0, :], pixels[..., -1, :], pixels[..., 1:-1, 0], pixels[..., 1:-1, -1]], dim=-1)
    return border.median(dim=-1).values


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """The largest 8-connected component of each boolean ``[B,H,W]`` mask (ties: the one with the larger label)."""
    b, h, w = mask.shape
    ids = torch.arange(1, h * w + 1, device=mask.device, dtype=torch.float32).reshape(1, h, w)
    labels = torch.where(mask, ids, 0.0)
    while True:  # every pixel takes the largest label among its neighbours until each component holds one label
        spread = torch.where(mask, F.max_pool2d(labels.unsqueeze(1), 3, stride=1, padding=1).squeeze(1), 0.0)
        if torch.equal(spread, labels):
            break
        labels = spread
    counts = torch.zeros(b, h * w + 1, device=mask.device).scatter_add_(1, labels.reshape(b, -1).long(),
                                                                         mask.reshape(b, -1).float())
    counts[:, 0] = 0
    best = counts.argmax(dim=1).float()
    return mask & (labels == best.view(b, 1, 1))


def _bounding_boxes(mask: torch.Tensor) -> torch.Tensor:
    """``[B,4]`` boxes ``(x0, y0, x1, y1)`` in continuous pixel coordinates (pixel i covers [i, i+1)); empty -> 0."""
    b, h, w = mask.shape
    cols, rows = mask.any(dim=1), mask.any(dim=2)
    x = torch.arange(w, device=mask.device).expand(b, w)
    y = torch.arange(h, device=mask.device).expand(b, h)
    x0 = torch.where(cols, x, w).amin(1)
    x1 = torch.where(cols, x, -1).amax(1) + 1
    y0 = torch.where(rows, y, h).amin(1)
    y1 = torch.where(rows, y, -1).amax(1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return torch.where(mask.flatten(1).any(1, keepdim=True), boxes, 0.0)


def resample_boxes(mask: torch.Tensor, boxes: torch.Tensor, size: int = TEMPLATE_SIZE) -> torch.Tensor:
    """Each float ``[B,H,W]`` mask resampled over its box to ``[B,size,size]``: cell = mean of 4x4 bilinear samples."""
    b, h, w = mask.shape
    n = size * _SUBSAMPLES
    t = (torch.arange(n, device=mask.device, dtype=torch.float32) + 0.5) / n  # sample positions in the box, (0, 1)
    x = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * t  # [B, n] continuous pixel coordinates
    y = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * t
    grid = torch.stack([(2 * x / w - 1).unsqueeze(1).expand(b, n, n), (2 * y / h - 1).unsqueeze(2).expand(b, n, n)],
                       dim=-1)
    samples = F.grid_sample(mask.unsqueeze(1).float(), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    return F.avg_pool2d(samples, _SUBSAMPLES).squeeze(1)


@lru_cache(maxsize=None)
def _templates_cpu() -> torch.Tensor:
    """``[S, T, T]`` templates: each shape drawn large (256 px canvas) by the renderer, resampled over its box."""
    side = 256
    masks = torch.stack([torch.from_numpy(coverage(s, Placement(side / 2, side / 2, side * 0.9), side, side))
                         for s in SHAPES])
    return resample_boxes(masks, _bounding_boxes(masks >= 0.5))


def templates(device: torch.device | str = "cpu") -> torch.Tensor:
    """The shape templates used by :func:`analyse`, ``[len(SHAPES), TEMPLATE_SIZE, TEMPLATE_SIZE]``."""
    return _templates_cpu().to(device)


def soft_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ min(a, b) / Σ max(a, b)`` over the last two dims (0 when both are empty)."""
    inter = torch.minimum(a, b).sum((-2, -1))
    union = torch.maximum(a, b).sum((-2, -1))
    return torch.where(union > 0, inter / union.clamp_min(1e-12), 0.0)


def _positions(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    horizontal = dx.abs() >= dy.abs()
    side = torch.where(horizontal, torch.where(dx < 0, _POSITION_INDEX["left"], _POSITION_INDEX["right"]),
                       torch.where(dy < 0, _POSITION_INDEX["top"], _POSITION_INDEX["bottom"]))
    centred = (dx.abs() <= POSITION_TOLERANCE) & (dy.abs() <= POSITION_TOLERANCE)
    return torch.where(centred, _POSITION_INDEX["center"], side)


def analyse(pixels: torch.Tensor) -> SceneAnalysis:
    """Analyse float ``[B,3,H,W]`` images in [0,1] (see the module docstring for every step)."""
    if pixels.ndim != 4 or pixels.shape[1] != 3 or not pixels.is_floating_point():
        raise ValueError(f"analyse expects float [B,3,H,W] pixels in [0,1], got {pixels.dtype} {tuple(pixels.shape)}")
    pixels = pixels.detach().float()
    b, _, h, w = pixels.shape
    device = pixels.device
    colours, backgrounds = _palette(COLOURS, device), _palette(BACKGROUNDS, device)
    rgb = pixels.permute(0, 2, 3, 1)  # [B,H,W,3]

    background = border_median(pixels)  # [B,3]
    to_background = (rgb - background.view(b, 1, 1, 3)).norm(dim=-1)
    to_palette = torch.cdist(rgb.reshape(b, h * w, 3), colours.expand(b, -1, -1)).amin(-1).reshape(b, h, w)
    obj = largest_component(to_palette < to_background)
    area = obj.flatten(1).sum(1)
    detected = area >= max(1.0, MIN_OBJECT_FRACTION * h * w)

    mean_colour = (rgb * obj.unsqueeze(-1)).flatten(1, 2).sum(1) / area.clamp_min(1).unsqueeze(-1)
    boxes = _bounding_boxes(obj)
    iou = soft_iou(resample_boxes(obj.float(), boxes).unsqueeze(1), templates(device).unsqueeze(0))
    extent = torch.maximum((boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h)
    dx = (boxes[:, 0] + boxes[:, 2]) / (2 * w) - 0.5
    dy = (boxes[:, 1] + boxes[:, 3]) / (2 * h) - 0.5
    centredness = 1 - (torch.hypot(dx, dy) / 0.5).clamp(max=1)
    largeness = (extent / SIZES["large"]).clamp(max=1)
    aesthetic = torch.where(detected, 0.5 * centredness + 0.5 * largeness, 0.0)
    return SceneAnalysis(
        detected=detected,
        background=_nearest(background, backgrounds),
        colour=_nearest(mean_colour, colours),
        shape=iou.argmax(1),
        size=(extent >= SIZE_THRESHOLD).long(),
        position=_positions(dx, dy),
        shape_iou=iou,
        extent=extent,
        offset_x=dx,
        offset_y=dy,
        object_fraction=area.float() / (h * w),
        aesthetic=aesthetic,
    )
