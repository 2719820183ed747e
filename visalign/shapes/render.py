"""Deterministic PIL rendering of shapes-world scenes (a complete :class:`ShapeSpec` + a seed -> an RGB image).

Geometry is continuous: pixel ``i`` covers ``[i, i+1)``, and every shape is a polygon whose bounding box is centred at
``(cx, cy)`` with its longer side equal to ``extent``. A pixel takes the shape's colour when the shape covers at least
half of it (coverage estimated on an 8x supersampled PIL mask, exact to
1/8 px), so images hold exactly two palette colours: the
geometry is anti-aliased, the colours are not, which keeps colour and shape measurable exactly.

Per seed, the extent is jittered by a factor in [0.9, 1.1] and the centre by up to ±2% of the image side. Off-centre
positions put the shape's box ``MARGIN`` of the image side away from that edge, so large shapes sit nearer the centre
than small ones.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from .world import BACKGROUNDS, COLOURS, SIZES, ShapeSpec

EXTENT_JITTER = 0.1  #: relative jitter of the extent
CENTRE_JITTER = 0.02  #: jitter of the centre, per axis, as a fraction of the image side
MARGIN = 0.04  #: gap between an off-centre shape's box and the image edge, as a fraction of the image side
STAR_INNER_RATIO = 0.5  #: inner/outer radius of the five-pointed star (a regular pentagram has 0.382; fatter survives 32 px)
CROSS_ARM = 1 / 3  #: arm thickness of the plus-shaped cross, as a fraction of its extent
SUPERSAMPLE = 8


@dataclass(frozen=True)
class Placement:
    """Where a shape is drawn, in pixels: centre of its bounding box and the box's longer side."""

    cx: float
    cy: float
    extent: float


def shape_polygon(shape: str, cx: float, cy: float, extent: float) -> list[tuple[float, float]]:
    """Vertices of ``shape`` (continuous pixel coordinates) with its bounding box centred at ``(cx, cy)``."""
    h = extent / 2
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "circle":
        return [(cx + h * math.cos(2 * math.pi * k / 64), cy + h * math.sin(2 * math.pi * k / 64)) for k in range(64)]
    if shape == "triangle":  # pointing up, base = height = extent
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "cross":
        a = extent * CROSS_ARM / 2
        return [(cx - a, cy - h), (cx + a, cy - h), (cx + a, cy - a), (cx + h, cy - a), (cx + h, cy + a),
                (cx + a, cy + a), (cx + a, cy + h), (cx - a, cy + h), (cx - a, cy + a), (cx - h, cy + a),
                (cx - h, cy - a), (cx - a, cy - a)]
    if shape == "star":  # point up; width 2R cos 18°, height R (1 + cos 36°): scale so the width is the extent
        outer = extent / (2 * math.cos(math.radians(18)))
        oy = cy + outer * (1 - math.cos(math.radians(36))) / 2  # star centre below the box centre
        points = []
        for k in range(10):
            r = outer if k % 2 == 0 else outer * STAR_INNER_RATIO
            angle = math.radians(-90 + 36 * k)
            points.append((cx + r * math.cos(angle), oy + r * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def coverage(shape: str, placement: Placement, height: int, width: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape (8x8 subpixels), float32 ``[height, width]``, to within 1/8 px."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (width * s, height * s), 0)
    # PIL fills every subpixel from floor(min) to floor(max) inclusive: shapes come out up to 1/8 px larger
    points = [(x * s, y * s) for x, y in shape_polygon(shape, placement.cx, placement.cy, placement.extent)]
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas, dtype=np.float32).reshape(height, s, width, s).mean(axis=(1, 3))


def layout(spec: ShapeSpec, *, seed: int, resolution: int) -> Placement:
    """The jittered placement of ``spec``'s shape for this seed (see the module docstring)."""
    rng = random.Random(seed)
    extent = SIZES[spec.size] * rng.uniform(1 - EXTENT_JITTER, 1 + EXTENT_JITTER)
    offset = 0.5 - extent / 2 - MARGIN
    dx, dy = {"center": (0, 0), "left": (-offset, 0), "right": (offset, 0), "top": (0, -offset),
              "bottom": (0, offset)}[spec.position]
    cx = 0.5 + dx + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)
    cy = 0.5 + dy + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)
    return Placement(cx * resolution, cy * resolution, extent * resolution)


def render_array(spec: ShapeSpec, *, seed: int = 0, resolution: int = 32) -> np.ndarray:
    """The scene as a uint8 ``[resolution, resolution, 3]`` array."""
    if spec.missing:
        raise ValueError(f"cannot render {spec}: unspecified {', '.join(spec.missing)} (use world.complete)")
    if resolution < 16:
        raise ValueError(f"resolution must be at least 16 px, got {resolution}")
    mask = coverage(spec.shape, layout(spec, seed=seed, resolution=resolution), resolution, resolution) >= 0.5
    image = np.empty((resolution, resolution, 3), dtype=np.uint8)
    image[...] = BACKGROUNDS[spec.background]
    image[mask] = COLOURS[spec.colour]
    return image


def render(spec: ShapeSpec, *, seed: int = 0, resolution: int = 32) -> Image.Image:
    """The scene as an RGB PIL image (the shapes world is drawn at 32 or 64 px)."""
    return Image.fromarray(render_array(spec, seed=seed, resolution=resolution), mode="RGB")


def render_batch(specs: Sequence[ShapeSpec], seeds: Sequence[int], *, resolution: int = 32) -> torch.Tensor:
    """Scenes as a uint8 ``[N, 3, resolution, resolution]`` tensor, one seed per spec."""
    if len(specs) != len(seeds):
        raise ValueError(f"got {len(specs)} specs and {len(seeds)} seeds; pass one seed per spec")
    arrays = [render_array(spec, seed=seed, resolution=resolution) for spec, seed in zip(specs, seeds)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
