"""Built-in models, named ``builtin:NAME`` wherever a hub id or local folder is accepted.

Two kinds, both loaded through the ordinary ``from_pretrained`` path of their library:

- built in code: ``tiny-llama`` (``visalign.testing.causal_lm``) is saved once into
  ``$VISALIGN_CACHE/builtin/NAME`` (default ``~/.cache/visalign``) and loaded from there;
- shipped with the package: the shapes world's trained models (``visalign/assets/NAME``, safetensors), each made by a
  seeded script in ``scripts/``. ``shapes-sd`` is a ``StableDiffusionPipeline`` folder, ``shapes-sdxl`` a
  ``StableDiffusionXLPipeline`` folder (SDXL architecture, the same VAE); ``shapes-llava`` a
  ``LlavaForConditionalGeneration`` + processor folder.

``resolve_model(spec)`` turns ``builtin:NAME`` into that folder and passes anything else through unchanged once
``visalign.models.hub.check_model_source`` finds it (a missing path or an uncached id offline fails at once).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from visalign.errors import NotFoundError
from visalign.models.hub import check_model_source

PREFIX = "builtin:"
ASSETS = Path(__file__).resolve().parent.parent / "assets"

# name -> the script that makes the shipped folder (for the error message when it is missing)
SHIPPED_MODELS: dict[str, str] = {
    "shapes-sd": "scripts/train_shapes_models.py --out visalign/assets/shapes-sd",
    "shapes-sdxl": "scripts/train_shapes_models.py --arch sdxl --vae-from visalign/assets/shapes-sd/vae "
                   "--out visalign/assets/shapes-sdxl",
    "shapes-llava": "scripts/train_shapes_vlm.py --out visalign/assets/shapes-llava",
}


def _save_tiny_llama(folder: Path) -> None:
    from visalign.testing.causal_lm import save_tiny_llama

    save_tiny_llama(folder)


# name -> a function saving the model into an empty folder
CODE_MODELS: dict[str, Callable[[Path], None]] = {"tiny-llama": _save_tiny_llama}


def builtin_models() -> list[str]:
    """Every ``builtin:NAME`` model name."""
    return sorted({*CODE_MODELS, *SHIPPED_MODELS})


def visalign_cache_dir() -> Path:
    """Root of visalign's own caches: ``$VISALIGN_CACHE``, else ``~/.cache/visalign``."""
    return Path(os.environ.get("VISALIGN_CACHE", Path.home() / ".cache" / "visalign")).expanduser()


def is_builtin(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def resolve_model(spec: str | os.PathLike, *, revision: str | None = None, what: str = "model") -> str:
    """The folder of ``builtin:NAME``; any other hub id or path unchanged (as ``str``) once
    :func:`~visalign.models.hub.check_model_source` finds it loadable (else one-line ``NotFoundError``)."""
    if not is_builtin(spec):
        return check_model_source(spec, revision=revision, what=what)
    name = spec.removeprefix(PREFIX)
    if name in SHIPPED_MODELS:
        folder = ASSETS / name
        if not (folder / "model_index.json").is_file() and not (folder / "config.json").is_file():
            raise NotFoundError(f"built-in model '{spec}' is not installed at {folder}; "
                                f"make it with: python {SHIPPED_MODELS[name]}")
        return str(folder)
    if name in CODE_MODELS:
        return str(_code_model_folder(name))
    raise NotFoundError(f"unknown built-in model '{spec}'; available: {', '.join(PREFIX + n for n in builtin_models())}")


def _code_model_folder(name: str) -> Path:
    """Build the code-defined model once (into a temporary folder, then renamed) and return its folder."""
    folder = visalign_cache_dir() / "builtin" / name
    if not (folder / "config.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
        CODE_MODELS[name](tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
