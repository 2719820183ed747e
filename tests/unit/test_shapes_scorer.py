"""The ``shapes`` reward: the scene analysis read back on rendered ground truth, every score component against a
hand-derived value, rankings of right over wrong prompts, options and errors, and the scorer contract."""

from __future__ import annotations

import math
import random
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from reward_models import load_scorer
from visalign.shapes import analysis
from visalign.shapes.render import render, render_batch
from visalign.shapes.world import ATTRIBUTES, COLOURS, OPTIONS, SHAPES, ShapeSpec, describe, sample_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))
from scorer_contract import ScorerContract  # noqa: E402

WHITE, RED = torch.tensor([1.0, 1.0, 1.0]), torch.tensor(COLOURS["red"]) / 255


@pytest.fixture(scope="module")
def scorer():
    return load_scorer("shapes")


def scenes(n: int, resolution: int, seed: int = 0) -> tuple[list[ShapeSpec], torch.Tensor]:
    rng = random.Random(seed)
    specs = [sample_spec(rng) for _ in range(n)]
    return specs, render_batch(specs, list(range(n)), resolution=resolution)


def corner_square() -> torch.Tensor:
    """32x32 white image, red 10x10 square in rows/cols 0..9 (hand-derived values below)."""
    image = WHITE.view(3, 1, 1).repeat(1, 32, 32)
    image[:, :10, :10] = RED.view(3, 1, 1)
    return image


class TestShapesContract(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls):
        return load_scorer("shapes", strict=False)  # the contract's prompts include "a cat on a tree"


# ---- the analysis on rendered ground truth ------------------------------------------------------------------------
@pytest.mark.parametrize("resolution, n, min_shape_accuracy", [(32, 600, 0.99), (64, 200, 1.0)])
def test_analysis_reads_rendered_scenes_back(resolution, n, min_shape_accuracy):
    specs, images = scenes(n, resolution)
    found = analysis.analyse(images.float() / 255)
    assert found.detected.all()
    for attribute in ATTRIBUTES:
        truth = torch.tensor([OPTIONS[attribute].index(getattr(s, attribute)) for s in specs])
        accuracy = (getattr(found, attribute) == truth).float().mean().item()
        assert accuracy >= (min_shape_accuracy if attribute == "shape" else 1.0), (attribute, accuracy)
    assert found.spec(0) == specs[0]


def test_templates_are_each_closest_to_themselves():
    t = analysis.templates()
    iou = analysis.soft_iou(t.unsqueeze(1), t.unsqueeze(0))
    torch.testing.assert_close(iou.diagonal(), torch.ones(len(SHAPES)))
    assert (iou - torch.eye(len(SHAPES))).max() < 0.8  # circle vs square is the closest pair (pi/4 ~ 0.79)


def test_largest_component_drops_specks():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 1:4, 1:4] = True  # 9 pixels
    mask[0, 6, 6] = mask[0, 5, 5] = True  # 2 pixels, diagonally connected
    expected = torch.zeros_like(mask)
    expected[0, 1:4, 1:4] = True
    assert torch.equal(analysis.largest_component(mask), expected)
    assert analysis.largest_component(torch.zeros(2, 4, 4, dtype=torch.bool)).sum() == 0


def test_hand_built_image_gives_hand_derived_measurements():
    found = analysis.analyse(corner_square().unsqueeze(0))
    # box [0, 10) on both axes: centre offset 5/32 - 1/2, extent 10/32
    d = 5 / 32 - 0.5
    assert found.offset_x.item() == pytest.approx(d) and found.offset_y.item() == pytest.approx(d)
    assert found.extent.item() == pytest.approx(10 / 32)
    aesthetic = 0.5 * (1 - math.hypot(d, d) / 0.5) + 0.5 * (10 / 32) / 0.6
    assert found.aesthetic.item() == pytest.approx(aesthetic, abs=1e-6)
    assert found.spec(0) == ShapeSpec("square", "red", "small", "left", "white")  # |dx| = |dy|: horizontal wins
    assert found.object_fraction.item() == pytest.approx(100 / 1024)


# ---- scores ---------------------------------------------------------------------------------------------------------
def test_score_is_the_documented_weighted_sum(scorer):
    image = corner_square()
    aesthetic = analysis.analyse(image.unsqueeze(0)).aesthetic.item()
    prompts = {
        "a small red square on the left on a white background": 0.9,
        "a red square": 0.9,  # unmentioned attributes are satisfied
        "a small blue square on the left on a white background": 0.6,
        "a small red circle on the left on a white background": 0.6,
        "a large red square at the top on a black background": 0.6,
        "a large blue triangle in the center on a gray background": 0.0,
    }
    result = scorer.score(image.expand(len(prompts), -1, -1, -1), list(prompts))
    expected = torch.tensor(list(prompts.values())) + 0.1 * aesthetic
    torch.testing.assert_close(result.scores, expected, rtol=0, atol=1e-6)
    assert result.details["colour"].tolist() == [1, 1, 0, 1, 1, 0]
    assert result.details["shape"].tolist() == [1, 1, 1, 0, 1, 0]
    assert result.details["background"].tolist() == [1, 1, 1, 1, 0, 0]
    iou = analysis.analyse(image.unsqueeze(0)).shape_iou[0]
    assert result.details["shape_iou"][1].item() == pytest.approx(iou[SHAPES.index("square")].item())
    assert result.details["shape_iou"][3].item() == pytest.approx(iou[SHAPES.index("circle")].item())


def test_an_empty_image_earns_only_the_background(scorer):
    blank = WHITE.view(1, 3, 1, 1).repeat(2, 1, 32, 32)
    result = scorer.score(blank, ["a red circle on a white background", "a red circle on a black background"])
    torch.testing.assert_close(result.scores, torch.tensor([0.1, 0.0]))
    assert result.details["detected"].tolist() == [0, 0] and result.details["aesthetic"].tolist() == [0, 0]


@pytest.mark.parametrize("resolution", [32, 64])
def test_right_prompts_outscore_wrong_colour_and_wrong_shape(scorer, resolution):
    n = 120
    specs, images = scenes(n, resolution, seed=1)
    rng = random.Random(2)
    right = [describe(s) for s in specs]
    wrong_colour = [describe(replace(s, colour=rng.choice([c for c in COLOURS if c != s.colour]))) for s in specs]
    wrong_shape = [describe(replace(s, shape=rng.choice([c for c in SHAPES if c != s.shape]))) for s in specs]
    good = scorer.score(images, right).scores
    assert (good >= 0.9).float().mean() >= 0.99  # all five attributes matched
    for wrong in (wrong_colour, wrong_shape):
        bad = scorer.score(images, wrong).scores
        assert (good > bad).float().mean() >= 0.99
        assert (bad <= 0.7).float().mean() >= 0.99


def test_mixed_resolutions_in_one_call_equal_separate_calls(scorer):
    spec = ShapeSpec("triangle", "green", "large", "right", "black")
    images = [render(spec, seed=1, resolution=32), render(spec, seed=1, resolution=64), render(spec, seed=2)]
    together = scorer.score(images, describe(spec), batch_size=3).scores
    apart = torch.cat([scorer.score([im], describe(spec)).scores for im in images])
    assert torch.equal(together, apart)


def test_options_and_errors():
    only_colour = load_scorer("shapes", weights={"colour": 1.0})
    image = corner_square()
    assert only_colour.score(image.expand(2, -1, -1, -1), ["a red square", "a blue square"]).scores.tolist() == [1.0, 0.0]
    assert only_colour.info.raw_range == (0.0, 1.0)
    assert only_colour.provenance.weights_sha256 != load_scorer("shapes").provenance.weights_sha256
    with pytest.raises(ValueError, match=r"unknown shapes score components \['hue'\]"):
        load_scorer("shapes", weights={"hue": 1.0})
    with pytest.raises(ValueError, match="'shape' must be a number >= 0"):
        load_scorer("shapes", weights={"shape": -1})
    with pytest.raises(ValueError, match="loads no weights"):
        load_scorer("shapes", model="some/hub-id")
    with pytest.raises(ValueError, match="'a cat on a tree' is not in the shapes grammar"):
        load_scorer("shapes").score(image, "a cat on a tree")
    lenient = load_scorer("shapes", strict=False)
    assert lenient.score(image, "a photo of a red square").scores.item() == pytest.approx(
        load_scorer("shapes").score(image, "a red square").scores.item())
