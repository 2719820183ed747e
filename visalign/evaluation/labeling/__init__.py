"""Pairwise human preferences collected in the browser: the storage and the local server behind `visalign label`.

Pairs come from a paired folder (``chosen/``, ``rejected/``, ``captions.jsonl``: what ``visalign.evaluation.pairs``
writes, image 0 = chosen by its scorer) or from a jsonl of ``prompt`` (or ``caption``), ``image_0`` and ``image_1``
(paths relative to the file). Each annotator sees every pair once, in input order, the two images in an order drawn
per pair from ``(seed, annotator, pair)`` and recorded, so it is the same after a restart and differs across
annotators (position bias averages out).

Storage, under the output folder ``OUT``, one annotator per file so that annotators never write the same file:

- ``OUT/.events/NAME.jsonl``: the append-only log, the source of truth. Every click is one line (``label``,
  ``skip`` or ``undo``; undo takes back the latest label or skip not yet undone), written, flushed and fsync'd before
  the next pair is shown. A restart replays it and continues at the first pair without a decision; a last line torn
  by a kill mid-write is dropped. An exclusive lock keeps a second server off the same annotator's log.
- ``OUT/NAME.jsonl``: the labels as Pick-a-Pic rows (``caption``, ``jpg_0``, ``jpg_1`` as paths relative to ``OUT``,
  ``label_0`` = 1 when ``jpg_0`` won, 0 when ``jpg_1`` won, 0.5 for a tie; plus ``annotator``, ``time``, ``pair``
  and ``left``, the image shown on the left), rebuilt from the log after every click (written to a temporary name,
  fsync'd, renamed). ``OUT`` is then a dataset that ``visalign train --dataset OUT`` reads with the ``pickapic``
  schema (``datasets`` skips the hidden ``.events``).

The server (:class:`LabelServer`, stdlib ``ThreadingHTTPServer``) serves the page, a JSON API and each pair's two
images by pair index and side, never by path, so no URL reaches another file. Without a token it accepts only a
loopback ``Host`` header (DNS rebinding); with one, every request must carry it (``?token=`` or the
``X-Visalign-Token`` header). Bad requests get a 4xx and a one-line JSON error.

Modules: ``session`` (the pairs, the sides, the log and its rows), ``server`` (the page and its API), ``agreement``.
"""

from visalign.evaluation.labeling.agreement import annotator_agreement, read_labels
from visalign.evaluation.labeling.server import LOOPBACK_HOSTS, LabelServer
from visalign.evaluation.labeling.session import (
    EVENTS_DIR,
    LabelPair,
    LabelSession,
    label_0,
    left_image,
    load_label_pairs,
)

__all__ = ["EVENTS_DIR", "LOOPBACK_HOSTS", "LabelPair", "LabelServer", "LabelSession", "annotator_agreement",
           "label_0", "left_image", "load_label_pairs", "read_labels"]
