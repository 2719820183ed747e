"""Image preference pairs for diffusion training: schemas, the pair dataset and its collator.

Naming: the papers write the preferred image ``x^w`` (winner) and the dispreferred ``x^l`` (loser), with captions
``z^w``/``z^l`` in DCPO; Pick-a-Pic stores ``jpg_0``/``jpg_1`` with ``label_0`` = 1 when ``jpg_0`` won, 0 when
``jpg_1`` won and 0.5 for a tie. visalign calls the winner ``chosen`` and the loser ``rejected`` from here on.

Every schema is normalised to one record per pair, ``caption_chosen``, ``caption_rejected``, ``image_chosen``,
``image_rejected`` and an optional ``weight`` (:class:`PreferencePairs`); images stay encoded until the dataset reads
them. Schemas (:func:`load_preference_pairs`):

- ``pickapic``: columns ``jpg_0``, ``jpg_1`` (bytes), ``label_0``, ``caption``. The winner goes first
  (``label_0 > 0.5``: ``jpg_0`` is chosen; ``< 0.5``: ``jpg_1``). Ties (``label_0 == 0.5``) are dropped and counted
  (Salesforce ``train.py``, reference ``diffusion-methods.md`` §3.3); with ``keep_ties=True`` a tie is kept with
  ``jpg_0`` as chosen, as the diffusers port silently does (§4.1). Per-image captions (DCPO's Pick-Double Caption:
  ``caption_0`` describes ``jpg_0``, ``caption_1`` describes ``jpg_1``) via ``caption_0_column``/``caption_1_column``
  follow their image when ``label_0`` swaps the pair, as DCPO's ``src/dcpo_trainer.py`` does (§10.1).
- ``paired_folder``: ``chosen/`` and ``rejected/`` with matching file names (stems; extensions may differ) and captions
  in ``captions.jsonl`` (``{"file_name", "caption"}`` or per-side ``caption_chosen``/``caption_rejected``) or in
  ``.txt`` sidecars (``chosen/NAME.txt``; ``rejected/NAME.txt`` gives the rejected side its own caption). Files
  without a partner are counted and reported.
- ``generic``: any ``load_source`` dataset (jsonl/json/parquet/csv, ``save_to_disk`` folder, hub id) whose image
  columns hold bytes, ``datasets.Image`` values or paths (relative to the file or folder); column names are
  arguments, per-side captions (DCPO, arXiv 2502.06023) via ``caption_chosen_column``/``caption_rejected_column``.
  The chosen column always holds the chosen image, so a dataset with a ``label_0`` column is refused (its order is
  Pick-a-Pic's: use the ``pickapic`` schema).

Missing columns raise before any model loads. An unreadable image is skipped at read time: the dataset yields a
marker (``{SKIPPED: reason}``), :func:`collate_diffusion_pairs` drops it and reports ``num_skipped`` in the batch, for
the trainer to log. Randomness (flip, random crop, caption dropout) is drawn per sample from
``(seed, epoch, index)``, so it is reproducible across runs, DataLoader workers and processes, and the latent cache
(``visalign.data.diffusion_cache``) can replay the uncached path exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from visalign.data.image_transforms import IMAGE_ERRORS, PairTransform, open_rgb, resolve_image_path
from visalign.data.sources import load_source, local_folder
from visalign.errors import DataError, NotFoundError

logger = logging.getLogger(__name__)

SCHEMAS = ("auto", "pickapic", "paired_folder", "generic")
PICKAPIC_COLUMNS = ("jpg_0", "jpg_1", "label_0")
CAPTIONS_FILE = "captions.jsonl"
SKIPPED = "skipped"
#: Per-side tensors an item carries as ``KEY_chosen``/``KEY_rejected``; the collator stacks them ``[chosen; rejected]``.
PAIR_TENSOR_KEYS = ("pixel_values", "latents", "prompt_embeds", "pooled_prompt_embeds", "time_ids")

_BYTES_TYPES = ("binary", "large_binary")
_PATH_TYPES = ("string", "large_string")


@dataclass
class PreferencePairs:
    """Normalised preference pairs (module docstring): captions in memory, images encoded in ``images``.

    Attributes:
        name: the source, for messages.
        images: a dataset of the two raw image columns ``image_columns``; row ``i`` is pair ``i``.
        image_columns: ``(first, second)`` column names; ``swap[i]`` True means ``second`` is the chosen image.
        captions_chosen, captions_rejected: one caption per pair.
        weights: optional per-pair weight.
        base_dir: folder relative image paths are resolved against.
        confine_image_paths: image paths must stay under ``base_dir`` (checked when loading and when reading).
        source_rows: the row of the original dataset behind each pair (for messages).
        report: counts of what loading kept, dropped or could not match (e.g. ``ties_dropped``).
        path_digest: for path-valued images, a hash of every file's size and modification time.
        ties: Pick-a-Pic kept with ``keep_ties``: True where the pair is a tie (``label_0 == 0.5``).
    """

    name: str
    images: datasets.Dataset
    image_columns: tuple[str, str]
    captions_chosen: list[str]
    captions_rejected: list[str]
    weights: list[float] | None = None
    swap: np.ndarray | None = None
    base_dir: Path | None = None
    confine_image_paths: bool = False
    source_rows: np.ndarray | None = None
    report: dict[str, int] = field(default_factory=dict)
    path_digest: str | None = None
    ties: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.captions_chosen)

    def image_refs(self, index: int) -> tuple[Any, Any]:
        """``(chosen, rejected)`` encoded image references of pair ``index`` (bytes, ``{"bytes", "path"}`` or path)."""
        row = self.images[int(index)]
        first, second = (row[c] for c in self.image_columns)
        return (second, first) if self.swap is not None and self.swap[index] else (first, second)

    def open_images(self, index: int) -> tuple[Image.Image, Image.Image]:
        """``(chosen, rejected)`` of pair ``index`` decoded to RGB; raises one of ``IMAGE_ERRORS`` when unreadable."""
        chosen, rejected = (open_rgb(ref, base_dir=self.base_dir, confine=self.confine_image_paths)
                            for ref in self.image_refs(index))
        return chosen, rejected

    def check_readable(self) -> None:
        """Raise ``DataError`` unless some pair decodes: pairs are tried in order up to the first readable one, so a
        set whose every image is corrupt fails before any model loads instead of after training."""
        last = "no pairs"
        for index in range(len(self)):
            try:
                self.open_images(index)
                return
            except IMAGE_ERRORS as err:
                last = f"{self.describe(index)}: {type(err).__name__}: {err}"
        raise DataError(f"{self.name}: none of the {len(self)} pairs has two readable images (last: {last})")

    def describe(self, index: int) -> str:
        row = index if self.source_rows is None else int(self.source_rows[index])
        return f"{self.name} row {row}"

    def fingerprint(self) -> str:
        """Hash of the images and their chosen/rejected order: the dataset fingerprint, the columns, the swap mask and,
        for image paths, each file's size and modification time. Changes when the data change."""
        digest = hashlib.sha256(json.dumps(
            {"dataset": self.images._fingerprint, "columns": self.image_columns, "n": len(self),
             "base_dir": str(self.base_dir), "paths": self.path_digest}, sort_keys=True).encode())
        if self.swap is not None:
            digest.update(np.ascontiguousarray(self.swap, dtype=np.uint8).tobytes())
        return digest.hexdigest()


def load_preference_pairs(
    spec: str,
    *,
    schema: str = "auto",
    split: str = "train",
    keep_ties: bool = False,
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    caption_column: str = "caption",
    caption_chosen_column: str | None = None,
    caption_rejected_column: str | None = None,
    caption_0_column: str | None = None,
    caption_1_column: str | None = None,
    weight_column: str | None = None,
    confine_image_paths: bool = False,
) -> PreferencePairs:
    """Load ``spec`` (a paired folder or any ``load_source`` spec) as :class:`PreferencePairs`.

    ``schema="auto"``: a folder with ``chosen/`` and ``rejected/`` is a paired folder; a dataset with ``jpg_0``,
    ``jpg_1`` and ``label_0`` is Pick-a-Pic; anything else is generic. Column arguments apply where the schema has
    that column (Pick-a-Pic uses ``caption_column`` or ``caption_0_column``/``caption_1_column``, and
    ``weight_column``). Per-side caption columns of the other kind alone (chosen/rejected for Pick-a-Pic, 0/1 for
    generic data) raise, naming the columns to use. Image paths of every schema are relative to the dataset file's
    folder (or the dataset folder); ``confine_image_paths`` refuses paths that lead outside it.
    """
    if schema not in SCHEMAS:
        raise DataError(f"unknown diffusion data schema {schema!r}; use one of {SCHEMAS}")
    path = Path(spec).expanduser()
    if schema == "paired_folder" or (schema == "auto" and (path / "chosen").is_dir() and (path / "rejected").is_dir()):
        return paired_folder_pairs(path, confine_image_paths=confine_image_paths)
    dataset = load_source(spec, split=split)
    base_dir = local_folder(spec)
    if schema == "pickapic" or (schema == "auto" and set(PICKAPIC_COLUMNS) <= set(dataset.column_names)):
        if caption_chosen_column is not None and caption_0_column is None:
            raise DataError(
                f"{spec}: Pick-a-Pic-shaped data (jpg_0, jpg_1, label_0) has no chosen/rejected columns, so "
                f"caption_chosen_column={caption_chosen_column!r} and caption_rejected_column="
                f"{caption_rejected_column!r} cannot be read; name its per-image captions with caption_0_column and "
                "caption_1_column (Pick-Double Caption: caption_0, caption_1)"
            )
        return pickapic_pairs(dataset, name=spec, keep_ties=keep_ties, caption_column=caption_column,
                              caption_0_column=caption_0_column, caption_1_column=caption_1_column,
                              weight_column=weight_column, base_dir=base_dir,
                              confine_image_paths=confine_image_paths)
    if caption_0_column is not None and caption_chosen_column is None:
        raise DataError(
            f"{spec}: caption_0_column={caption_0_column!r} and caption_1_column={caption_1_column!r} are per-image "
            f"captions of Pick-a-Pic-shaped data (jpg_0, jpg_1, label_0), which {spec} is not (schema {schema!r}); "
            "name chosen/rejected-side captions with caption_chosen_column and caption_rejected_column"
        )
    return generic_pairs(
        dataset, name=spec, base_dir=base_dir, chosen_column=chosen_column, rejected_column=rejected_column,
        caption_column=caption_column, caption_chosen_column=caption_chosen_column,
        caption_rejected_column=caption_rejected_column, weight_column=weight_column,
        confine_image_paths=confine_image_paths,
    )


def pickapic_pairs(
    dataset: datasets.Dataset,
    *,
    name: str = "pickapic",
    keep_ties: bool = False,
    caption_column: str = "caption",
    caption_0_column: str | None = None,
    caption_1_column: str | None = None,
    weight_column: str | None = None,
    base_dir: str | Path | None = None,
    confine_image_paths: bool = False,
) -> PreferencePairs:
    """Pick-a-Pic rows (``jpg_0``, ``jpg_1``, ``label_0``, caption) as pairs, winner first (module docstring).
    Path-valued images are relative to ``base_dir``, as in :func:`generic_pairs`.

    With ``caption_0_column``/``caption_1_column`` (DCPO's Pick-Double Caption) each image keeps its own caption:
    the chosen side's caption is the one of the image ``label_0`` picks."""
    if (caption_0_column is None) != (caption_1_column is None):
        raise DataError(f"{name}: per-image captions need both caption_0_column and caption_1_column; got "
                        f"caption_0_column={caption_0_column!r}, caption_1_column={caption_1_column!r}")
    caption_columns = (caption_0_column, caption_1_column) if caption_0_column else (caption_column, caption_column)
    _require_columns(dataset, [*PICKAPIC_COLUMNS, *caption_columns, weight_column], name, "pickapic")
    labels = _numbers(dataset, "label_0", name, allow_nan=True)
    bad = np.flatnonzero((labels < 0) | (labels > 1))
    if bad.size:
        raise DataError(f"{name} row {bad[0]}: label_0={labels[bad[0]]} is outside [0, 1]")
    unlabelled = np.isnan(labels)  # `visalign relabel` writes NaN where the judge gave no preference
    ties = labels == 0.5
    rows = np.flatnonzero(~unlabelled & (np.ones_like(ties) if keep_ties else ~ties))
    swap = labels[rows] < 0.5
    first, second = (_strings(dataset, column, name) for column in caption_columns)
    captions = [(second[i], first[i]) if swapped else (first[i], second[i]) for i, swapped in zip(rows, swap)]
    report = {"rows": len(labels), "pairs": len(rows), "ties": int(ties.sum()),
              "ties_dropped": 0 if keep_ties else int(ties.sum()), "unlabelled_dropped": int(unlabelled.sum())}
    logger.info("%s: %d pairs from %d rows; %d ties %s; %d rows without a preference (label_0 NaN) dropped", name,
                len(rows), len(labels), report["ties"], "kept (jpg_0 as chosen)" if keep_ties else "dropped",
                report["unlabelled_dropped"])
    base_dir = None if base_dir is None else Path(base_dir)
    images = _image_columns(dataset, ("jpg_0", "jpg_1"), name, rows)
    path_digest = _path_digest(images, ("jpg_0", "jpg_1"), base_dir, name, report, confine_image_paths, rows)
    return PreferencePairs(
        name=name,
        images=images,
        image_columns=("jpg_0", "jpg_1"),
        captions_chosen=[chosen for chosen, _ in captions],
        captions_rejected=[rejected for _, rejected in captions],
        weights=_weights(dataset, weight_column, name, rows),
        swap=swap,
        base_dir=base_dir,
        confine_image_paths=confine_image_paths,
        source_rows=rows,
        report=report,
        path_digest=path_digest,
        ties=ties[rows],
    )


def generic_pairs(
    dataset: datasets.Dataset,
    *,
    name: str = "dataset",
    base_dir: str | Path | None = None,
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    caption_column: str = "caption",
    caption_chosen_column: str | None = None,
    caption_rejected_column: str | None = None,
    weight_column: str | None = None,
    confine_image_paths: bool = False,
) -> PreferencePairs:
    """Pairs from named columns: images as bytes, ``datasets.Image`` or paths relative to ``base_dir`` (which
    ``confine_image_paths`` makes them stay under); one caption column, or per-side caption columns (DCPO).
    Missing image files are counted and named before anything loads; all of them missing raises."""
    if (caption_chosen_column is None) != (caption_rejected_column is None):
        raise DataError(
            f"{name}: per-side captions need both caption_chosen_column and caption_rejected_column; got "
            f"caption_chosen_column={caption_chosen_column!r}, caption_rejected_column={caption_rejected_column!r}"
        )
    caption_columns = (caption_chosen_column, caption_rejected_column) if caption_chosen_column else (
        caption_column, caption_column)
    _require_columns(dataset, [chosen_column, rejected_column, *caption_columns, weight_column], name, "generic")
    if "label_0" in dataset.column_names:
        raise DataError(
            f"{name}: has a 'label_0' column, which the generic schema does not read (it takes {chosen_column!r} as "
            "the chosen image in every row); use data_schema pickapic (columns jpg_0, jpg_1, label_0), which orders "
            "each pair by label_0, or drop label_0 once the columns are in chosen/rejected order"
        )
    base_dir = None if base_dir is None else Path(base_dir)
    images = _image_columns(dataset, (chosen_column, rejected_column), name, None)
    report = {"rows": len(dataset), "pairs": len(dataset)}
    path_digest = _path_digest(images, (chosen_column, rejected_column), base_dir, name, report, confine_image_paths)
    return PreferencePairs(
        name=name,
        images=images,
        image_columns=(chosen_column, rejected_column),
        captions_chosen=_strings(dataset, caption_columns[0], name),
        captions_rejected=_strings(dataset, caption_columns[1], name),
        weights=_weights(dataset, weight_column, name, None),
        base_dir=base_dir,
        confine_image_paths=confine_image_paths,
        report=report,
        path_digest=path_digest,
    )


def paired_folder_pairs(root: str | Path, *, confine_image_paths: bool = False) -> PreferencePairs:
    """Pairs from ``root/chosen`` and ``root/rejected`` with matching file stems (module docstring);
    ``confine_image_paths`` refuses files that are symlinks to outside ``root``."""
    root = Path(root)
    sides = {side: _image_files(root / side) for side in ("chosen", "rejected")}
    stems = sorted(sides["chosen"].keys() & sides["rejected"].keys())
    unmatched = {side: sorted(files.keys() - set(stems)) for side, files in sides.items()}
    for side, missing in unmatched.items():
        if missing:
            other = "rejected" if side == "chosen" else "chosen"
            logger.warning("%s: %d file(s) in %s/ have no partner in %s/ and are not used: %s", root, len(missing),
                           side, other, [sides[side][s] for s in missing[:5]])
    if not stems:
        raise DataError(f"{root}: no file name appears in both chosen/ and rejected/")
    captions = _folder_captions(root, stems, sides)
    table = datasets.Dataset.from_dict({
        "chosen": [f"chosen/{sides['chosen'][s]}" for s in stems],
        "rejected": [f"rejected/{sides['rejected'][s]}" for s in stems],
        "caption_chosen": [captions[s][0] for s in stems],
        "caption_rejected": [captions[s][1] for s in stems],
    })
    pairs = generic_pairs(table, name=str(root), base_dir=root, caption_chosen_column="caption_chosen",
                          caption_rejected_column="caption_rejected", confine_image_paths=confine_image_paths)
    pairs.report.update(unmatched_chosen=len(unmatched["chosen"]), unmatched_rejected=len(unmatched["rejected"]))
    return pairs


def _image_files(folder: Path) -> dict[str, str]:
    """``{stem: file name}`` of the images in ``folder`` (by PIL-registered extension); duplicate stems raise."""
    extensions = set(Image.registered_extensions())
    files: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in extensions:
            continue
        if path.stem in files:
            raise DataError(f"{folder}: {files[path.stem]!r} and {path.name!r} have the same name; pairs are matched "
                            "by file name without extension")
        files[path.stem] = path.name
    return files


def _folder_captions(root: Path, stems: Sequence[str], sides: dict) -> dict[str, tuple[str, str]]:
    """``{stem: (caption_chosen, caption_rejected)}`` from ``captions.jsonl``, else from ``.txt`` sidecars."""
    captions: dict[str, tuple[str, str]] = {}
    jsonl = root / CAPTIONS_FILE
    if jsonl.is_file():
        for line_no, line in enumerate(_read_text(jsonl).splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{jsonl} line {line_no}: not valid JSON ({err})") from None
            captions[Path(str(entry.get("file_name", ""))).stem] = _entry_captions(entry, f"{jsonl} line {line_no}")
        orphans = captions.keys() - set(stems)
        if orphans:
            logger.warning("%s: %d caption(s) name files that are not in both folders: %s", jsonl, len(orphans),
                           sorted(orphans)[:5])
    else:
        for stem in stems:
            chosen_txt, rejected_txt = root / "chosen" / f"{stem}.txt", root / "rejected" / f"{stem}.txt"
            if chosen_txt.is_file():
                caption = _read_text(chosen_txt).strip()
                other = _read_text(rejected_txt).strip() if rejected_txt.is_file() else caption
                captions[stem] = (caption, other)
    missing = [sides["chosen"][s] for s in stems if s not in captions]
    if missing:
        where = jsonl if jsonl.is_file() else f"{root}/chosen/NAME.txt sidecars"
        raise DataError(f"{root}: {len(missing)} pair(s) have no caption in {where}, e.g. {missing[:5]}")
    return captions


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 text ({err.reason}); re-encode the file as UTF-8") from None


def _entry_captions(entry: dict, where: str) -> tuple[str, str]:
    if "file_name" not in entry:
        raise DataError(f"{where}: missing key 'file_name'")
    if "caption_chosen" in entry or "caption_rejected" in entry:
        keys = ("caption_chosen", "caption_rejected")
    elif "caption" in entry:
        keys = ("caption", "caption")
    else:
        raise DataError(f"{where}: needs 'caption', or 'caption_chosen' and 'caption_rejected'")
    for key in keys:
        if not isinstance(entry.get(key), str):
            raise DataError(f"{where}: {key!r} must be a string; got {entry.get(key)!r}")
    return entry[keys[0]], entry[keys[1]]


def _require_columns(dataset: datasets.Dataset, columns: Sequence[str | None], name: str, schema: str) -> None:
    missing = sorted({c for c in columns if c is not None and c not in dataset.column_names})
    if missing:
        raise DataError(f"{name}: missing column(s) {missing} for the {schema!r} diffusion preference schema; it has "
                        f"{dataset.column_names}")


def _numbers(dataset: datasets.Dataset, column: str, name: str, allow_nan: bool = False) -> np.ndarray:
    values = list(dataset[column])
    for row, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isinf(value) or (
                math.isnan(value) and not allow_nan):
            raise DataError(f"{name} row {row}: column {column!r} must be a finite number; got {value!r}")
    return np.asarray(values, dtype=np.float64)


def _strings(dataset: datasets.Dataset, column: str, name: str) -> list[str]:
    values = list(dataset[column])
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"{name} row {row}: column {column!r} must be a string caption; got {value!r}")
    return values


def _weights(dataset, column: str | None, name: str, rows: np.ndarray | None) -> list[float] | None:
    if column is None:
        return None
    values = _numbers(dataset, column, name)
    return (values if rows is None else values[rows]).tolist()


def _image_columns(dataset, columns: tuple[str, str], name: str, rows: np.ndarray | None) -> datasets.Dataset:
    """The two image columns only (``datasets.Image`` cast to ``decode=False``, so decoding errors reach us)."""
    images = dataset.select_columns(list(dict.fromkeys(columns)))
    for column in columns:
        feature = images.features[column]
        if isinstance(feature, datasets.Image):
            if feature.decode:
                images = images.cast_column(column, datasets.Image(decode=False))
        elif not (isinstance(feature, datasets.Value) and feature.dtype in _BYTES_TYPES + _PATH_TYPES):
            raise DataError(f"{name}: image column {column!r} must hold bytes, datasets.Image or paths; got {feature}")
    if rows is not None and len(rows) != len(images):
        images = images.select(rows)
    return images


def _path_digest(images, columns, base_dir: Path | None, name: str, report: dict, confine: bool = False,
                 rows: np.ndarray | None = None) -> str | None:
    """sha256 of ``(size, mtime_ns)`` of every path-valued image, for the fingerprint. Paths resolve against
    ``base_dir`` (:func:`resolve_image_path`); a null path, or with ``confine`` a path outside ``base_dir``, raises
    naming the row (``rows``: the source row of each image row). Missing files are counted in
    ``report["missing_images"]`` (they are skipped at read time); all of them missing raises."""
    path_columns = [c for c in columns
                    if isinstance(images.features[c], datasets.Value) and images.features[c].dtype in _PATH_TYPES]
    if not path_columns:
        return None
    digest, missing, total = hashlib.sha256(), [], 0
    for column in path_columns:
        for row, value in enumerate(images[column]):
            where = f"{name} row {row if rows is None else int(rows[row])}, column {column!r}"
            if value is None:
                raise DataError(f"{where}: the image path is null; give every pair both images")
            try:
                path = resolve_image_path(value, base_dir, confine=confine)
            except ValueError as err:
                raise DataError(f"{where}: {err}; use paths inside the dataset folder, or set confine_image_paths: "
                                "false") from None
            total += 1
            try:
                st = path.stat()
                digest.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                digest.update(b"missing;")
                missing.append(str(path))
    report["missing_images"] = len(missing)
    if missing and len(missing) == total:
        raise NotFoundError(f"{name}: none of the {total} image paths exist (e.g. {missing[0]}); relative "
                            f"paths are resolved against {base_dir or 'the working directory'}")
    if missing:
        logger.warning("%s: %d image file(s) do not exist and will be skipped, e.g. %s", name, len(missing),
                       missing[:5])
    return digest.hexdigest()


def pair_rngs(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators ``(captions, augmentation)`` of one sample, derived from ``(seed, epoch, index)``."""
    captions, augmentation = np.random.SeedSequence([seed, epoch, int(index)]).spawn(2)
    return np.random.default_rng(captions), np.random.default_rng(augmentation)


def drop_pair_captions(
    caption_chosen: str, caption_rejected: str, proportion: float, rng: np.random.Generator
) -> tuple[str, str]:
    """Both captions of a pair replaced by ``""`` with probability ``proportion`` (classifier-free-guidance dropout:
    0.2 in Salesforce Diffusion-DPO and its forks, 0 in the diffusers port and MaPO; reference §2.4)."""
    if rng.random() < proportion:
        return "", ""
    return caption_chosen, caption_rejected


def _check_proportion(proportion: float) -> float:
    if not 0.0 <= proportion <= 1.0:
        raise ValueError(f"caption_dropout must be in [0, 1]; got {proportion}")
    return float(proportion)


class SeededPairDataset(torch.utils.data.Dataset):
    """What the uncached and cached pair datasets share: ``pairs``, per-sample randomness drawn from
    ``(seed, epoch, index)`` (:func:`pair_rngs`), caption dropout, the epoch and the count of skipped pairs.
    """

    def __init__(self, pairs: PreferencePairs, *, caption_dropout: float = 0.0, seed: int = 0):
        self.pairs = pairs
        self.caption_dropout, self.seed = _check_proportion(caption_dropout), seed
        self.epoch = 0
        self.num_skipped = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def draw(self, index: int) -> tuple[tuple[str, str], np.random.Generator]:
        """``((caption_chosen, caption_rejected) after dropout, augmentation generator)`` of pair ``index``."""
        caption_rng, augmentation_rng = pair_rngs(self.seed, self.epoch, index)
        captions = drop_pair_captions(self.pairs.captions_chosen[index], self.pairs.captions_rejected[index],
                                      self.caption_dropout, caption_rng)
        return captions, augmentation_rng

    def pair_fields(self, index: int, captions: tuple[str, str]) -> dict[str, Any]:
        """``caption_chosen``, ``caption_rejected`` and, when the pairs have weights, ``weight`` of an item."""
        fields: dict[str, Any] = {"caption_chosen": captions[0], "caption_rejected": captions[1]}
        if self.pairs.weights is not None:
            fields["weight"] = self.pairs.weights[index]
        return fields


class DiffusionPreferenceDataset(SeededPairDataset):
    """Decoded, jointly transformed pairs (``visalign.data.image_transforms``) with caption dropout.

    An item: ``pixel_values_chosen``/``pixel_values_rejected`` ``[3, res, res]`` in ``[-1, 1]``,
    ``original_size_chosen``/``original_size_rejected`` ``(h, w)``, ``crop_top_left`` ``(top, left)``,
    ``caption_chosen``/``caption_rejected`` (``""`` when dropped) and ``weight`` when the pairs have weights; or
    ``{SKIPPED: reason}`` when an image cannot be read (also counted in ``num_skipped`` of this process).

    Call :meth:`set_epoch` before each epoch so flips, crops and dropout differ between epochs.
    """

    def __init__(self, pairs: PreferencePairs, transform: PairTransform, *, caption_dropout: float = 0.0,
                 seed: int = 0):
        super().__init__(pairs, caption_dropout=caption_dropout, seed=seed)
        self.transform = transform

    def __getitem__(self, index: int) -> dict[str, Any]:
        captions, augmentation_rng = self.draw(index)
        try:
            chosen, rejected = self.pairs.open_images(index)
        except IMAGE_ERRORS as err:
            return skip_marker(self, index, f"unreadable image skipped ({type(err).__name__}: {err})")
        out = self.transform(chosen, rejected, augmentation_rng)
        return {
            "pixel_values_chosen": out.chosen,
            "pixel_values_rejected": out.rejected,
            "original_size_chosen": out.original_size_chosen,
            "original_size_rejected": out.original_size_rejected,
            "crop_top_left": out.crop_top_left,
            **self.pair_fields(index, captions),
        }


def skip_marker(dataset, index: int, reason: str) -> dict[str, str]:
    """Count (in ``dataset.num_skipped``), log and return the marker of a pair that cannot be used."""
    dataset.num_skipped += 1
    message = f"{dataset.pairs.describe(index)}: {reason}"
    logger.warning(message)
    return {SKIPPED: message}


def collate_diffusion_pairs(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack B kept items to ``[chosen; rejected]`` (rows ``0..B-1`` chosen, ``B..2B-1`` rejected).

    Returns ``num_pairs`` (B) and ``num_skipped`` (markers dropped from this batch, for the trainer to log),
    ``captions_chosen``/``captions_rejected`` (B strings each), ``original_sizes`` and ``crop_top_lefts``
    (``[2B, 2]`` long; the crop is shared within a pair), ``weights`` ``[B]`` fp32 when every item has one, and, for
    each ``KEY`` of :data:`PAIR_TENSOR_KEYS` the items carry, ``KEY`` ``[2B, ...]``: ``pixel_values`` from
    :class:`DiffusionPreferenceDataset`; ``latents``, ``prompt_embeds`` and, for SDXL, ``pooled_prompt_embeds`` and
    ``time_ids`` from the cached dataset. A batch whose items were all skipped has ``num_pairs == 0`` and no tensors.
    """
    kept = [item for item in items if SKIPPED not in item]
    batch: dict[str, Any] = {
        "num_pairs": len(kept),
        "num_skipped": len(items) - len(kept),
        "captions_chosen": [item["caption_chosen"] for item in kept],
        "captions_rejected": [item["caption_rejected"] for item in kept],
    }
    if not kept:
        return batch
    for key in PAIR_TENSOR_KEYS:
        if f"{key}_chosen" in kept[0]:
            batch[key] = torch.stack([item[f"{key}_{side}"] for side in ("chosen", "rejected") for item in kept])
    batch["original_sizes"] = torch.tensor(
        [item[f"original_size_{side}"] for side in ("chosen", "rejected") for item in kept], dtype=torch.long)
    batch["crop_top_lefts"] = torch.tensor([item["crop_top_left"] for item in kept] * 2, dtype=torch.long)
    if all("weight" in item for item in kept):
        batch["weights"] = torch.tensor([item["weight"] for item in kept], dtype=torch.float32)
    return batch
