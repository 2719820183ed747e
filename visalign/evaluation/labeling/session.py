"""One annotator's labelling session: the pairs, the side shown on the left, and the append-only log replayed
into Pick-a-Pic rows (package docstring)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visalign.data.diffusion import CAPTIONS_FILE, generic_pairs, paired_folder_pairs
from visalign.data.image_transforms import resolve_image_path
from visalign.data.sources import load_source
from visalign.errors import DataError, InputError, NotFoundError

logger = logging.getLogger(__name__)

EVENTS_DIR = ".events"
CHOICES = ("left", "right", "tie", "skip")
ANNOTATOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class LabelPair:
    """One pair to judge: its prompt and its two image files (``image_0``, ``image_1``), absolute."""

    caption: str
    images: tuple[Path, Path]


def load_label_pairs(spec: str | Path) -> list[LabelPair]:
    """The pairs of a paired folder or of a jsonl of ``prompt``/``caption``, ``image_0``, ``image_1`` (module
    docstring); raises ``DataError``/``NotFoundError`` naming the file and row when a pair cannot be shown."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "chosen").is_dir() and (path / "rejected").is_dir():
        pairs = paired_folder_pairs(path)
    elif path.is_file():
        dataset = load_source(str(path))
        caption = "prompt" if "prompt" in dataset.column_names else "caption"
        pairs = generic_pairs(dataset, name=str(path), base_dir=path.parent, chosen_column="image_0",
                              rejected_column="image_1", caption_column=caption)
    else:
        raise NotFoundError(f"--pairs {spec}: not a pair folder (chosen/, rejected/, {CAPTIONS_FILE}) or a jsonl file "
                            "of prompt, image_0, image_1")
    result = []
    for index in range(len(pairs)):
        refs = pairs.image_refs(index)
        files = []
        for column, ref in zip(("image_0", "image_1"), refs):
            if not isinstance(ref, str):
                raise DataError(f"{pairs.describe(index)}, {column}: labelling needs an image file path; got "
                                f"{type(ref).__name__} (write the images to files and list their paths)")
            file = resolve_image_path(ref, pairs.base_dir).resolve()
            if not file.is_file():
                raise NotFoundError(f"{pairs.describe(index)}, {column}: image file {file} does not exist")
            files.append(file)
        result.append(LabelPair(pairs.captions_chosen[index], (files[0], files[1])))
    if not result:
        raise DataError(f"--pairs {spec}: no pairs to label")
    return result


def left_image(seed: int, annotator: str, index: int) -> int:
    """Which image (0 or 1) of pair ``index`` this annotator sees on the left: a fair coin seeded by all three."""
    return random.Random(f"{seed}:{annotator}:{index}").randrange(2)


def label_0(choice: str, left: int) -> float:
    """Pick-a-Pic's ``label_0`` from a click: 1 when image 0 won, 0 when image 1 won, 0.5 for a tie."""
    if choice == "tie":
        return 0.5
    winner = left if choice == "left" else 1 - left
    return 1.0 if winner == 0 else 0.0


class Conflict(Exception):
    """A request that does not fit the session's state (an old pair, nothing to undo): HTTP 409."""


class LabelSession:
    """One annotator's labelling of ``pairs`` into ``out``: the event log, its replay and the Pick-a-Pic rows.

    Thread-safe; :meth:`close` releases the annotator's lock."""

    def __init__(self, pairs: list[LabelPair], out: str | Path, annotator: str, *, seed: int = 0):
        if not ANNOTATOR_NAME.fullmatch(annotator):
            raise InputError(f"--annotator {annotator!r}: use 1-64 letters, digits, '_', '.' or '-' (it names the "
                             "annotator's file), starting with a letter or digit")
        self.pairs, self.annotator, self.seed = pairs, annotator, seed
        self.out = Path(out)
        self.events_path = self.out / EVENTS_DIR / f"{annotator}.jsonl"
        self.rows_path = self.out / f"{annotator}.jsonl"
        self.events_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.events_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise InputError(f"annotator {annotator!r} is already labelling into {self.out} (another `visalign "
                             "label` holds its log); stop it or pass another --annotator") from None
        self._decisions: list[dict[str, Any]] = []  # label and skip events not undone, oldest first
        self._replay()
        self._write_rows()

    # ---- log ---------------------------------------------------------------------------------------------------

    def _replay(self) -> None:
        self._file.seek(0)
        text = self._file.read()
        lines = text.split("\n")
        if lines[-1]:  # no final newline: the process died while writing this line; it was never acknowledged
            logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted write",
                           self.events_path, len(lines[-1].encode()))
            self._file.truncate(len(text.encode()) - len(lines[-1].encode()))
        for line_no, line in enumerate(lines[:-1], 1):
            where = f"{self.events_path} line {line_no}"
            try:
                event = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err}); the log is append-only, do not edit it") from None
            self._apply(event, where)

    def _apply(self, event: dict[str, Any], where: str) -> None:
        kind = event.get("event")
        if kind == "undo":
            if not self._decisions:
                raise DataError(f"{where}: undo with nothing to undo")
            self._decisions.pop()
            return
        index = event.get("pair")
        if kind not in ("label", "skip") or not isinstance(index, int) or not 0 <= index < len(self.pairs):
            raise DataError(f"{where}: not a label, skip or undo event of one of the {len(self.pairs)} pairs: {event}")
        images = [self._relative(p) for p in self.pairs[index].images]
        if event.get("images") != images:
            raise DataError(f"{where}: pair {index} was {event.get('images')} but --pairs now gives {images}; label "
                            "a changed set of pairs into a new --out folder")
        self._decisions.append(event)

    def _append(self, event: dict[str, Any]) -> None:
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def _relative(self, path: Path) -> str:
        return os.path.relpath(path, self.out.resolve())

    def _write_rows(self) -> None:
        rows = self.rows()
        if not rows:
            self.rows_path.unlink(missing_ok=True)
            return
        tmp = self.rows_path.with_name(f".{self.rows_path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.rows_path)

    # ---- state -------------------------------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """The labels (not skips) as Pick-a-Pic rows, in the order they were given."""
        return [{"caption": self.pairs[e["pair"]].caption, "jpg_0": e["images"][0], "jpg_1": e["images"][1],
                 "label_0": e["label_0"], "annotator": self.annotator, "time": e["time"], "pair": e["pair"],
                 "left": e["left"]} for e in self._decisions if e["event"] == "label"]

    def current(self) -> int | None:
        """The first pair without a decision; ``None`` when every pair has one."""
        decided = {e["pair"] for e in self._decisions}
        return next((i for i in range(len(self.pairs)) if i not in decided), None)

    def state(self) -> dict[str, Any]:
        """What the page shows: the current pair's prompt and index, progress, and whether undo can act."""
        with self._lock:
            index = self.current()
            return {"pair": index, "caption": None if index is None else self.pairs[index].caption,
                    "total": len(self.pairs), "decided": len(self._decisions),
                    "labelled": sum(e["event"] == "label" for e in self._decisions),
                    "can_undo": bool(self._decisions), "annotator": self.annotator}

    def side_image(self, index: int, side: str) -> Path:
        """The file shown on ``side`` ("left"/"right") of pair ``index``."""
        left = left_image(self.seed, self.annotator, index)
        return self.pairs[index].images[left if side == "left" else 1 - left]

    # ---- actions -----------------------------------------------------------------------------------------------

    def answer(self, index: int, choice: str) -> dict[str, Any]:
        """Record ``choice`` for pair ``index``, which must be the current pair (a repeated click is refused, so
        nothing is labelled twice); returns the new state once the click is on disk."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}; got {choice!r}")
        with self._lock:
            if index != self.current():
                raise Conflict(f"pair {index} is not the current pair ({self.current()}); reload the page")
            left = left_image(self.seed, self.annotator, index)
            event = {"event": "skip" if choice == "skip" else "label", "pair": index,
                     "images": [self._relative(p) for p in self.pairs[index].images], "left": left, "choice": choice,
                     "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if choice != "skip":
                event["label_0"] = label_0(choice, left)
            self._append(event)
            self._decisions.append(event)
            self._write_rows()
        return self.state()

    def undo(self) -> dict[str, Any]:
        """Take back the latest decision (appends an ``undo`` event); its pair becomes the current one again."""
        with self._lock:
            if not self._decisions:
                raise Conflict("nothing to undo")
            self._append({"event": "undo", "pair": self._decisions[-1]["pair"],
                          "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            self._decisions.pop()
            self._write_rows()
        return self.state()

    def close(self) -> None:
        self._file.close()  # releases the lock
