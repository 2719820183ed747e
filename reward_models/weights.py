"""Weight files: find them (local path or hub id, checked by ``check_model_source``), hash them, load state dicts
safely and strictly.

Loading follows the design's rules: safetensors or ``torch.load(weights_only=True)``; missing or unexpected keys
raise, naming the file and keys (ImageReward upstream loads with ``strict=False`` and silently keeps a random head
when given a wrong file — reward-scorers.md §5.1).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from visalign.errors import NotFoundError
from visalign.models.hub import check_model_source

_HASHES: dict[tuple[str, int, float], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file, cached per (path, size, mtime) for the process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def files_sha256(paths: list[Path]) -> str | None:
    """The file's sha256 for one file; for shards, sha256 over ``name:sha256`` lines in name order."""
    if not paths:
        return None
    if len(paths) == 1:
        return file_sha256(paths[0])
    lines = "".join(f"{p.name}:{file_sha256(p)}\n" for p in sorted(paths, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def pretrained_weight_files(model: str) -> list[Path]:
    """The weight files ``from_pretrained(model)`` read: from a local folder, or from the hub cache for a hub id
    (a pure cache lookup after ``from_pretrained`` has run; no network). Empty if they cannot be found."""
    folder = Path(model)
    if folder.is_dir():
        found = sorted(folder.glob("*.safetensors"))
        return found or sorted(folder.glob("pytorch_model*.bin"))
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> Path | None:
        hit = try_to_load_from_cache(model, name)
        return Path(hit) if isinstance(hit, str) else None

    for single in ("model.safetensors", "pytorch_model.bin"):
        if (hit := cached(single)) is not None:
            return [hit]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (hit := cached(index)) is not None:
            import json

            shards = sorted(set(json.loads(hit.read_text())["weight_map"].values()))
            paths = [cached(s) for s in shards]
            return [p for p in paths if p is not None] if all(paths) else []
    return []


def resolve_file(model: str, filename: str) -> Path:
    """A single weight file given as a file path, a folder holding ``filename``, or a hub repo id holding it
    (downloaded with ``hf_hub_download``, the analogue of ``from_pretrained``; honours ``HF_HUB_OFFLINE``)."""
    path = Path(model)
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / filename).is_file():
            raise FileNotFoundError(f"{path} has no weight file {filename!r}")
        return path / filename
    if path.suffix in {".pt", ".pth", ".bin", ".safetensors"}:
        raise NotFoundError(f"weight file {model} does not exist")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(check_model_source(model, what="scorer weights"), filename))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a torch file read with ``weights_only=True``; a torch file may
    wrap them under ``"state_dict"`` (HPS's format). A ``module.`` prefix on every key (DDP saves) is removed."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickled modules, corrupt files: say which file
            raise ValueError(f"cannot read weights from {path} with weights_only=True: {err}") from err
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """``load_state_dict(strict=True)`` with an error naming the file and the first offending keys/shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = [f"missing keys: {show(missing)}" if missing else "",
                 f"unexpected keys: {show(unexpected)}" if unexpected else "",
                 "shape mismatches: " + show([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                               for k in mismatched]) if mismatched else ""]
        raise ValueError(f"weights in {source} do not fit {type(module).__name__}: " + "; ".join(p for p in parts if p))
    module.load_state_dict(state, strict=True)


def check_loading_info(info: dict, model: str) -> None:
    """Raise if transformers' ``output_loading_info`` reports missing, unexpected or mismatched keys."""
    bad = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        detail = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v[:5]))}" for k, v in bad.items())
        raise ValueError(f"checkpoint {model} does not match the model architecture: {detail}")
