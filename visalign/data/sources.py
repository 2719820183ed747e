"""One way to name a dataset, shared by every model family: ``load_source(spec, split=...)``.

``spec`` is one of

- ``builtin:NAME``: a synthetic set built in code (table ``BUILTIN_DATASETS``; each entry is a lazy
  ``module:function`` path whose function takes ``split``);
- a local file ``.jsonl``/``.json``/``.parquet``/``.csv`` (``load_dataset`` with the matching builder; the file is
  the whole dataset, so ``split`` is ignored);
- a local folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``load_from_disk``; a
  ``DatasetDict`` is indexed by ``split``), or any other local data folder (``load_dataset(folder, split=split)``);
- otherwise a hub dataset id, optionally ``id:config`` (``load_dataset(id, config, split=split)``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import datasets

from visalign.errors import DataError, NotFoundError

#: builtin name -> ``module:function(split=...) -> datasets.Dataset``. Add a line to register a new built-in set.
BUILTIN_DATASETS: dict[str, str] = {
    "synthetic-preferences": "visalign.testing.text_data:synthetic_preferences",
    "synthetic-kto": "visalign.testing.text_data:synthetic_kto",
    "shapes-prompts": "visalign.shapes.prompts:shapes_prompts",
}

#: local file suffix -> ``datasets`` builder name.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

_SAVE_TO_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def load_source(spec: str, *, split: str = "train") -> datasets.Dataset:
    """Load ``spec`` (see the module docstring) as a ``datasets.Dataset``."""
    if spec.startswith("builtin:"):
        return _load_builtin(spec.removeprefix("builtin:"), split)
    path = Path(spec).expanduser()
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(
                f"dataset file {spec!r} has an unsupported suffix {path.suffix!r}; use one of {sorted(FILE_BUILDERS)}"
            )
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if path.is_dir():
        if any((path / marker).exists() for marker in _SAVE_TO_DISK_MARKERS):
            return _select_split(datasets.load_from_disk(str(path)), split, spec)
        return datasets.load_dataset(str(path), split=split)
    if path.suffix.lower() in FILE_BUILDERS or spec.startswith((".", "/", "~")):
        raise NotFoundError(f"dataset file or folder {spec!r} does not exist")
    name, _, config = spec.partition(":")
    return datasets.load_dataset(name, config or None, split=split)


def _load_builtin(name: str, split: str) -> datasets.Dataset:
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown built-in dataset 'builtin:{name}'; available: {sorted(BUILTIN_DATASETS)}")
    module, _, function = BUILTIN_DATASETS[name].partition(":")
    return getattr(importlib.import_module(module), function)(split=split)


def _select_split(data: datasets.Dataset | datasets.DatasetDict, split: str, spec: str) -> datasets.Dataset:
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"dataset folder {spec!r} has no split {split!r}; available: {sorted(data)}")
        return data[split]
    return data
