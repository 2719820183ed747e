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

import codecs
import importlib
import json
from pathlib import Path

import datasets

from visalign._quiet import bars_off
from visalign.errors import DataError, NotFoundError

#: builtin name -> ``module:function(split=...) -> datasets.Dataset``. Add a line to register a new built-in set.
BUILTIN_DATASETS: dict[str, str] = {
    "synthetic-preferences": "visalign.testing.text_data:synthetic_preferences",
    "synthetic-kto": "visalign.testing.text_data:synthetic_kto",
    "shapes-prompts": "visalign.shapes.prompts:shapes_prompts",
}

#: local file suffix -> ``datasets`` builder name.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_TEXT_BUILDERS = ("json", "csv")

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
        return _load_file(path, builder, spec)
    if path.is_dir():
        if any((path / marker).exists() for marker in _SAVE_TO_DISK_MARKERS):
            return _select_split(datasets.load_from_disk(str(path)), split, spec)
        return datasets.load_dataset(str(path), split=split)
    if path.suffix.lower() in FILE_BUILDERS or spec.startswith((".", "/", "~")):
        raise NotFoundError(f"dataset file or folder {spec!r} does not exist")
    name, _, config = spec.partition(":")
    return datasets.load_dataset(name, config or None, split=split)


def local_folder(spec: str) -> Path | None:
    """The folder of a local dataset (the folder itself, or a data file's folder), against which its relative image
    paths are resolved; ``None`` for a Hub dataset."""
    path = Path(spec).expanduser()
    return path if path.is_dir() else path.parent if path.is_file() else None


def _load_file(path: Path, builder: str, spec: str) -> datasets.Dataset:
    """One local file; text that is not UTF-8 or a file the builder cannot parse raises ``DataError`` naming the file
    and, where it can be found, the line."""
    if builder in _TEXT_BUILDERS:
        _check_utf8(path, spec)
    try:
        # datasets' "Generating train split" bars: a local file loads in moments, the bars are noise
        with bars_off(datasets.is_progress_bar_enabled, datasets.disable_progress_bars, datasets.enable_progress_bars):
            return datasets.load_dataset(builder, data_files=str(path), split="train")
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__ or err
        bad_line = _first_bad_json_line(path) if path.suffix.lower() == ".jsonl" else None
        raise DataError(f"{spec} {bad_line}" if bad_line else
                        f"{spec}: cannot be read as {builder} ({type(cause).__name__}: {cause})") from err


def _check_utf8(path: Path, spec: str) -> None:
    """Raise ``DataError`` naming the line of the first byte that is not UTF-8 (read in 1 MiB chunks)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                line += err.object[: err.start].count(b"\n")
                raise DataError(f"{spec} line {line}: not UTF-8 text ({err.reason} at byte {err.object[err.start]:#x}); "
                                "re-encode the file as UTF-8") from None
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"{spec} line {line}: not UTF-8 text (truncated character at the end of the file)") from None


def _first_bad_json_line(path: Path) -> str | None:
    """``"line N: ..."`` for the first non-blank line of a JSON Lines file that is not a JSON object, else None."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {number}: not valid JSON ({err.msg} at column {err.colno})"
            if not isinstance(row, dict):
                return f"line {number}: a JSON Lines row must be an object, got {type(row).__name__}"
    return None


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
