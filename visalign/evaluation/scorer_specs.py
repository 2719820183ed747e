"""Scorer options as text -> a loaded scorer or ``ScorerSpec``s (what ``visalign score|relabel|eval``, the on-policy
trainer and ``pipelines/`` share).

- ``parse_scorer_args(["KEY=VALUE", ...])``: keyword arguments of one scorer, values read as YAML;
- ``build_scorer(name, model=..., device=..., dtype=..., scorer_args=[...])``: that scorer, loaded;
- ``parse_scorers(["NAME[=MODEL]", ...], ["NAME:KEY=VALUE", ...], device=..., dtype=...)``: several scorers as
  ``ScorerSpec``s, checked before any loads.
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from visalign.errors import InputError


def parse_scorer_args(items: Sequence[str]) -> dict:
    """``["KEY=VALUE", ...]`` -> scorer keyword arguments; values are read as YAML (numbers, booleans, lists,
    mappings such as ``weights={colour: 1.0}``), an empty value is the empty string (e.g. ``prefix=``)."""
    kwargs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"scorer argument {item!r} must look like KEY=VALUE")
        kwargs[key.replace("-", "_")] = yaml.safe_load(value) if value.strip() else ""
    return kwargs


def build_scorer(name: str, *, model: str | None = None, device: str = "cpu", dtype: str = "float32",
                 scorer_args: Sequence[str] = ()):
    """Load scorer ``name`` (registered name or ``pkg.module:Factory``) with its weights ``model`` (the scorer's
    default if ``None``) and ``KEY=VALUE`` options (:func:`parse_scorer_args`)."""
    from reward_models import load_scorer

    kwargs = {"device": device, "dtype": dtype}
    if model is not None:
        kwargs["model"] = model
    kwargs.update(parse_scorer_args(scorer_args))
    return load_scorer(name, **kwargs)


def parse_scorers(specs: Sequence[str], scorer_args: Sequence[str] = (), *, device: str = "cpu",
                  dtype: str = "float32"):
    """``NAME[=MODEL]`` specs and ``NAME:KEY=VALUE`` options -> :class:`ScorerSpec` list, checked before any loading."""
    from reward_models import list_scorers
    from visalign.evaluation.report import ScorerSpec

    kwargs: dict[str, dict] = {}
    for spec in specs:
        name, sep, model = spec.partition("=")
        if not name or (sep and not model):
            raise InputError(f"--scorer {spec!r} must look like NAME or NAME=MODEL")
        if ":" not in name and name not in list_scorers():
            raise InputError(f"--scorer {spec!r}: unknown scorer {name!r}; available: {', '.join(list_scorers())}")
        if name in kwargs:
            raise InputError(f"--scorer {name!r} is given twice")
        kwargs[name] = {"device": device, "dtype": dtype, **({"model": model} if model else {})}
    for item in scorer_args:
        head, sep, value = item.partition("=")
        name, _, key = head.rpartition(":")
        if not sep or not name or not key:
            raise InputError(f"--scorer-arg {item!r} must look like NAME:KEY=VALUE")
        if name not in kwargs:
            raise InputError(f"--scorer-arg {item!r} names scorer {name!r}, which is not a --scorer")
        kwargs[name][key.replace("-", "_")] = yaml.safe_load(value)
    return [ScorerSpec(name, name, options) for name, options in kwargs.items()]
