"""The local labelling server: the page, the JSON API and the images by pair index (package docstring)."""

from __future__ import annotations

import hmac
import json
import logging
import mimetypes
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from visalign.evaluation.labeling.session import CHOICES, Conflict, LabelSession

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 4096


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
