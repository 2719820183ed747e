"""`visalign score` and `visalign relabel` in-process on a tiny PickScore saved to disk."""

from __future__ import annotations

import csv
import json

import datasets
import pytest
import torch
from PIL import Image

from reward_models import load_scorer
from visalign.cli import relabel, score
from visalign.testing.clip import save_tiny_clip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_clip(tmp_path_factory.mktemp("pickscore"), image_size=32, patch_size=8))


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate([(40, 56), (32, 32), (64, 48)]):
        pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_score_writes_jsonl_rows_with_scores_and_provenance(model_dir, image_dir, tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    code = score.main(["--scorer", "pickscore", "--model", model_dir, "--images", str(image_dir),
                       "--prompt", "a red circle", "--out", str(out), "--batch-size", "2"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    paths = sorted(image_dir.glob("*.png"))
    assert [r["image"] for r in rows] == [str(p) for p in paths]
    expected = load_scorer("pickscore", model=model_dir).score(paths, "a red circle").scores
    torch.testing.assert_close(torch.tensor([r["score"] for r in rows]), expected, rtol=1e-5, atol=1e-5)
    assert {"cosine", "model_id", "weights_sha256", "preprocessing", "dtype", "variant"} <= set(rows[0])
    printed = capsys.readouterr().out
    assert "scorer pickscore" in printed and "a red circle" in printed
    best = paths[int(expected.argmax())].name
    assert printed.strip().splitlines()[-1].endswith(best)


def test_score_reads_prompts_files_and_writes_csv(model_dir, image_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na cat\n")
    out = tmp_path / "scores.csv"
    assert score.main(["--scorer", "pickscore", "--model", model_dir, "--images", str(image_dir / "*.png"),
                       "--prompts", str(prompts), "--out", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["prompt"] for r in rows] == ["a cat", "a dog", "a cat"]
    mapping = tmp_path / "prompts.jsonl"
    mapping.write_text(json.dumps({"image": "img0.png", "prompt": "a cat"}) + "\n")
    assert score.main(["--scorer", "pickscore", "--model", model_dir, "--images", str(image_dir),
                       "--prompts", str(mapping)]) == 2


def test_score_errors_name_the_problem(model_dir, tmp_path, image_dir, capsys):
    assert score.main(["--scorer", "pickscore", "--model", model_dir, "--images", str(tmp_path / "none"),
                       "--prompt", "x"]) == 2
    assert "no images" in capsys.readouterr().err
    lines = tmp_path / "two.txt"
    lines.write_text("a\nb\n")
    assert score.main(["--scorer", "pickscore", "--model", model_dir, "--images", str(image_dir),
                       "--prompts", str(lines)]) == 2
    assert "2 prompts for 3 images" in capsys.readouterr().err
    assert score.main(["--scorer", "pickscore", "--model", model_dir, "--images", str(image_dir),
                       "--prompt", "x", "--scorer-arg", "resize"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_relabel_adds_scores_probabilities_and_labels(model_dir, image_dir, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"caption": "a red circle", "a": "images/img0.png", "b": "images/img1.png"},
            {"caption": "a cat", "a": "images/img2.png", "b": "images/img0.png"}]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "relabelled"
    assert relabel.main(["--scorer", "pickscore", "--model", model_dir, "--dataset", str(pairs), "--out", str(out),
                         "--prompt-column", "caption", "--image-columns", "a", "b"]) == 0
    data = datasets.load_from_disk(str(out))
    scorer = load_scorer("pickscore", model=model_dir)
    s0 = scorer.score([image_dir / "img0.png", image_dir / "img2.png"], ["a red circle", "a cat"]).scores
    s1 = scorer.score([image_dir / "img1.png", image_dir / "img0.png"], ["a red circle", "a cat"]).scores
    torch.testing.assert_close(torch.tensor(data["score_0"]).float(), s0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(data["prob_0"]).float(), torch.sigmoid(s0 - s1), rtol=1e-4, atol=1e-5)
    assert list(data["label_0"]) == [1.0 if p > 0.5 else 0.0 for p in data["prob_0"]]
    assert json.loads((out / "relabel.json").read_text())["provenance"]["pickscore"]["model_id"] == model_dir
    assert relabel.main(["--scorer", "pickscore", "--model", model_dir, "--dataset", str(pairs),
                         "--out", str(tmp_path / "x")]) == 2
    assert "no column(s) ['prompt', 'image_0', 'image_1']" in capsys.readouterr().err


def test_decompression_bombs_are_named(model_dir, image_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # every test image is over 2x this: PIL's bomb error
    assert score.main(["--scorer", "pickscore", "--model", model_dir, "--images", str(image_dir),
                       "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read image file {image_dir / 'img0.png'}" in err and "decompression bomb" in err
    pairs = tmp_path / "pairs.parquet"
    datasets.Dataset.from_dict({"prompt": ["a"], "image_0": [(image_dir / "img1.png").read_bytes()],
                                "image_1": [(image_dir / "img2.png").read_bytes()]}).to_parquet(str(pairs))
    assert relabel.main(["--scorer", "pickscore", "--model", model_dir, "--dataset", str(pairs),
                         "--out", str(tmp_path / "out")]) == 2
    assert "row 0, column 'image_0': undecodable image bytes" in capsys.readouterr().err


def test_relabel_keeps_unparsed_judge_answers_nan_and_counts_them_apart_from_ties(image_dir, tmp_path, capsys):
    """A random tiny Qwen2-VL judge never answers in the template, so every preference is NaN: label_0 stays NaN
    (not the tie 0.5) and the summary counts the pairs as unparsed, not as ties."""
    from visalign.testing.vlm import save_tiny_qwen2_vl

    judge = save_tiny_qwen2_vl(tmp_path / "judge")
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "a red circle", "image_0": "images/img0.png", "image_1": "images/img1.png"},
            {"prompt": "a cat", "image_0": "images/img2.png", "image_1": "images/img0.png"}]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "relabelled"
    assert relabel.main(["--scorer", "unifiedreward", "--model", str(judge), "--scorer-arg", "max_new_tokens=3",
                         "--dataset", str(pairs), "--out", str(out)]) == 0
    data = datasets.load_from_disk(str(out))
    assert all(p != p for p in data["prob_0"]) and all(label != label for label in data["label_0"])  # NaN
    assert "score_0" not in data.column_names  # a pairwise judge has no per-image scores
    assert "ties 0, no preference (unparsed, label_0 NaN) 2" in capsys.readouterr().out


def test_outputs_are_checked_before_the_model_loads(tmp_path, image_dir, capsys):
    # No model at --model: the output errors must come first, before any scoring or loading.
    missing_model = str(tmp_path / "no-model")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert score.main(["--scorer", "pickscore", "--model", missing_model, "--images", str(image_dir),
                       "--prompt", "x", "--out", str(blocker / "scores.jsonl")]) == 2
    assert f"--out {blocker / 'scores.jsonl'}: cannot be created, {blocker} is not a folder" in capsys.readouterr().err
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "a", "image_0": "images/img0.png", "image_1": "images/img1.png"}) + "\n")
    relabel_argv = ["--scorer", "pickscore", "--model", missing_model, "--dataset", str(pairs), "--out"]
    assert relabel.main([*relabel_argv, str(blocker / "out")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "keep.txt").write_text("someone's results")
    assert relabel.main([*relabel_argv, str(previous)]) == 2
    assert "already exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (previous / "keep.txt").read_text() == "someone's results"
    assert relabel.main([*relabel_argv, str(previous), "--overwrite"]) != 0  # gets past the check, to the model
    assert "already exists" not in capsys.readouterr().err


def test_relabel_overwrite_replaces_a_previous_result(model_dir, image_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "a", "image_0": "images/img0.png", "image_1": "images/img1.png"}) + "\n")
    argv = ["--scorer", "pickscore", "--model", model_dir, "--dataset", str(pairs), "--out", str(tmp_path / "out")]
    assert relabel.main(argv) == 0
    assert relabel.main(argv) == 2
    assert relabel.main([*argv, "--overwrite"]) == 0
    assert len(datasets.load_from_disk(str(tmp_path / "out"))) == 1
