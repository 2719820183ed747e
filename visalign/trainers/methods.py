"""What a ``method:`` name means: one table, read by every trainer family's config and by ``visalign train``.

A method is a point on the four axes (DESIGN.md): the trainer family whose config it is trained with, the
likelihood its trainer scores, whether its data is paired, the values it gives the fields a user leaves unset
(``None``), and what it requires of the others. Every trainer family's config runs the same checks
(:func:`resolve_method` first in ``TrainingConfig.__post_init__``, :func:`check_requirements` once
``PreferenceConfig`` has validated the losses), so a method name maps to exactly one thing in every trainer family,
and ``method: dense-dpo`` with ``dense_dpo: false`` fails instead of training something else.

The papers' full run settings (learning rates, steps, resolutions, ...) live in the shipped recipes; here are only
the values that make a method what it is when a config names it, e.g. ``DiffusionConfig(method="mapo")`` trains the
``mapo`` loss with β_mapo 0.1. Fields read by some methods only carry ``metadata={"methods": (...)}``; setting one
under another method is an error naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from visalign.config_io import in_method_scope


@dataclass(frozen=True)
class TrainerSpec:
    """A trainer family: the methods sharing one config class and one ``run`` (``pkg.module:Name`` paths, imported
    on use)."""

    config: str
    run: str


TRAINERS: dict[str, TrainerSpec] = {
    "text": TrainerSpec("visalign.trainers.text:DPOConfig", "visalign.trainers.text:run"),
    "vlm": TrainerSpec("visalign.trainers.vlm:VLMDPOConfig", "visalign.trainers.vlm:run"),
    "diffusion": TrainerSpec("visalign.trainers.diffusion:DiffusionConfig", "visalign.trainers.diffusion:run"),
    "online-diffusion": TrainerSpec("visalign.trainers.onpolicy:OnPolicyConfig", "visalign.trainers.onpolicy:run"),
    "spm": TrainerSpec("visalign.trainers.spm:SPMConfig", "visalign.trainers.spm:run"),
}


@dataclass(frozen=True)
class Requirement:
    """``key`` must satisfy ``holds(value)`` under the method (``expected`` says how, for the error)."""

    key: str
    holds: Callable[[Any], bool]
    expected: str


@dataclass(frozen=True)
class Method:
    """One ``method:`` name: its trainer family (a ``TRAINERS`` key), likelihood (a ``visalign.losses.LIKELIHOODS``
    name, None = not a preference loss), paired or unpaired data, the defaults it gives fields left ``None``, and its
    requirements (checked by ``PreferenceConfig``)."""

    trainer: str
    summary: str
    likelihood: str | None = None
    unpaired: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[Requirement, ...] = ()
    #: ``pkg.module:run`` where the method has its own (its family's otherwise).
    own_run: str | None = None

    @property
    def config(self) -> str:
        return TRAINERS[self.trainer].config

    @property
    def run(self) -> str:
        return self.own_run or TRAINERS[self.trainer].run


def _losses(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or ())


def _is(expected_value: Any) -> Callable[[Any], bool]:
    return lambda value: value == expected_value


_TEXT = {"loss_type": "sigmoid", "beta": 0.1}
_DENSE = Requirement("dense_dpo", _is(True), "true (RLHF-V dense DPO weights the corrected tokens)")
_NOT_DENSE = Requirement("dense_dpo", _is(False), "false (only method dense-dpo weights tokens)")
_DIFFUSION = {"loss_type": "sigmoid", "beta": 5000.0, "caption_dropout": 0.2, "noise_source": "random"}

METHODS: dict[str, Method] = {
    "dpo": Method("text", "DPO family on a causal LM (any paired loss)", "tokens", defaults=_TEXT),
    "kto": Method("text", "KTO on unpaired prompt/completion/label rows (Ethayarajh et al. 2024)", "tokens",
                  unpaired=True, defaults={**_TEXT, "loss_type": "kto"}, requires=(
                      Requirement("per_device_batch_size", lambda v: v >= 2,
                                  ">= 2 (the KL reference point pairs each prompt with another row's completion)"),
                      Requirement("reference", lambda v: v != "precomputed",
                                  "frozen_copy, disable_adapter or auto, not 'precomputed' (the KL reference point "
                                  "needs a reference forward on mismatched pairs)"))),
    "vlm-dpo": Method("vlm", "DPO on a LLaVA-style or Qwen2-VL model", "tokens",
                      defaults={**_TEXT, "dense_dpo": False}, requires=(_NOT_DENSE,)),
    "dense-dpo": Method("vlm", "RLHF-V dense DPO: corrected tokens weighted by γ (Yu et al. 2024)", "tokens",
                        defaults={**_TEXT, "dense_dpo": True}, requires=(_DENSE,)),
    "mia-dpo": Method("vlm", "MIA-DPO on multi-image augmented pairs (Liu et al. 2024)", "tokens",
                      defaults={**_TEXT, "dense_dpo": False}, requires=(_NOT_DENSE,)),
    "diffusion-dpo": Method("diffusion", "Diffusion-DPO (Wallace et al. 2023)", "diffusion", defaults=_DIFFUSION),
    "mapo": Method("diffusion", "MaPO, reference-free (Hong et al. 2024); β is β_mapo", "diffusion",
                   defaults={**_DIFFUSION, "loss_type": "mapo", "beta": 0.1, "caption_dropout": 0.0}, requires=(
                       Requirement("loss_type", lambda v: "mapo" in _losses(v), "'mapo' or a list including it"),)),
    "dcpo": Method("diffusion", "DCPO: each image on its own caption (Saeidi et al. 2025)", "diffusion",
                   defaults={**_DIFFUSION, "beta": 500.0, "caption_dropout": 0.0,
                             "caption_chosen_column": "caption_chosen", "caption_rejected_column": "caption_rejected",
                             "caption_0_column": "caption_0", "caption_1_column": "caption_1"}),
    "inpo": Method("diffusion", "InPO: x_t from a DDIM inversion of each image (Lu et al. 2025)", "diffusion",
                   defaults={**_DIFFUSION, "noise_source": "ddim_inversion"}, requires=(
                       Requirement("noise_source", lambda v: v != "random", "an inversion source (ddim_inversion)"),)),
    "onpolicy-diffusion-dpo": Method("online-diffusion", "Diffusion-DPO on pairs sampled from the trained model",
                                     "diffusion", defaults={**_DIFFUSION, "resample_every": 0, "max_steps": -1}),
    "spo": Method("online-diffusion", "SPO: step-wise pairs, DDIM transition log-probs (Liang et al. 2025)",
                  "transition", defaults={**_DIFFUSION, "loss_type": "spo", "beta": 10.0, "resample_every": 2,
                                          "max_steps": 500},
                  requires=(Requirement("resample_every", lambda v: v >= 1,
                                        ">= 1 (SPO draws a round of pairs every few steps)"),),
                  own_run="visalign.trainers.spo:run"),
    "spm": Method("spm", "SPO's step-aware preference model (Liang et al. 2025)"),
}


def trainer_methods(trainer: str) -> list[str]:
    """The method names of the trainer family ``trainer``."""
    return [name for name, method in METHODS.items() if method.trainer == trainer]


def resolve_method(config: Any) -> Method | None:
    """Check ``config.method`` belongs to the config's trainer family (``TRAINER``), fill the fields it leaves
    ``None`` with the method's defaults and refuse method-scoped fields set under another method (run first, before
    the config's own checks). Returns the method (None for a config outside every family naming a method the table
    does not know)."""
    c = type(config).__name__
    trainer = getattr(config, "TRAINER", None)
    method = METHODS.get(config.method)
    if trainer is not None and (method is None or method.trainer != trainer):
        raise ValueError(f"{c}.method must be one of {', '.join(trainer_methods(trainer))}; got {config.method!r}"
                         + (f" (method {config.method!r} is trained with {METHODS[config.method].config})"
                            if config.method in METHODS else ""))
    if method is None:
        return None
    for key, value in method.defaults.items():
        if getattr(config, key, value) is None:
            setattr(config, key, value)
    for f in dataclasses.fields(config):
        if not in_method_scope(f, config) and getattr(config, f.name) != _default(f):
            raise ValueError(f"{c}.{f.name} is read by method {' | '.join(f.metadata['methods'])} only; method is "
                             f"{config.method!r} (unset it or change the method)")
    return method


def check_requirements(config: Any) -> None:
    """``ValueError("<Config>.<key> must be <expected> for method <name>; got <value>")`` for the first requirement
    of the config's method it breaks (run by ``PreferenceConfig`` once the losses are known to be valid)."""
    method = METHODS.get(config.method)
    for requirement in () if method is None else method.requires:
        value = getattr(config, requirement.key)
        if not requirement.holds(value):
            raise ValueError(f"{type(config).__name__}.{requirement.key} must be {requirement.expected} for method "
                             f"{config.method!r}; got {value!r}")


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
