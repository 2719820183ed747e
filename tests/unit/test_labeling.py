"""`visalign label` storage and server (visalign.evaluation.labeling): the append-only log and its replay, the
Pick-a-Pic rows, safety of the server (no path outside the pairs, 4xx for malformed requests, token, Host check),
two annotators at once, and the agreement report. The browser session is in tests/integration/test_label_browser.py."""

from __future__ import annotations

import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers.diffusion import write_pairs
from visalign.cli.label import main as label_main
from visalign.errors import DataError, InputError
from visalign.evaluation.labeling import (EVENTS_DIR, LabelServer, LabelSession, label_0, left_image,
                                          load_label_pairs)

CAPTIONS = ["a red square", "a blue circle", "a green <b>cross</b>", "two dots", "a yellow star"]


@pytest.fixture
def pairs(tmp_path):
    return load_label_pairs(write_pairs(tmp_path / "pairs", CAPTIONS))


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_clicks_become_pickapic_rows_and_the_log_replays_after_a_restart(pairs, tmp_path):
    out = tmp_path / "labels"
    session = LabelSession(pairs, out, "alice", seed=3)
    session.answer(0, "left")
    session.answer(1, "tie")
    session.answer(2, "skip")
    session.undo()  # takes back the skip: pair 2 is current again
    assert session.current() == 2
    session.answer(2, "right")
    session.close()
    # a kill in the middle of a write leaves a torn last line: it was never acknowledged, so it is dropped
    with open(out / EVENTS_DIR / "alice.jsonl", "a") as f:
        f.write('{"event": "label", "pa')
    again = LabelSession(pairs, out, "alice", seed=3)
    assert again.current() == 3 and again.state()["labelled"] == 3
    again.answer(3, "left")
    again.close()

    rows = rows_of(out / "alice.jsonl")
    assert [r["pair"] for r in rows] == [0, 1, 2, 3]
    for row, choice in zip(rows, ["left", "tie", "right", "left"]):
        left = left_image(3, "alice", row["pair"])
        assert row["left"] == left
        images = pairs[row["pair"]].images
        assert (out / row["jpg_0"]).resolve() == images[0] and (out / row["jpg_1"]).resolve() == images[1]
        winner = None if choice == "tie" else left if choice == "left" else 1 - left
        assert row["label_0"] == {None: 0.5, 0: 1.0, 1: 0.0}[winner]
        assert row["caption"] == CAPTIONS[row["pair"]] and row["annotator"] == "alice" and row["time"]
    assert (out / EVENTS_DIR / "alice.jsonl").read_text().endswith("}\n")  # the torn line was cut off


def test_sides_are_seeded_per_annotator_and_label_0_follows_the_side():
    sides = [left_image(0, "alice", i) for i in range(64)]
    assert sides == [left_image(0, "alice", i) for i in range(64)] and 0 < sum(sides) < 64
    assert sides != [left_image(0, "bob", i) for i in range(64)]
    assert (label_0("left", 0), label_0("left", 1), label_0("right", 0), label_0("right", 1)) == (1.0, 0.0, 0.0, 1.0)
    assert label_0("tie", 1) == 0.5


def test_one_server_per_annotator_and_a_changed_pair_set_is_refused(pairs, tmp_path):
    out = tmp_path / "labels"
    session = LabelSession(pairs, out, "alice")
    with pytest.raises(InputError, match="'alice' is already labelling"):
        LabelSession(pairs, out, "alice")
    session.answer(0, "left")
    session.close()
    with pytest.raises(DataError, match=r"alice.jsonl line 1: pair 0 was .* new --out folder"):
        LabelSession(pairs[1:], out, "alice")
    with pytest.raises(InputError, match="--annotator '../x'"):
        LabelSession(pairs, out, "../x")


def test_jsonl_input_with_paths_relative_to_the_file(tmp_path):
    folder = Path(write_pairs(tmp_path / "p", CAPTIONS[:2]))
    rows = [{"prompt": c, "image_0": f"p/chosen/p{i}.png", "image_1": f"p/rejected/p{i}.png"}
            for i, c in enumerate(CAPTIONS[:2])]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_label_pairs(tmp_path / "pairs.jsonl")
    assert [p.caption for p in pairs] == CAPTIONS[:2] and pairs[1].images[1] == (folder / "rejected/p1.png").resolve()
    rows[1]["image_1"] = "p/rejected/missing.png"
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(FileNotFoundError, match="pairs.jsonl row 1, image_1: image file .*missing.png does not exist"):
        load_label_pairs(tmp_path / "pairs.jsonl")


class Running:
    """A LabelServer on a free loopback port, served from a thread."""

    def __init__(self, session, token=None):
        self.server = LabelServer(session, "127.0.0.1", 0, token)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection(*self.server.server_address[:2], timeout=10)
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        return response.status, response.read()

    def post(self, path, value):
        return self.request("POST", path, json.dumps(value), {"Content-Type": "application/json"})

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_server_serves_only_the_pairs_images_and_answers_bad_requests_with_4xx(pairs, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    running = Running(LabelSession(pairs, tmp_path / "labels", "alice"))
    try:
        status, body = running.request("GET", "/image/0/left")
        assert status == 200 and body == running.server.session.side_image(0, "left").read_bytes()
        for path in ["/image/0/../../secret.txt", "/../secret.txt", "/%2e%2e/secret.txt", "/image/0/left/../../x",
                     "/image/99/left", "/image/-1/left", "/image/0/up", "//etc/passwd", "/secret.txt",
                     "/pairs/chosen/p0.png", "/image/0/left%00.png"]:
            status, body = running.request("GET", path)
            assert status == 404 and b"SECRET" not in body and b"PNG" not in body, path
        json_headers = {"Content-Type": "application/json"}
        assert running.request("POST", "/api/answer", "{oops", json_headers)[0] == 400
        assert running.request("POST", "/api/answer", "[1]", json_headers)[0] == 400
        assert running.request("POST", "/api/answer", "\xff", json_headers)[0] == 400
        assert running.post("/api/answer", {"pair": "0", "choice": "left"})[0] == 400
        assert running.post("/api/answer", {"pair": 0, "choice": "both"})[0] == 400
        assert running.request("POST", "/api/answer", '{"pair": 0, "choice": "left"}',
                               {"Content-Type": "text/plain"})[0] == 415
        assert running.request("POST", "/api/answer", "x" * 5000, json_headers)[0] == 413
        assert running.request("DELETE", "/api/state")[0] == 405
        assert running.request("GET", "/", headers={"Host": "evil.example:80"})[0] == 403
        assert running.post("/api/undo", {})[0] == 409  # nothing to undo yet
        assert running.post("/api/answer", {"pair": 0, "choice": "left"})[0] == 200
        status, body = running.post("/api/answer", {"pair": 0, "choice": "left"})  # a repeated click
        assert status == 409 and b"not the current pair" in body
        assert not any(b"Traceback" in running.request("GET", p)[1] for p in ["/api/state", "/nope"])
    finally:
        running.close()
        running.server.session.close()
    assert len(rows_of(tmp_path / "labels" / "alice.jsonl")) == 1


def test_a_token_guards_every_request(pairs, tmp_path):
    running = Running(LabelSession(pairs, tmp_path / "labels", "alice"), token="s3cret")
    try:
        assert running.request("GET", "/")[0] == 403
        assert running.request("GET", "/image/0/left?token=wrong")[0] == 403
        assert running.request("GET", "/image/0/left?token=s3cret")[0] == 200
        assert running.request("GET", "/api/state", headers={"X-Visalign-Token": "s3cret"})[0] == 200
        assert running.server.url().endswith("/?token=s3cret")
    finally:
        running.close()
        running.server.session.close()


def test_two_annotators_at_once_lose_and_duplicate_nothing(pairs, tmp_path):
    """Two servers label into one folder at once; every answer is sent twice in parallel (a double click), so each
    pair must be labelled exactly once per annotator, in one file each."""
    out = tmp_path / "labels"
    servers = {name: Running(LabelSession(pairs, out, name)) for name in ("alice", "bob")}

    def annotate(name):
        running, codes = servers[name], []
        for index in range(len(pairs)):
            with ThreadPoolExecutor(2) as pool:
                codes += [f.result()[0] for f in [pool.submit(running.post, "/api/answer",
                                                              {"pair": index, "choice": "left"}) for _ in range(2)]]
        return codes

    try:
        with ThreadPoolExecutor(2) as pool:
            codes = dict(zip(servers, pool.map(annotate, servers)))
    finally:
        for running in servers.values():
            running.close()
            running.server.session.close()
    for name in servers:
        assert sorted(codes[name]) == [200] * len(pairs) + [409] * len(pairs)
        rows = rows_of(out / f"{name}.jsonl")
        assert [r["pair"] for r in rows] == list(range(len(pairs))) and {r["annotator"] for r in rows} == {name}
        events = rows_of(out / EVENTS_DIR / f"{name}.jsonl")
        assert [e["pair"] for e in events] == list(range(len(pairs)))


def test_agreement_between_annotators_and_with_a_scorer(pairs, tmp_path, capsys):
    out = tmp_path / "labels"
    # alice and bob agree on pairs 0-1, bob ties pair 2 (half a point), they disagree on pair 3; carol shares none
    wins = {"alice": [1.0, 0.0, 1.0, 1.0], "bob": [1.0, 0.0, 0.5, 0.0]}
    for name, labels in wins.items():
        session = LabelSession(pairs, out, name)
        for index, label in enumerate(labels):
            left = left_image(0, name, index)
            choice = "tie" if label == 0.5 else "left" if label_0("left", left) == label else "right"
            session.answer(index, choice)
        session.close()
    session = LabelSession(pairs, out, "carol")
    for index in range(4):
        session.answer(index, "skip")
    session.answer(4, "left")
    session.close()

    report = tmp_path / "agreement.json"
    assert label_main(["--agreement", "--out", str(out), "--scorer", "shapes", "--scorer-arg", "strict=false",
                       "--report", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["annotators"] == {"alice": 4, "bob": 4, "carol": 1}
    assert result["inter_annotator"] == {"alice|bob": {"agreement": 2.5 / 4, "pairs": 4},
                                         "all": {"agreement": 2.5 / 4, "pairs": 4}}
    assert set(result["scorer"]["annotators"]) == {"alice", "bob", "carol"}
    assert all(0 <= r["agreement"] <= 1 and r["pairs"] == len(wins.get(n, [1]))
               for n, r in result["scorer"]["annotators"].items())
    printed = capsys.readouterr().out
    assert "agreement alice|bob: 62.5% over 4 shared pairs" in printed and "alice vs scorer shapes" in printed
    with pytest.raises(InputError, match=r"--scorer shapes on .*alice.jsonl: shapes scorer: prompt 'a green"):
        label_main(["--agreement", "--out", str(out), "--scorer", "shapes"])  # strict grammar: one-line error
    with pytest.raises(InputError, match="outside"):
        label_main(["--agreement", "--out", str(out), "--report", str(out / "r.json")])
