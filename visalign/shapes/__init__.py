"""The shapes world: synthetic scenes of one coloured shape, their prompts, a renderer and a scene reader.

- ``world``: vocabulary, prompt grammar (:func:`describe` / :func:`parse_prompt`), scene sampling
- ``render``: deterministic PIL rendering of a scene + seed at 32 or 64 px
- ``analysis``: pixels -> background, colour, shape, size, position (what the ``shapes`` reward scorer compares)

The modules' names are kept free (nothing here is called ``render``), so ``visalign.shapes.render`` is the module.

>>> from visalign.shapes import ShapeSpec
>>> from visalign.shapes.render import render
>>> image = render(ShapeSpec("circle", "red", "small", "center", "white"), seed=0, resolution=32)  # a PIL image
"""

from .analysis import SceneAnalysis, analyse
from .world import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    OPTIONS,
    POSITIONS,
    SHAPES,
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

__all__ = [
    "ATTRIBUTES", "BACKGROUNDS", "COLOURS", "OPTIONS", "POSITIONS", "SHAPES", "SIZES", "VOCABULARY",
    "SceneAnalysis", "ShapeSpec", "analyse", "complete", "describe", "parse_prompt", "perturb", "perturb_prompt",
    "sample_scene", "sample_spec",
]
