"""Rendered preference pairs of the shapes world: labelled by the reward, seeded, exact per-side captions, and read by
the diffusion trainers' pair loader."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from reward_models import load_scorer
from reward_models.inputs import pil_to_uint8, to_float
from visalign.data.diffusion import load_preference_pairs
from visalign.shapes.analysis import analyse
from visalign.shapes.pairs import render_preference_pairs
from visalign.shapes.world import ATTRIBUTES, parse_prompt

PROMPTS = ["a red circle", "a large blue square on a white background", "a small yellow star at the top",
           "a green triangle", "a purple cross in the center", "an orange circle on a black background"]


def pixels(path) -> torch.Tensor:
    return to_float(pil_to_uint8(Image.open(path)))[None]


def test_pairs_are_labelled_by_the_reward_and_name_what_the_rejected_image_shows(tmp_path):
    summary = render_preference_pairs(PROMPTS, tmp_path, seed=3, near_misses=4)
    rows = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert summary["pairs"] == len(rows) > 0 and summary["pairs"] + summary["dropped_small_gap"] == 6 * 4
    shapes = load_scorer("shapes")
    for row in rows:
        chosen, rejected = (pixels(tmp_path / side / row["file_name"]) for side in ("chosen", "rejected"))
        scores = shapes.score([chosen[0], rejected[0]], [row["caption"]] * 2).scores
        assert scores[0] - scores[1] > 0.1 and row["score_chosen"] == pytest.approx(float(scores[0]))
        assert "caption_rejected" not in row  # one caption per pair: no trainer conditions the sides apart
        shown, named = analyse(rejected).spec(0), parse_prompt(row["depicted_rejected"])
        assert [a for a in ATTRIBUTES if getattr(named, a)] == [a for a in ATTRIBUTES
                                                                 if getattr(parse_prompt(row["caption"]), a)]
        assert all(getattr(named, a) == getattr(shown, a) for a in ATTRIBUTES if getattr(named, a))


def test_pairs_are_seeded_and_load_as_a_preference_data_set(tmp_path):
    render_preference_pairs(PROMPTS, tmp_path / "a", seed=1)
    render_preference_pairs(PROMPTS, tmp_path / "b", seed=1)
    render_preference_pairs(PROMPTS, tmp_path / "c", seed=2)
    text = {name: (tmp_path / name / "captions.jsonl").read_text() for name in "abc"}
    assert text["a"] == text["b"] != text["c"]
    data = load_preference_pairs(str(tmp_path / "a"))
    assert len(data) == len(text["a"].splitlines())
    assert list(data.captions_rejected) == list(data.captions_chosen) == [
        json.loads(line)["caption"] for line in text["a"].splitlines()]
    with pytest.raises(ValueError, match="near_misses must be >= 1; got 0"):
        render_preference_pairs(PROMPTS, tmp_path / "d", near_misses=0)
