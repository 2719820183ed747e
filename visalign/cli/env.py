"""`visalign env`: the versions block users paste into bug reports."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
from collections.abc import Sequence

import visalign

# (label, distribution name); optional ones print "not installed" instead of failing.
PACKAGES = (
    ("diffusers", "diffusers"),
    ("transformers", "transformers"),
    ("peft", "peft"),
    ("accelerate", "accelerate"),
    ("open_clip", "open_clip_torch"),
    ("datasets", "datasets"),
    ("trl", "trl"),
    ("bitsandbytes", "bitsandbytes"),
)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _torch_line() -> str:
    try:
        import torch
    except ImportError:
        return "not installed"
    cuda = torch.cuda.is_available()
    parts = [f"CUDA available: {cuda}"]
    if cuda:
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        parts.append(f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} x {', '.join(names)}")
    mps = getattr(torch.backends, "mps", None)
    parts.append(f"MPS available: {bool(mps and mps.is_available())}")
    return f"{torch.__version__} ({'; '.join(parts)})"


def collect() -> dict[str, str]:
    """Label -> version text, in the printed order."""
    info = {
        "visalign": visalign.__version__,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": _torch_line(),
    }
    info.update({label: _version(dist) for label, dist in PACKAGES})
    return info


def make_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="visalign env", description="Print versions of visalign and its dependencies for bug reports."
    )


def main(argv: Sequence[str] | None = None) -> int:
    make_parser().parse_args(argv)
    for label, value in collect().items():
        print(f"- {label}: {value}")
    return 0
