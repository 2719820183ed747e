"""Scorer names -> lazy factories; ``load_scorer`` also accepts a ``"pkg.module:Factory"`` path for user scorers.

Factories are stored as ``"module:attribute"`` strings (or callables) and imported only when a scorer is loaded, so
``import reward_models`` never pulls in transformers or open_clip (the lazy-factory pattern of ddpo-pytorch's
``rewards.py``). Registration is validated like PEFT's ``register_peft_method``: lower-case names, no duplicates.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, Union

from .base import Scorer

Factory = Union[str, Callable[..., Scorer]]

_NAME = re.compile(r"^[a-z][a-z0-9_.\-]*$")

#: Built-in scorers, each implemented in its own module of this package.
_REGISTRY: dict[str, Factory] = {
    "pickscore": "reward_models.pickscore:PickScore",
    "hps": "reward_models.hps:HPSv2",
    "clip_score": "reward_models.clip_score:CLIPScore",
    "aesthetic": "reward_models.aesthetic:LaionAesthetic",
    "imagereward": "reward_models.image_reward:ImageReward",
    "unifiedreward": "reward_models.unified_reward:UnifiedReward",
    "shapes": "reward_models.shapes:ShapesScorer",
    "step-aware": "reward_models.step_aware:StepAwareScorer",
}


def register_scorer(name: str, factory: Factory) -> None:
    """Register ``factory`` (a callable returning a :class:`Scorer`, or a ``"pkg.module:Name"`` string imported on
    first use) under ``name``. Names are lower-case (``[a-z][a-z0-9_.-]*``) and must not be taken."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"scorer name {name!r} is invalid: use lower-case letters, digits, '_', '.', '-'")
    if name in _REGISTRY:
        raise KeyError(f"scorer {name!r} is already registered")
    if isinstance(factory, str):
        _split_path(factory)
    elif not callable(factory):
        raise TypeError(f"factory for {name!r} must be callable or a 'pkg.module:Name' string, got {factory!r}")
    _REGISTRY[name] = factory


def list_scorers() -> list[str]:
    """Names accepted by :func:`load_scorer`, sorted."""
    return sorted(_REGISTRY)


def load_scorer(name: str, **kwargs: Any) -> Scorer:
    """Build a scorer by registered name or ``"pkg.module:Factory"`` path, passing ``kwargs`` (``model=`` hub id or
    local path, ``device=``, ``dtype=``, scorer-specific options) to its factory."""
    if ":" in name:
        factory: Factory = name
    elif name in _REGISTRY:
        factory = _REGISTRY[name]
    else:
        raise KeyError(f"unknown scorer {name!r}; available: {', '.join(list_scorers())} "
                       "(or give a 'pkg.module:Factory' path)")
    if isinstance(factory, str):
        factory = _import(factory)
    scorer = factory(**kwargs)
    if not isinstance(scorer, Scorer):
        raise TypeError(f"scorer factory {name!r} returned {type(scorer).__name__}, not a reward_models.Scorer")
    return scorer


def _split_path(path: str) -> tuple[str, str]:
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"scorer path {path!r} must look like 'pkg.module:Factory'")
    return module, attr


def _import(path: str) -> Callable[..., Scorer]:
    module_name, attr = _split_path(path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"cannot import scorer module {module_name!r} (from {path!r}): {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise AttributeError(f"module {module_name!r} has no attribute {attr!r} (from scorer path {path!r})") from None
