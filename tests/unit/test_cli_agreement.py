"""`visalign agreement` in-process with the programmatic `shapes` scorer on small test sets written here, so every
accuracy can be worked out by hand.

For a prompt naming a large shape, its colour and a white background, the scorer gives 0.9989 to an exact match and
0.3 less per wrong attribute (colour, shape): for "a large red circle ..." red circle 0.9989, blue circle and red
square 0.6989, blue square 0.3989.
"""

from __future__ import annotations

import json
import math

import pytest

from visalign.cli import agreement
from visalign.shapes import ShapeSpec
from visalign.shapes.render import render

RED_CIRCLE = "a large red circle on a white background"
BLUE_SQUARE = "a large blue square on a white background"
BLUE_CIRCLE = "a large blue circle on a white background"

#: One row per prompt (ImageReward's test.json layout). Row 0: pairs (rc,bc), (rc,bs) agree with the humans, (bc,bs)
#: does not (humans rank bs 2nd, the scorer bc); row 1: (rc,bs) agrees; row 2: a human tie, skipped by "imagereward"
#: and no inversion for "hpdv2".
RANKED = [
    {"prompt": RED_CIRCLE, "generations": ["rc.png", "bc.png", "bs.png"], "ranking": [1, 3, 2]},
    {"prompt": BLUE_SQUARE, "generations": ["rc.png", "bs.png"], "ranking": [2, 1]},
    {"prompt": RED_CIRCLE, "generations": ["bc.png", "rs.png"], "ranking": [1, 1]},
]

#: One row per pair (Pick-a-Pic layout). P(first) = sigmoid(score difference), so |p0 - p1| = 2 sigmoid(d) - 1:
#: row 0 d = 0.6 -> 0.291; row 1 d = -0.3 -> 0.149; row 2 d = 0 -> 0.
PAIRS = [
    {"caption": RED_CIRCLE, "jpg_0": "rc.png", "jpg_1": "bs.png", "label_0": 1.0},
    {"caption": BLUE_CIRCLE, "jpg_0": "rc.png", "jpg_1": "bc.png", "label_0": 0.0},
    {"caption": RED_CIRCLE, "jpg_0": "bc.png", "jpg_1": "rs.png", "label_0": 0.5},
]


@pytest.fixture
def data(tmp_path):
    for name, shape, colour in [("rc", "circle", "red"), ("bc", "circle", "blue"), ("bs", "square", "blue"),
                                ("rs", "square", "red")]:
        render(ShapeSpec(shape, colour, "large", "center", "white"), seed=0, resolution=64).save(tmp_path / f"{name}.png")
    (tmp_path / "test.json").write_text(json.dumps(RANKED))
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(row) for row in PAIRS))
    return tmp_path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = agreement.main(["--scorer", "shapes", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_imagereward_protocol_counts_pairs_globally_and_skips_human_ties(data, capsys):
    report = data / "out" / "report.json"
    code, out, _ = run(capsys, "--dataset", data / "test.json", "--protocol", "imagereward", "--out", report)
    assert code == 0
    result = json.loads(report.read_text())
    assert result["accuracy"] == pytest.approx(3 / 4) and result["count"] == 4
    assert result["details"] == {"correct": 3.0, "human_ties": 1.0}
    assert result["rows"] == 3 and result["scorer"] == "shapes" and result["provenance"]["weights_sha256"]
    assert result["columns"] == {"prompt": "prompt", "images": "generations", "ranks": "ranking"}
    assert "scorer shapes" in out and "75.00%" in out and "4 image pairs" in out


def test_hpdv2_protocol_averages_per_prompt_with_renamed_columns(data, capsys):
    # per prompt 1 - inversions / C(n, 2): 1 - 1/3, 1, 1 (the tie is no inversion)
    code, out, _ = run(capsys, "--dataset", data / "test.json", "--protocol", "hpdv2",
                       "--column", "images=generations", "--column", "ranks=ranking")
    assert code == 0
    assert f"{100 * 8 / 9:.2f}%" in out and "3 prompts" in out


@pytest.mark.parametrize("threshold, expected", [
    (0.1, 1.0),        # first, second, tie: all right
    (0.2, 5 / 6),      # row 1 (0.149) becomes a predicted tie against label 0: half a point
    (0.3, 2 / 3),      # row 0 (0.291) too
])
def test_pickapic_protocol_with_a_tie_threshold(data, capsys, tmp_path, threshold, expected):
    report = tmp_path / "pick.json"
    code, _, _ = run(capsys, "--dataset", data / "pairs.jsonl", "--protocol", "pickapic",
                     "--tie-threshold", threshold, "--out", report)
    assert code == 0
    result = json.loads(report.read_text())
    assert result["accuracy"] == pytest.approx(expected) and result["count"] == 3
    assert result["details"] == {"tie_threshold": threshold}


def test_pickapic_threshold_chosen_on_validation(data, capsys, tmp_path):
    # validation: rc vs bc labelled a tie (|p0 - p1| = 0.149): thresholds 0 and 0.1 predict "first" (half a point),
    # 0.2 predicts the tie; on the test set 0.2 gives 5/6 (above)
    (data / "val.jsonl").write_text(json.dumps({"caption": RED_CIRCLE, "jpg_0": "rc.png", "jpg_1": "bc.png",
                                                "label_0": 0.5}))
    report = tmp_path / "pick.json"
    code, out, _ = run(capsys, "--dataset", data / "pairs.jsonl", "--protocol", "pickapic",
                       "--validation", data / "val.jsonl", "--out", report)
    assert code == 0
    result = json.loads(report.read_text())
    assert result["details"]["tie_threshold"] == pytest.approx(0.2) and result["accuracy"] == pytest.approx(5 / 6)
    assert math.isclose(2 / (1 + math.exp(0.3)) - 1, -0.149, abs_tol=1e-3)
    assert "tie_threshold 0.2" in out


def test_missing_column_is_named_before_the_model_loads(data, capsys, monkeypatch):
    monkeypatch.setattr(agreement, "build_scorer", lambda args: pytest.fail("the scorer must not load"))
    code, _, err = run(capsys, "--dataset", data / "pairs.jsonl", "--protocol", "imagereward")
    assert code == 2
    assert "pairs.jsonl, row 0: no column 'prompt' (prompt), 'generations' (images), 'ranking' (ranks)" in err
    assert "--column KEY=NAME" in err


def test_missing_image_file_is_named_with_its_row(data, capsys):
    rows = [dict(RANKED[0]), {**RANKED[1], "generations": ["rc.png", "nope.png"]}]
    (data / "bad.json").write_text(json.dumps(rows))
    code, _, err = run(capsys, "--dataset", data / "bad.json", "--protocol", "imagereward")
    assert code == 2 and "bad.json, row 1, column 'generations': image file" in err and "nope.png" in err


@pytest.mark.parametrize("extra, message", [
    (["--protocol", "imagereward", "--tie-threshold", "0.1"], "apply to --protocol pickapic only"),
    (["--protocol", "hpdv2", "--column", "image=x"], "no column key 'image'; keys: prompt, images, ranks"),
    (["--protocol", "hpdv2", "--column", "images"], "must look like KEY=NAME"),
    (["--protocol", "hpdv2", "--out", "report.csv"], "must end in .json"),
])
def test_bad_options_exit_2(data, capsys, extra, message):
    code, _, err = run(capsys, "--dataset", data / "test.json", *extra)
    assert code == 2 and message in err


def test_missing_dataset_file(tmp_path, capsys):
    code, _, err = run(capsys, "--dataset", tmp_path / "missing.json", "--protocol", "hpdv2")
    assert code == 2 and "missing.json does not exist" in err
