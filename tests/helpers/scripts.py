"""Importing the repository's scripts (``bench/``, ``scripts/``), which are files, not modules of an installed
package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def load_script(path: Path, name: str):
    """The file ``path`` as module ``name``, with its folder on ``sys.path`` while it loads (for sibling imports,
    as the benches' ``_common``) and the module in ``sys.modules`` (dataclasses resolve their module by name)."""
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def load_bench(name: str):
    """``bench/<name>.py`` as a module."""
    return load_script(BENCH / f"{name}.py", f"bench_{name}")
