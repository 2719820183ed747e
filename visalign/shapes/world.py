"""The shapes world's vocabulary, prompt grammar, scene sampling and prompt parsing.

A scene is one filled shape on a plain background (sizing: ``shared/reference/shapes-world-probe.md``). Prompts follow
one grammar, every part but the shape optional::

    a|an [small|large] [red|green|blue|yellow|purple|orange] circle|square|triangle|star|cross
         [in the center|on the left|on the right|at the top|at the bottom] [on a white|black|gray background]

e.g. "a red circle", "a small blue triangle on a white background", "an orange star at the top on a black background".
A :class:`ShapeSpec` holds what a prompt asks for (``None`` = not mentioned); :func:`parse_prompt` inverts
:func:`describe` exactly.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, fields, replace

#: Shape colours, RGB 0..255: saturated and pairwise far apart, so the nearest palette colour is unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 70, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 50, 170),
    "orange": (245, 125, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
#: Shape extent (the longer side of its bounding box) as a fraction of the image side, before jitter.
SIZES: dict[str, float] = {"small": 0.35, "large": 0.6}
#: Position -> the words that say it in a prompt.
POSITIONS: dict[str, str] = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
#: Attributes of a scene in prompt order; ``shape`` is the only one every prompt names.
ATTRIBUTES: tuple[str, ...] = ("size", "colour", "shape", "position", "background")
OPTIONS: dict[str, tuple[str, ...]] = {
    "size": tuple(SIZES),
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": tuple(POSITIONS),
    "background": tuple(BACKGROUNDS),
}
#: Every word of the grammar (for a word-level tokenizer).
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(
    ["a", "an", *SIZES, *COLOURS, *SHAPES, *" ".join(POSITIONS.values()).split(), "on", "background", *BACKGROUNDS]
))


@dataclass(frozen=True)
class ShapeSpec:
    """What a scene contains, or what a prompt asks for (``None``: not mentioned). Values come from :data:`OPTIONS`."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    position: str | None = None
    background: str | None = None

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value not in OPTIONS[f.name]:
                raise ValueError(f"ShapeSpec.{f.name}={value!r} is not one of {', '.join(OPTIONS[f.name])}")

    @property
    def missing(self) -> tuple[str, ...]:
        """Attributes left unspecified (a renderable scene has none)."""
        return tuple(a for a in ATTRIBUTES if getattr(self, a) is None)

    def prompt(self) -> str:
        """This spec as a prompt (see :func:`describe`)."""
        return describe(self)


def describe(spec: ShapeSpec, mention: Collection[str] = ATTRIBUTES) -> str:
    """The prompt naming ``spec``'s attributes listed in ``mention`` (the shape is always named)."""
    if spec.shape is None:
        raise ValueError(f"cannot describe {spec}: every prompt names a shape")
    said = {a: getattr(spec, a) if a in mention or a == "shape" else None for a in ATTRIBUTES}
    words = [w for w in (said["size"], said["colour"], said["shape"]) if w]
    if said["position"]:
        words.append(POSITIONS[said["position"]])
    if said["background"]:
        words.append(f"on a {said['background']} background")
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


_WORD_ATTRIBUTE = {w: a for a in ("size", "colour", "shape", "background") for w in OPTIONS[a]}
_WORD_ATTRIBUTE.update({p: "position" for p in POSITIONS})


def parse_prompt(prompt: str, *, strict: bool = True) -> ShapeSpec:
    """The :class:`ShapeSpec` a prompt asks for.

    Attribute words are spotted anywhere in the prompt (case-insensitive; punctuation ignored). ``strict=True``
    also requires the prompt to be exactly in the grammar (``describe(spec) == prompt`` up to case, spacing and a
    final period); ``strict=False`` accepts free text ("a photo of a red circle") and, without a shape word,
    returns a spec with ``shape=None``. Naming two values for one attribute is an error either way.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    words = "".join(c if c.isalnum() else " " for c in prompt.lower()).split()
    found: dict[str, str] = {}
    for word in words:
        attribute = _WORD_ATTRIBUTE.get(word)
        if attribute is None:
            continue
        if attribute == "background" and "background" not in words:
            attribute = "colour"  # "a white circle": white names no shape colour of this world
        if attribute in found and found[attribute] != word:
            raise ValueError(f"prompt {prompt!r} names two {attribute}s: {found[attribute]!r} and {word!r}")
        found[attribute] = word
    if found.get("colour") in BACKGROUNDS:
        if strict:
            raise ValueError(f"prompt {prompt!r}: {found['colour']!r} is a background, not a shape colour "
                             f"({', '.join(COLOURS)})")
        del found["colour"]
    spec = ShapeSpec(**found)
    if strict and (spec.shape is None or describe(spec).split() != words):
        example = describe(ShapeSpec("triangle", "blue", "small", "left", "white"))
        raise ValueError(f"prompt {prompt!r} is not in the shapes grammar (e.g. {example!r}); "
                         "pass strict=False to spot attribute words in free text")
    return spec


def sample_spec(rng: random.Random) -> ShapeSpec:
    """A complete scene with every attribute drawn uniformly."""
    return ShapeSpec(**{a: rng.choice(OPTIONS[a]) for a in ATTRIBUTES})


def sample_scene(rng: random.Random, *, mention_probability: float = 0.75) -> tuple[ShapeSpec, str]:
    """A complete scene and a prompt for it: colour and shape always named; size, position and background each
    named with probability ``mention_probability`` (so the model also meets short prompts like "a red circle")."""
    if not 0.0 <= mention_probability <= 1.0:
        raise ValueError(f"mention_probability must be in [0, 1], got {mention_probability}")
    spec = sample_spec(rng)
    mention = {"colour", "shape"} | {a for a in ("size", "position", "background") if rng.random() < mention_probability}
    return spec, describe(spec, mention)


def perturb(spec: ShapeSpec, rng: random.Random, probability: float) -> ShapeSpec:
    """``spec`` with each attribute it sets redrawn uniformly with ``probability`` (the draw may repeat the old
    value): near misses of a scene, the kind of images a preference model must tell apart."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    return replace(spec, **{a: rng.choice(OPTIONS[a]) for a in ATTRIBUTES
                            if getattr(spec, a) is not None and rng.random() < probability})


def perturb_prompt(prompt: str, rng: random.Random) -> str:
    """``prompt`` (in the grammar) with one of the attributes it names changed to another value, worded alike: a
    caption that no longer says what was asked (DCPO-p's perturbed caption of the rejected image, Saeidi et al. 2025,
    arXiv 2502.06023, §3.2; there a paraphrasing LLM perturbs it)."""
    asked = parse_prompt(prompt)
    named = [a for a in ATTRIBUTES if getattr(asked, a) is not None]
    attribute = rng.choice(named)
    other = rng.choice([v for v in OPTIONS[attribute] if v != getattr(asked, attribute)])
    return describe(replace(asked, **{attribute: other}), named)


def complete(spec: ShapeSpec, rng: random.Random) -> ShapeSpec:
    """``spec`` with each unmentioned attribute drawn uniformly (a prompt -> a scene that satisfies it)."""
    return replace(spec, **{a: rng.choice(OPTIONS[a]) for a in spec.missing})
