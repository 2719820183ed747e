"""`visalign mia-dpo` in-process on a tiny LLaVA saved to disk and rendered shapes images: the MIA-DPO JSON, the
printed counts (every skipped row), and bad input failing before the model loads."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from visalign.cli import main as cli_main
from visalign.cli import mia_dpo
from visalign.data.mia_dpo_select import DEFAULT_THRESHOLDS, DROP_REASONS
from visalign.shapes.render import render
from visalign.shapes.world import ShapeSpec

SCENES = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("red", "star")]
KEYS = {"id", "image", "prompt", "chosen", "rejected", "gt", "kind", "attention_ratio", "perplexity"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from visalign.testing.vlm import save_tiny_llava

    return str(save_tiny_llava(tmp_path_factory.mktemp("llava")))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 rows: 4 usable (LLaVA ``conversations`` and flat columns, one duplicate id) and one of each skip reason."""
    folder = tmp_path_factory.mktemp("source")
    (folder / "imgs").mkdir()
    for i, (colour, shape) in enumerate(SCENES):
        spec = ShapeSpec(shape=shape, colour=colour, size="large", position="center", background="white")
        render(spec, seed=i).save(folder / "imgs" / f"img{i}.png")
    (folder / "imgs" / "broken.png").write_bytes(b"not a png")

    def convo(question, answer):
        return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer},
                {"from": "human", "value": "and the shape ?"}, {"from": "gpt", "value": "ignored"}]

    rows = [
        {"id": "q0", "image": "imgs/img0.png", "conversations": convo("what colour is the shape ?", "it is red .")},
        {"id": "q1", "image": "imgs/img1.png", "question": "what shape is it ?", "answer": "a blue square ."},
        {"id": "text", "conversations": convo("hello", "hi")},  # text-only
        {"id": "two", "image": ["imgs/img0.png", "imgs/img1.png"], "question": "same ?", "answer": "no ."},
        {"id": "bad", "image": "imgs/broken.png", "question": "what is it ?", "answer": "noise ."},
        {"id": "empty", "image": "imgs/img2.png", "question": "what is it ?", "answer": " "},
        {"id": "q2", "image": "imgs/img2.png", "conversations": convo("what shape is it ?", "a triangle .")},
        {"id": "q0", "image": ["imgs/img3.png"], "question": "what colour ?", "answer": "red ."},  # duplicate id
    ]
    path = folder / "rows.json"
    path.write_text(json.dumps(rows))
    answers = {"q0": "it is red .", "q1": "a blue square .", "q2": "a triangle .", "q0-row7": "red ."}
    return path, answers


def _count(printed: str, label: str) -> int:
    return int(re.search(rf"^\s*{re.escape(label)}[^\n]*?: (\d+)$", printed, re.M).group(1))


def test_writes_mia_dpo_json_and_reports_every_row(model_dir, data, tmp_path, capsys):
    path, answers = data
    out = tmp_path / "mia"
    code = cli_main.main(["mia-dpo", "--model", model_dir, "--data", str(path), "--out", str(out),
                          "--kinds", "sequence:2,grid:2,pip", "--layer", "1", "--max-new-tokens", "3"])
    printed = capsys.readouterr().out
    rows = json.loads((out / "mia_dpo.json").read_text())
    assert rows, printed  # the tiny model's answers pass the default filters, so every check below runs
    assert code == 0
    assert _count(printed, "rows read") == 8 and _count(printed, "skipped rows") == 4
    for text in mia_dpo.SKIP_REASONS.values():
        assert _count(printed, text) == 1
    assert _count(printed, "answers generated") == 4
    assert _count(printed, "pairs kept") == len(rows)
    assert _count(printed, "dropped by the selection filters") == 4 - len(rows)
    selection = json.loads((out / "selection.json").read_text())
    assert selection["kept"] == len(rows) and sum(selection["dropped"].values()) == 4 - len(rows)
    for key, text in DROP_REASONS.items():
        assert _count(printed, text) == selection["dropped"][key]
    # samples cycle through the kinds in order: q0 sequence, q1 grid, q2 pip, q0-row7 sequence
    expected_kind = {"q0": "sequence", "q1": "grid", "q2": "pip", "q0-row7": "sequence"}
    for kind in ("sequence", "grid", "pip"):
        assert _count(printed, kind) == sum(r["kind"] == kind for r in rows)
    for row in rows:
        assert set(row) == KEYS
        source = row["id"].rsplit("_", 1)[0]
        assert expected_kind[source] == row["kind"] and row["id"] == f"{source}_{row['kind']}"
        assert row["chosen"] == row["gt"] == answers[source] and row["rejected"] != row["chosen"]
        assert row["perplexity"] > 1.1
        limit = DEFAULT_THRESHOLDS[row["kind"]][2 if row["kind"] != "pip" else 1]
        assert row["attention_ratio"] <= limit
        images = row["image"] if row["kind"] == "sequence" else [row["image"]]
        assert len(images) == (2 if row["kind"] == "sequence" else 1)
        assert all((out / p).is_file() for p in images)
        header = "Image1:<image>\nImage2:<image>\nIn Image" if row["kind"] == "sequence" else "<image>\n"
        assert row["prompt"].startswith(header) and row["prompt"].count("<image>") == len(images)


def test_nothing_kept_is_reported_and_exits_1(model_dir, data, tmp_path, capsys):
    path, _ = data
    out = tmp_path / "mia"
    code = mia_dpo.main(["--model", model_dir, "--data", str(path), "--out", str(out), "--kinds", "pip",
                         "--layer", "0", "--max-new-tokens", "2", "--min-perplexity", "1e9", "--limit", "2"])
    captured = capsys.readouterr()
    assert code == 1 and json.loads((out / "mia_dpo.json").read_text()) == []
    assert "no pair passed the selection filters" in captured.err
    # --limit 2 stops after the second usable sample (row 1): no skipped row has been read yet
    assert _count(captured.out, "rows read") == 2 and _count(captured.out, "skipped rows") == 0
    assert _count(captured.out, "answers generated") == 2
    assert _count(captured.out, "dropped by the selection filters") == 2
    # --min-perplexity 1e9: whatever passes the text checks fails the perplexity filter
    dropped = json.loads((out / "selection.json").read_text())["dropped"]
    assert dropped["low_perplexity"] + dropped["empty"] + dropped["same_as_ground_truth"] == 2
    assert dropped["attention_ratio"] == dropped["ground_truth_too_long"] == 0
    assert _count(captured.out, DROP_REASONS["low_perplexity"]) == dropped["low_perplexity"]


def test_summary_prints_each_drop_reason_count(tmp_path):
    """Constructed selection counts (a different number per reason) land on their own summary lines."""
    dropped = {key: number for number, key in enumerate(DROP_REASONS, start=1)}
    selection = {"generated": 3 + sum(dropped.values()), "kept": 3, "dropped": dropped}
    rows = [{"kind": "sequence"}, {"kind": "sequence"}, {"kind": "pip"}]
    printed = mia_dpo.summary(9, Counter(no_image=2), rows, selection, [("sequence", 2), ("grid", 4), ("pip", 1)],
                              tmp_path / "mia_dpo.json")
    assert _count(printed, "dropped by the selection filters") == sum(dropped.values())
    for key, text in DROP_REASONS.items():
        assert _count(printed, text) == dropped[key]
    assert _count(printed, "answers generated") == selection["generated"] and _count(printed, "pairs kept") == 3
    assert [_count(printed, kind) for kind in ("sequence", "grid", "pip")] == [2, 0, 1]


def _rows_file(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("rows, flags, message", [
    ([{"image": "a.png", "question": "q ?", "answer": "a ."}, {"image": "a.png", "question": "q ?"}], [],
     r"rows\.jsonl row 1: missing key 'answer'"),
    ([{"image": "nowhere.png", "question": "q ?", "answer": "a ."}], [],
     r"rows\.jsonl row 0: image file .*nowhere\.png does not exist"),
    ([{"image": "a.png", "conversations": [{"from": "human", "value": "q ?"}]}], [],
     r"row 0: 'conversations' has no human turn followed by a gpt turn"),
    ([{"image": "a.png", "question": "q ?", "answer": "a ."}] * 3, ["--kinds", "grid:4"],
     r"3 usable sample\(s\) of 3 row\(s\) read .*needs at least 4"),
    ([{"image": "a.png", "question": "q ?", "answer": "a ."}], ["--kinds", "grid:5"], r"grid takes \[2, 3, 4, 6, 9\]"),
    ([{"image": "a.png", "question": "q ?", "answer": "a ."}], ["--kinds", "mosaic"], r"unknown augmentation 'mosaic'"),
])
def test_bad_rows_and_flags_fail_before_the_model_loads(tmp_path, capsys, rows, flags, message):
    render(ShapeSpec("circle", "red", "large", "center", "white")).save(tmp_path / "a.png")
    path = _rows_file(tmp_path, rows)
    code = mia_dpo.main(["--model", str(tmp_path / "no-such-model"), "--data", str(path), "--out",
                         str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_missing_data_file_and_layer_out_of_range(model_dir, data, tmp_path, capsys):
    assert mia_dpo.main(["--model", model_dir, "--data", str(tmp_path / "gone.json"), "--out", str(tmp_path)]) == 2
    assert "gone.json does not exist" in capsys.readouterr().err
    path, _ = data
    assert mia_dpo.main(["--model", model_dir, "--data", str(path), "--out", str(tmp_path / "o"), "--layer", "2"]) == 2
    assert "--layer 2 is out of range" in capsys.readouterr().err  # the tiny LLaVA has 2 decoder layers
