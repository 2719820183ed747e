"""The shapes world: prompt grammar round trips, parsing errors, seeded sampling and exact rendering geometry."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from visalign.shapes import render as R
from visalign.shapes.world import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    OPTIONS,
    POSITIONS,
    SIZES,
    VOCABULARY,
    ShapeSpec,
    complete,
    describe,
    parse_prompt,
    perturb,
    perturb_prompt,
    sample_scene,
    sample_spec,
)

ALL_SPECS = [ShapeSpec(**dict(zip(ATTRIBUTES, values))) for values in itertools.product(*OPTIONS.values())]
OPTIONAL = ("size", "position", "background", "colour")


def test_prompts_read_as_the_grammar_says():
    assert describe(ShapeSpec("circle", "red")) == "a red circle"
    assert describe(ShapeSpec("triangle", "blue", "small", background="white")) == \
        "a small blue triangle on a white background"
    assert describe(ShapeSpec("star", "orange", position="top", background="black")) == \
        "an orange star at the top on a black background"
    assert describe(ShapeSpec("cross", "green", "large", "left", "gray"), mention=("shape",)) == "a cross"
    with pytest.raises(ValueError, match="names a shape"):
        describe(ShapeSpec(colour="red"))


def test_every_prompt_parses_back_to_its_spec_and_uses_only_the_vocabulary():
    for spec in ALL_SPECS:
        for k in range(len(OPTIONAL) + 1):
            for mention in itertools.combinations(OPTIONAL, k):
                prompt = describe(spec, mention)
                expected = ShapeSpec(**{a: getattr(spec, a) for a in (*mention, "shape")})
                assert parse_prompt(prompt) == expected, prompt
                assert set(prompt.split()) <= set(VOCABULARY), prompt
    assert parse_prompt("  A Red CIRCLE. ") == ShapeSpec("circle", "red")


def test_strict_parsing_names_the_prompt_and_lenient_parsing_spots_words():
    for bad in ("a cat on a tree", "a red circle please", "red a circle", "a white circle", "a circle on the left side"):
        with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
            parse_prompt(bad)
    assert parse_prompt("a photo of a large red circle, on the left", strict=False) == \
        ShapeSpec("circle", "red", "large", "left")
    assert parse_prompt("a cat on a tree", strict=False) == ShapeSpec()
    assert parse_prompt("a white circle", strict=False) == ShapeSpec("circle")
    with pytest.raises(ValueError, match="two colours: 'red' and 'blue'"):
        parse_prompt("a red and blue circle", strict=False)
    with pytest.raises(TypeError, match="string"):
        parse_prompt(3)


def test_spec_values_are_checked_by_field():
    with pytest.raises(ValueError, match=r"ShapeSpec.colour='pink' is not one of red"):
        ShapeSpec("circle", "pink")
    assert ShapeSpec("circle").missing == ("size", "colour", "position", "background")


def test_sampling_is_seeded_and_always_names_colour_and_shape():
    draws = [sample_scene(random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(0)
    scenes = [sample_scene(rng, mention_probability=0.5) for _ in range(300)]
    for spec, prompt in scenes:
        asked = parse_prompt(prompt)
        assert not spec.missing and asked.colour == spec.colour and asked.shape == spec.shape
        assert all(getattr(asked, a) in (None, getattr(spec, a)) for a in ATTRIBUTES)
    assert len({p for _, p in scenes}) > 150
    bare = sample_scene(random.Random(1), mention_probability=0.0)
    assert bare[1] == describe(bare[0], ("colour", "shape"))
    with pytest.raises(ValueError, match="mention_probability"):
        sample_scene(rng, mention_probability=1.5)
    filled = complete(ShapeSpec("star", "red"), random.Random(3))
    assert not filled.missing and (filled.shape, filled.colour) == ("star", "red")
    assert sample_spec(random.Random(5)) == sample_spec(random.Random(5))


def test_perturb_redraws_each_set_attribute_with_its_probability():
    spec = ShapeSpec("star", "red", "small", "left", "white")
    assert perturb(spec, random.Random(0), 0.0) == spec
    partial = ShapeSpec("circle", "blue")
    assert all(perturb(partial, random.Random(i), 1.0).missing == partial.missing for i in range(50))
    draws = [perturb(spec, random.Random(i), 0.5) for i in range(2000)]
    for a in ATTRIBUTES:  # redrawn half the time, and a redraw keeps the old value 1 / len(options) of the time
        changed = sum(getattr(d, a) != getattr(spec, a) for d in draws) / len(draws)
        assert abs(changed - 0.5 * (1 - 1 / len(OPTIONS[a]))) < 0.04, (a, changed)
    assert perturb(spec, random.Random(9), 0.3) == perturb(spec, random.Random(9), 0.3)
    with pytest.raises(ValueError, match="probability"):
        perturb(spec, random.Random(0), 1.5)


def test_perturb_prompt_changes_exactly_one_named_attribute_and_keeps_the_wording():
    prompt = "a small red star on a white background"
    asked, changed = parse_prompt(prompt), set()
    for i in range(200):
        perturbed = perturb_prompt(prompt, random.Random(i))
        got = parse_prompt(perturbed)  # still in the grammar, naming the same attributes
        differs = [a for a in ATTRIBUTES if getattr(got, a) != getattr(asked, a)]
        assert len(differs) == 1 and got.missing == asked.missing, perturbed
        changed.add(differs[0])
    assert changed == {"size", "colour", "shape", "background"}
    assert perturb_prompt(prompt, random.Random(3)) == perturb_prompt(prompt, random.Random(3))


# ---- rendering ----------------------------------------------------------------------------------------------------
def test_coverage_geometry_is_exact():
    # PIL rasterises on the 8x subpixel grid: edges are exact to one subpixel (1/8 px)
    square = R.coverage("square", R.Placement(16, 16, 10), 32, 32)
    expected = np.zeros((32, 32), dtype=np.float32)
    expected[11:21, 11:21] = 1
    np.testing.assert_array_equal(square >= 0.5, expected == 1)
    np.testing.assert_allclose(square, expected, atol=1 / 8 + 1 / 64)
    half = R.coverage("square", R.Placement(16.5, 16, 10), 32, 32)  # box [11.5, 21.5): edge columns half covered
    np.testing.assert_allclose(half[15, 10:23], [0, 0.5] + [1] * 9 + [0.5, 0], atol=1 / 8)
    big = 200.0
    areas = {s: R.coverage(s, R.Placement(128, 128, big), 256, 256).sum() / big**2
             for s in ("circle", "triangle", "cross", "star")}
    assert areas["circle"] == pytest.approx(32 * math.sin(2 * math.pi / 64) / 4, rel=2e-3)  # 64-gon, r = extent / 2
    assert areas["triangle"] == pytest.approx(0.5, rel=2e-3)
    assert areas["cross"] == pytest.approx(5 / 9, rel=2e-3)  # arm width 1/3: 1 - 4 * (1/3)^2
    outer = 1 / (2 * math.cos(math.radians(18)))  # star with width 1: 10 triangles centre-outer-inner
    star = 10 * 0.5 * outer * outer * R.STAR_INNER_RATIO * math.sin(math.radians(36))
    assert areas["star"] == pytest.approx(star, rel=3e-3)


@pytest.mark.parametrize("resolution", [32, 64])
def test_render_is_deterministic_and_holds_exactly_two_palette_colours(resolution):
    spec = ShapeSpec("star", "purple", "large", "right", "gray")
    image = R.render(spec, seed=3, resolution=resolution)
    assert image.size == (resolution, resolution) and image.mode == "RGB"
    pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels, np.asarray(R.render(spec, seed=3, resolution=resolution)))
    assert not np.array_equal(pixels, np.asarray(R.render(spec, seed=4, resolution=resolution)))
    colours = {tuple(c) for c in pixels.reshape(-1, 3).tolist()}
    assert colours == {COLOURS["purple"], BACKGROUNDS["gray"]}


def test_layout_keeps_shapes_inside_and_places_them_where_asked():
    for size, position, seed in itertools.product(SIZES, POSITIONS, range(40)):
        p = R.layout(ShapeSpec("square", "red", size, position, "white"), seed=seed, resolution=100)
        assert SIZES[size] * 90 <= p.extent <= SIZES[size] * 110
        lo, hi = p.cx - p.extent / 2, p.cx + p.extent / 2
        assert lo >= 100 * (R.MARGIN - R.CENTRE_JITTER) and hi <= 100 * (1 - R.MARGIN + R.CENTRE_JITTER)
        dx, dy = p.cx / 100 - 0.5, p.cy / 100 - 0.5
        expected = {"center": (0, 0), "left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}[position]
        offset = 0.5 - p.extent / 200 - R.MARGIN
        for d, e in ((dx, expected[0]), (dy, expected[1])):
            assert abs(d - e * offset) <= R.CENTRE_JITTER + 1e-9


def test_render_batch_and_errors():
    specs = [ShapeSpec("circle", "red", "small", "center", "white"), ShapeSpec("cross", "blue", "large", "top", "black")]
    batch = R.render_batch(specs, [0, 1], resolution=32)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.uint8
    np.testing.assert_array_equal(batch[1].permute(1, 2, 0).numpy(), R.render_array(specs[1], seed=1))
    with pytest.raises(ValueError, match="unspecified size, position, background"):
        R.render(ShapeSpec("circle", "red"))
    with pytest.raises(ValueError, match="one seed per spec"):
        R.render_batch(specs, [0])
    with pytest.raises(ValueError, match="at least 16"):
        R.render(specs[0], resolution=8)
