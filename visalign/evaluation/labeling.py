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

The server (:func:`make_server`, stdlib ``ThreadingHTTPServer``) serves the page, a JSON API and each pair's two
images by pair index and side, never by path, so no URL reaches another file. Without a token it accepts only a
loopback ``Host`` header (DNS rebinding); with one, every request must carry it (``?token=`` or the
``X-Visalign-Token`` header). Bad requests get a 4xx and a one-line JSON error.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import logging
import mimetypes
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from visalign.data.diffusion import CAPTIONS_FILE, generic_pairs, paired_folder_pairs
from visalign.data.image_transforms import resolve_image_path
from visalign.data.sources import load_source
from visalign.errors import DataError, InputError, NotFoundError

logger = logging.getLogger(__name__)

EVENTS_DIR = ".events"
CHOICES = ("left", "right", "tie", "skip")
ANNOTATOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 4096


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


# ---- server ----------------------------------------------------------------------------------------------------

class HTTPRejection(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class LabelServer(ThreadingHTTPServer):
    """The labelling server of one :class:`LabelSession`; ``token`` (or ``None``) guards every request."""

    daemon_threads = True

    def __init__(self, session: LabelSession, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        self.session, self.token = session, token
        super().__init__((host, port), _Handler)

    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/" + (f"?token={self.token}" if self.token else "")


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer
    server_version = "visalign-label"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name) - quiet by default
        logger.debug("%s " + format, self.address_string(), *args)

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # any other method: 405 instead of the stdlib's 501
            return lambda: self._send_error(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and POST are served")
        raise AttributeError(name)

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _dispatch(self, route) -> None:
        try:
            url = urlsplit(self.path)
            self._check_access(url.query)
            route(url.path)
        except HTTPRejection as err:
            self._send_error(err.status, str(err))
        except Conflict as err:
            self._send_error(HTTPStatus.CONFLICT, str(err))
        except Exception as err:  # a bug or a failing disk: one line on the server, no traceback to the client
            logger.error("visalign label: %s %s failed: %s: %s", self.command, self.path[:100], type(err).__name__, err)
            self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the server's output")

    def _check_access(self, query: str) -> None:
        token = self.server.token
        if token is None:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
            if host not in LOOPBACK_HOSTS:
                raise HTTPRejection(HTTPStatus.FORBIDDEN, "unexpected Host header; open the URL the server printed")
            return
        given = parse_qs(query).get("token", [""])[0] or self.headers.get("X-Visalign-Token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPRejection(HTTPStatus.FORBIDDEN, "missing or wrong token; open the URL the server printed")

    def _get(self, path: str) -> None:
        session = self.server.session
        if path == "/":
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        elif path == "/api/state":
            self._send_json(session.state())
        elif match := re.fullmatch(r"/image/(\d{1,9})/(left|right)", path):
            index = int(match[1])
            if index >= len(session.pairs):
                raise HTTPRejection(HTTPStatus.NOT_FOUND, f"no pair {index}; there are {len(session.pairs)}")
            file = session.side_image(index, match[2])
            kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            self._send(HTTPStatus.OK, file.read_bytes(), kind)
        else:
            raise HTTPRejection(HTTPStatus.NOT_FOUND, "not found")

    def _post(self, path: str) -> None:
        if path not in ("/api/answer", "/api/undo"):
            raise HTTPRejection(HTTPStatus.NOT_FOUND, "not found")
        body = self._json_body()
        if path == "/api/undo":
            self._send_json(self.server.session.undo())
            return
        index, choice = body.get("pair"), body.get("choice")
        if not isinstance(index, int) or isinstance(index, bool) or choice not in CHOICES:
            raise HTTPRejection(HTTPStatus.BAD_REQUEST,
                                f'body must be {{"pair": INDEX, "choice": one of {list(CHOICES)}}}')
        self._send_json(self.server.session.answer(index, choice))

    def _json_body(self) -> dict[str, Any]:
        """The request's JSON object; a JSON content type is required, which keeps other sites' plain form posts
        out (they cannot send it without a CORS preflight, which this server never grants)."""
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            raise HTTPRejection(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise HTTPRejection(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header") from None
        if not 0 <= length <= MAX_BODY:
            raise HTTPRejection(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body must be at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPRejection(HTTPStatus.BAD_REQUEST, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HTTPRejection(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def _send_json(self, value: Any) -> None:
        self._send(HTTPStatus.OK, json.dumps(value).encode(), "application/json")

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        self.close_connection = True  # an unread request body must not be parsed as the next request
        self._send(status, json.dumps({"error": message}).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; "
                                                    "style-src 'unsafe-inline'; img-src 'self' data:")
        self.end_headers()
        self.wfile.write(body)


#: The page: all text from the server is set with textContent, never parsed as HTML.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>visalign label</title><link rel="icon" href="data:,">
<style>
body { font-family: system-ui, sans-serif; margin: 1rem 1.5rem; background: #fafafa; color: #222; }
header { display: flex; justify-content: space-between; align-items: baseline; white-space: nowrap; }
h1 { font-size: 1.2rem; margin: 0; }
#caption { font-size: 1.3rem; margin: .8rem 0; min-height: 1.6em; }
#pair { display: flex; gap: 1rem; }
figure { flex: 1; margin: 0; text-align: center; }
figure img { width: 100%; height: 45vh; object-fit: contain; image-rendering: pixelated; background: #eee; }
.buttons { display: flex; gap: .6rem; justify-content: center; margin-top: 1rem; }
button { font-size: 1rem; padding: .5rem 1rem; cursor: pointer; }
progress { width: 14rem; }
#status { color: #a00; min-height: 1.2em; }
kbd { border: 1px solid #bbb; border-radius: 3px; padding: 0 .3em; background: #fff; }
</style></head>
<body>
<header><h1>Which image fits the prompt better?</h1>
<div><progress id="bar" value="0" max="1"></progress> <span id="progress"></span></div></header>
<div id="caption"></div>
<div id="pair">
  <figure><img id="left-img" alt="left image"><figcaption><button id="btn-left">Left is better
    <kbd>&larr;</kbd></button></figcaption></figure>
  <figure><img id="right-img" alt="right image"><figcaption><button id="btn-right">Right is better
    <kbd>&rarr;</kbd></button></figcaption></figure>
</div>
<div id="done" hidden>Every pair has an answer. Thank you! (Undo still works.)</div>
<div class="buttons">
  <button id="btn-tie">Tie <kbd>&darr;</kbd> <kbd>t</kbd></button>
  <button id="btn-skip">Skip <kbd>s</kbd></button>
  <button id="btn-undo">Undo <kbd>u</kbd> <kbd>Backspace</kbd></button>
</div>
<p id="status"></p>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token");
const q = token ? "?token=" + encodeURIComponent(token) : "";
let state = null, busy = false;
const $ = (id) => document.getElementById(id);

function show(s) {
  state = s;
  document.body.dataset.pair = s.pair === null ? "done" : String(s.pair);
  document.body.dataset.decided = String(s.decided);
  $("progress").textContent = s.decided + " / " + s.total + " done (" + s.labelled + " labelled) - " + s.annotator;
  $("bar").max = s.total; $("bar").value = s.decided;
  const done = s.pair === null;
  $("done").hidden = !done;
  $("pair").hidden = done;
  for (const id of ["btn-tie", "btn-skip"]) $(id).disabled = done;
  $("btn-undo").disabled = !s.can_undo;
  $("caption").textContent = done ? "" : s.caption;
  if (!done) {
    $("left-img").src = "/image/" + s.pair + "/left" + q;
    $("right-img").src = "/image/" + s.pair + "/right" + q;
  }
}

async function call(method, path, body) {
  if (busy) return;  // one request at a time: a second click waits for the first to be saved
  busy = true;
  let refresh = false;
  try {
    const r = await fetch(path + q, method === "GET" ? {} :
      {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const data = await r.json();
    if (r.ok) { $("status").textContent = ""; show(data); }
    else { $("status").textContent = data.error; refresh = r.status === 409; }
  } catch (e) {
    $("status").textContent = "the server does not answer; restart `visalign label` and reload this page";
  } finally { busy = false; }
  if (refresh) call("GET", "/api/state");
}

function answer(choice) { if (state && state.pair !== null) call("POST", "/api/answer", {pair: state.pair, choice}); }
function undo() { if (state && state.can_undo) call("POST", "/api/undo", {}); }

$("btn-left").onclick = () => answer("left");
$("btn-right").onclick = () => answer("right");
$("btn-tie").onclick = () => answer("tie");
$("btn-skip").onclick = () => answer("skip");
$("btn-undo").onclick = undo;
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const keys = {ArrowLeft: () => answer("left"), ArrowRight: () => answer("right"), ArrowDown: () => answer("tie"),
                t: () => answer("tie"), s: () => answer("skip"), u: undo, Backspace: undo};
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
});
call("GET", "/api/state");
</script>
</body></html>
"""



# ---- agreement -------------------------------------------------------------------------------------------------

def read_labels(out: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``{annotator: Pick-a-Pic rows}`` of every annotator file ``out/NAME.jsonl``."""
    files = sorted(Path(out).glob("*.jsonl"))
    if not files:
        raise NotFoundError(f"{out}: no annotator files (NAME.jsonl); collect labels first with `visalign label "
                            f"--pairs DIR --out {out}`")
    labels = {}
    for file in files:
        rows = []
        for line_no, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{file} line {line_no}: not valid JSON ({err})") from None
        labels[file.stem] = rows
    return labels


def annotator_agreement(labels: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Agreement of every two annotators over the pairs both labelled (matched by ``jpg_0``, ``jpg_1``), scored as
    Pick-a-Pic's protocol (reward-scorers.md §1.7): 1 for the same label, 0.5 when exactly one is a tie, 0 otherwise,
    i.e. ``pickapic_accuracy`` with one annotator's ``label_0`` as the prediction and tie threshold 0. Keys
    ``"A|B"``; ``"all"`` pools every annotator pair's shared pairs."""
    from reward_models.agreement import pickapic_accuracy

    keyed = {name: {(r["jpg_0"], r["jpg_1"]): float(r["label_0"]) for r in rows} for name, rows in labels.items()}
    names, result, pooled = sorted(keyed), {}, ([], [])
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(keyed[a].keys() & keyed[b].keys())
            if not shared:
                continue
            first, second = [keyed[a][k] for k in shared], [keyed[b][k] for k in shared]
            result[f"{a}|{b}"] = {"agreement": pickapic_accuracy(first, second, 0.0).accuracy, "pairs": len(shared)}
            pooled[0].extend(first)
            pooled[1].extend(second)
    if pooled[0]:
        result["all"] = {"agreement": pickapic_accuracy(*pooled, 0.0).accuracy, "pairs": len(pooled[0])}
    return result
