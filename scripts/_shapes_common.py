"""What the shapes-world training scripts share: their seeded ``TrainConfig`` dataclass as command-line flags, and a
progress line every tenth of a training stage."""

from __future__ import annotations

import argparse
import time
from dataclasses import fields, replace
from typing import Any


def add_config_flags(parser: argparse.ArgumentParser, cls: type, quick: dict[str, Any]) -> None:
    """One ``--a-b`` flag per field of the dataclass ``cls`` (default: not given), its help showing the default and
    the ``--quick`` value."""
    for f in fields(cls):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                            help=f"{f.metadata['help']} (default {f.default}; --quick: {quick.get(f.name, f.default)})")


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, cls: type, quick: dict[str, Any]):
    """``cls()`` with the ``--quick`` values when asked, then the given flags; a value the dataclass refuses is a
    usage error."""
    overrides = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name) is not None}
    try:
        return replace(cls(), **{**(quick if args.quick else {}), **overrides})
    except ValueError as error:
        parser.error(str(error))


def log_progress(stage: str, step: int, total: int, loss: float, started: float) -> None:
    """Print the loss at step 1, every tenth of ``total`` and at the end, with the mean seconds per step."""
    if step == 1 or step % max(1, total // 10) == 0 or step == total:
        print(f"[{stage}] step {step}/{total} loss {loss:.4f} ({(time.perf_counter() - started) / step:.3f} s/step)",
              flush=True)
