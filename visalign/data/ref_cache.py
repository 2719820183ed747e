"""Precomputed reference log-probs (reference strategy ``precomputed``; reference §C.4, RLHF-V §A.3).

``attach_reference_logps(dataset, model, collator, batch_size=...)`` runs the reference (the model as it is now, before
training) once over a tokenized paired dataset, in order, under ``torch.no_grad()`` and eval mode, and returns the
dataset with the columns ``PreferenceCollator`` carries: ``ref_chosen_logps``/``ref_rejected_logps`` (summed over
completion tokens) and, with ``per_token=True``, ``ref_chosen_token_logps``/``ref_rejected_token_logps`` (one value
per completion token, as RLHF-V's dense DPO needs; the first token of a prompt-less row has no context and is 0).

The result is stored as safetensors, ``ref_logps-<key>.safetensors``, beside the dataset's Arrow cache files (or in
``cache_dir``, default ``$VISALIGN_CACHE/ref_logps``, for in-memory datasets), and reused by later runs. The key
hashes the model weights (``model_fingerprint``), the token ids (``dataset_fingerprint``; this covers truncation and
chat template too), ``max_length`` and the per-token flag, so a different model or different data never reads a
stale file. Files are written under a temporary name and renamed, so a killed run never leaves half a cache.

The pass itself, ``compute_reference_logps``, takes any paired dataset, collator and log-likelihood function and
keeps the columns in memory: the VLM trainer uses it directly (images are collated on the fly, so there are no token
columns to key a file by) inside its own adapter-disabled, autocast context.

Differs from TRL: TRL keeps only sums and refuses VLM data; here per-token values can be stored, and the cache is
safetensors keyed by content rather than a ``datasets`` cache file. ``attach_reference_logps`` runs outside any
autocast context, so with mixed precision the cached values can differ from a live reference in the last bits. Each
process computes the cache itself unless another has already written it (the rename makes concurrent writers safe).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import datasets
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from visalign.data.text import PAIRED_TOKEN_COLUMNS, dataset_fingerprint
from visalign.errors import DataError
from visalign.likelihood.text import pair_loglik
from visalign.losses.types import PairLogLik
from visalign.models.builtin import visalign_cache_dir
from visalign.reference import reference_mode

SIDES = ("chosen", "rejected")
REF_COLUMNS = tuple(f"ref_{side}_{kind}" for side in SIDES for kind in ("logps", "token_logps"))


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every ``state_dict`` entry's name, dtype, shape and bytes (one tensor on the CPU at a time)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def reference_cache_key(model_fp: str, data_fp: str, *, max_length: int | None, per_token: bool) -> str:
    """The cache key of one (model, data, max_length, per-token) combination."""
    spec = {"model": model_fp, "data": data_fp, "max_length": max_length, "per_token": per_token, "format": 1}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def reference_cache_path(dataset: datasets.Dataset, key: str, cache_dir: str | Path | None = None) -> Path:
    """Where the cache of ``key`` lives: ``cache_dir`` if given, else beside the dataset's Arrow cache files, else
    ``$VISALIGN_CACHE/ref_logps``."""
    if cache_dir is not None:
        folder = Path(cache_dir)
    elif dataset.cache_files:
        folder = Path(dataset.cache_files[0]["filename"]).parent
    else:
        folder = visalign_cache_dir() / "ref_logps"
    return folder / f"ref_logps-{key}.safetensors"


def compute_reference_logps(
    model: torch.nn.Module,
    dataset,
    collator,
    *,
    batch_size: int,
    per_token: bool = False,
    num_workers: int = 0,
    loglik: Callable[..., PairLogLik] = pair_loglik,
    desc: str = "Computing reference log-probs",
) -> dict[str, list]:
    """Reference log-probs of every row of a paired dataset, in order, under ``reference_mode`` (no grad, eval mode).

    Args:
        dataset: any map-style dataset whose rows ``collator`` turns into a ``[chosen; rejected]`` batch with a
            ``completion_mask`` (a tokenized ``datasets.Dataset`` with ``PreferenceCollator``; a
            ``VisionPreferenceDataset`` with ``VisionPreferenceCollator``).
        loglik: ``loglik(model, batch, return_token_logps=...) -> PairLogLik`` (``pair_loglik``;
            ``visalign.likelihood.vlm.vlm_pair_loglik`` for VLMs).

    Returns per-row columns: ``ref_{chosen,rejected}_logps`` (summed, floats) and, with ``per_token``,
    ``ref_{side}_token_logps`` (one value per ``completion_mask`` position of the row, as the collators read them).
    The model runs as it is; the caller chooses adapters and autocast around the call.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator, num_workers=num_workers)
    columns: dict[str, list] = {key: [] for key in REF_COLUMNS if per_token or "token" not in key}
    with reference_mode(model):
        for batch in tqdm(loader, desc=desc):
            out = loglik(model, batch, return_token_logps=per_token)
            masks = batch["completion_mask"].bool().cpu().chunk(2)
            for side, sums, tokens, mask in zip(SIDES, (out.chosen, out.rejected),
                                                (out.chosen_token_logps, out.rejected_token_logps), masks):
                columns[f"ref_{side}_logps"] += sums.float().tolist()
                if per_token:
                    columns[f"ref_{side}_token_logps"] += [row[keep].tolist()
                                                           for row, keep in zip(tokens.float().cpu(), mask)]
    return columns


def attach_reference_logps(
    dataset: datasets.Dataset,
    model: torch.nn.Module,
    collator,
    *,
    batch_size: int,
    max_length: int | None = None,
    per_token: bool = False,
    cache_dir: str | Path | None = None,
    name: str = "dataset",
) -> datasets.Dataset:
    """``dataset`` with reference log-prob columns, from the cache file when it exists, else computed and cached
    (module docstring). ``max_length`` is the tokenization limit the dataset was built with (part of the key)."""
    data_fp = dataset_fingerprint(dataset, PAIRED_TOKEN_COLUMNS)
    key = reference_cache_key(model_fingerprint(model), data_fp, max_length=max_length, per_token=per_token)
    path = reference_cache_path(dataset, key, cache_dir)
    if path.exists():
        columns = _read_cache(path, dataset, per_token=per_token, name=name)
    else:
        columns = compute_reference_logps(model, dataset.select_columns(list(PAIRED_TOKEN_COLUMNS)), collator,
                                          batch_size=batch_size, per_token=per_token,
                                          desc=f"Reference log-probs of {name}")
        _save_atomically(_as_tensors(columns), path, key)
    dataset = dataset.remove_columns([c for c in REF_COLUMNS if c in dataset.column_names])
    for column, values in columns.items():
        dataset = dataset.add_column(column, values)
    return dataset


def _as_tensors(columns: dict[str, list]) -> dict[str, torch.Tensor]:
    """The columns as fp32 tensors for the cache file; per-token rows are concatenated."""
    return {key: torch.tensor([x for row in values for x in row] if "token" in key else values, dtype=torch.float32)
            for key, values in columns.items()}


def _read_cache(path: Path, dataset: datasets.Dataset, *, per_token: bool, name: str) -> dict[str, list]:
    """The columns stored in ``path``; per-token values are split back into rows by the completion lengths."""
    try:
        values = load_file(path)
    except (SafetensorError, OSError) as err:
        raise DataError(f"reference cache {path} is corrupt ({err}); delete the file to recompute it") from None
    if values["ref_chosen_logps"].numel() != len(dataset):
        raise ValueError(f"reference cache {path} has {values['ref_chosen_logps'].numel()} rows, {name} has "
                         f"{len(dataset)}; delete the file")
    columns: dict[str, list] = {}
    for side in SIDES:
        columns[f"ref_{side}_logps"] = values[f"ref_{side}_logps"].tolist()
        if per_token:
            lengths = [len(ids) for ids in dataset[f"{side}_input_ids"]]
            rows = values[f"ref_{side}_token_logps"].split(lengths)
            columns[f"ref_{side}_token_logps"] = [row.tolist() for row in rows]
    return columns


def _save_atomically(values: dict[str, torch.Tensor], path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(values, tmp, metadata={"key": key})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
