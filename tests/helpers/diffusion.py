"""Shared fixtures and data writers of the diffusion trainer tests (import the fixtures by name into a test module)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visalign.testing.diffusion import save_tiny_sd, save_tiny_sdxl

CAPTIONS = ["a red square", "a blue circle", "a green cross", "two dots"]


@pytest.fixture(scope="module")
def sd15(tmp_path_factory) -> str:
    """A tiny SD1.5 pipeline saved with ``save_pretrained``, once per test module."""
    return str(save_tiny_sd(tmp_path_factory.mktemp("sd15")))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory) -> str:
    """A tiny SDXL pipeline saved with ``save_pretrained``, once per test module."""
    return str(save_tiny_sdxl(tmp_path_factory.mktemp("sdxl")))


def write_pairs(
    root: Path,
    captions: Sequence[str | tuple[str, str]],
    *,
    sizes: tuple[tuple[int, int], tuple[int, int]] = ((36, 40), (36, 40)),
    seed: int = 0,
    corrupt: Sequence[int] = (),
) -> str:
    """A paired folder: ``chosen/pI.png``, ``rejected/pI.png`` (random pixels; ``sizes`` = (w, h) per side) and
    ``captions.jsonl`` with one caption or a ``(chosen, rejected)`` tuple per pair; pairs in ``corrupt`` get a
    truncated chosen file."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, caption in enumerate(captions):
        for side, (w, h) in zip(("chosen", "rejected"), sizes):
            (root / side).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / side / f"p{i}.png")
        if i in corrupt:
            (root / "chosen" / f"p{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        text = {"caption": caption} if isinstance(caption, str) else dict(zip(("caption_chosen", "caption_rejected"),
                                                                              caption))
        rows.append(json.dumps({"file_name": f"p{i}.png", **text}))
    (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> str:
    """Four pairs of 36x40 images captioned with :data:`CAPTIONS`, once per test module."""
    return write_pairs(tmp_path_factory.mktemp("pairs"), CAPTIONS)
