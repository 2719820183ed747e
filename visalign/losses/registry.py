"""The loss table (``LOSSES``) and the one entry point for paired losses (``preference_loss``).

``LOSSES`` is a plain dict from TRL 1.16 loss names (plus visalign's ``cdpo``, ``simpo``, ``cpo``, ``orpo``, ``mapo``,
``kto``) to a ``LossSpec``; config validation and help text are generated from it. Each spec holds the hparam
defaults once; the loss functions take them as required keywords.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from visalign.losses import dpo_family, kto, reference_free
from visalign.losses.divergences import F_DIVERGENCES
from visalign.losses.types import LossOutput, LossTerms, PairLogLik, to_floats

Check = tuple[Callable[[Any], bool], str]


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_SMOOTHING: Check = (lambda v: _real(v) and 0.0 <= v < 0.5, "a number in [0, 0.5)")
_OPEN_UNIT: Check = (lambda v: _real(v) and 0.0 < v < 1.0, "a number in (0, 1)")
_POSITIVE: Check = (lambda v: _real(v) and v > 0, "a number > 0")
_NON_NEGATIVE: Check = (lambda v: _real(v) and v >= 0, "a number >= 0")
_FINITE: Check = (_real, "a finite number")
_F_DIV_TYPE: Check = (lambda v: v in F_DIVERGENCES, f"one of {', '.join(F_DIVERGENCES)}")

#: What a family's likelihood provider scores: token log-probs (text LLMs, VLMs), the diffusion ELBO surrogate, or the
#: log-probabilities of stored sampler transitions (SPO; ``visalign.likelihood.transition``).
LIKELIHOODS = ("tokens", "diffusion", "transition")

_F_DIV_HPARAMS = {"f_divergence_type": "reverse_kl", "f_alpha_divergence_coef": 0.5}
_F_DIV_CHECKS = {"f_divergence_type": _F_DIV_TYPE, "f_alpha_divergence_coef": _FINITE}


@dataclass(frozen=True)
class LossSpec:
    """One registered loss.

    Attributes:
        fn: ``fn(policy, ref, *, beta, **hparams) -> LossTerms`` for paired losses; ``kto_loss`` for KTO.
        doc: one line: what it is, paper, equation.
        reference_free: True when the loss never reads the reference (trainers then skip the reference forward).
        hparams: names of the extra hyper-parameters the loss reads, with their defaults.
        checks: per hparam, a predicate and the description of a valid value (for error messages).
        paired: False for losses over unpaired data (KTO), which ``preference_loss`` rejects.
        f_divergence: True when TRL allows a non-reverse-KL ``f_divergence_type`` together with this loss.
        likelihoods: the likelihoods (:data:`LIKELIHOODS`) the loss is defined on; a family whose likelihood is not
            listed cannot run it (:func:`check_family`).
    """

    fn: Callable[..., LossTerms | LossOutput]
    doc: str
    reference_free: bool = False
    hparams: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)
    paired: bool = True
    f_divergence: bool = False
    likelihoods: tuple[str, ...] = LIKELIHOODS

    def resolve(self, name: str, given: Mapping[str, Any]) -> dict[str, Any]:
        """This loss's hparams: defaults overridden by ``given`` (keys it does not read are ignored), checked."""
        resolved = {key: given.get(key, default) for key, default in self.hparams.items()}
        for key, value in resolved.items():
            if key in self.checks:
                is_valid, description = self.checks[key]
                if not is_valid(value):
                    raise ValueError(f"loss {name!r}: hparam {key!r} must be {description}; got {value!r}")
        return resolved


def _fdiv(fn, doc: str, **extra: Any) -> LossSpec:
    """Spec for a reference-based loss that reads the f-divergence hparams (TRL's f-DPO-compatible set)."""
    hparams = {key: value for key, value in extra.items() if key != "checks"}
    return LossSpec(
        fn, doc, hparams={**hparams, **_F_DIV_HPARAMS}, checks={**extra.get("checks", {}), **_F_DIV_CHECKS},
        f_divergence=True,
    )


LOSSES: dict[str, LossSpec] = {
    "sigmoid": _fdiv(dpo_family.sigmoid, "DPO (Rafailov et al. 2023, Eq. 7): -log σ(βΔ)"),
    "cdpo": _fdiv(
        dpo_family.cdpo, "conservative DPO (Mitchell 2023): -(1-ε)log σ(βΔ) - ε log σ(-βΔ), ε = label_smoothing",
        label_smoothing=0.0, checks={"label_smoothing": _SMOOTHING},
    ),
    "hinge": _fdiv(dpo_family.hinge, "SLiC-HF hinge (Zhao et al. 2023): max(0, 1 - βΔ)"),
    "ipo": _fdiv(dpo_family.ipo, "IPO (Azar et al. 2023, Eq. 17): (Δ/|y| - 1/(2β))², length-normalised as TRL"),
    "robust": _fdiv(
        dpo_family.robust, "robust DPO (Chowdhury et al. 2024): unbiased DPO under label-flip rate ε = label_smoothing",
        label_smoothing=0.0, checks={"label_smoothing": _SMOOTHING},
    ),
    "exo_pair": _fdiv(
        dpo_family.exo_pair, "EXO-pref (Ji et al. 2024, Eq. 16): KL(σ(±βΔ) ‖ [1-ε, ε]), ε = label_smoothing",
        label_smoothing=1e-3, checks={"label_smoothing": _OPEN_UNIT},
    ),
    "nca_pair": LossSpec(
        dpo_family.nca_pair, "NCA (Chen et al. 2024), pairwise: -log σ(βlc) - ½log σ(-βlc) - ½log σ(-βlr)"
    ),
    "bco_pair": LossSpec(
        dpo_family.bco_pair, "paired BCO (Jung et al. 2024), no reward shift: -log σ(βlc) - log σ(-βlr)"
    ),
    "sppo_hard": LossSpec(
        dpo_family.sppo_hard, "SPPO, hard labels (Wu et al. 2024, Eq. 4.7): (lc - 1/2β)² + (lr + 1/2β)²"
    ),
    "aot": LossSpec(
        dpo_family.aot, "AOT paired (Melnyk et al. 2024): smoothed logistic on batch-sorted policy vs ref margins",
        hparams={"label_smoothing": 0.0}, checks={"label_smoothing": _SMOOTHING},
    ),
    "aot_unpaired": LossSpec(
        dpo_family.aot_unpaired, "AOT unpaired (Melnyk et al. 2024): smoothed logistic on separately sorted lc, lr",
        hparams={"label_smoothing": 0.0}, checks={"label_smoothing": _SMOOTHING},
    ),
    "apo_zero": LossSpec(
        dpo_family.apo_zero, "Anchored PO zero (D'Oosterlinck et al. 2024, Eq. 7): 1 - σ(βlc) + σ(βlr)"
    ),
    "apo_down": LossSpec(
        dpo_family.apo_down, "Anchored PO down (D'Oosterlinck et al. 2024, Eq. 8): σ(βlc) + 1 - σ(β(lc - lr))"
    ),
    "discopop": _fdiv(
        dpo_family.discopop, "DiscoPOP (Chan Lu et al. 2024, Eq. 5): log-ratio-modulated logistic/exponential blend",
        discopop_tau=0.05, checks={"discopop_tau": _POSITIVE},
    ),
    "sft": LossSpec(
        reference_free.sft,
        "SFT/RPO term (Pang et al. 2024): token-mean NLL of chosen, -Σchosen/Σcount, per pair; diffusion: the mean "
        "denoising MSE of chosen (-2·loglik, = Salesforce --sft and MaPO's SFT term)",
        reference_free=True, f_divergence=True,
    ),
    "sigmoid_norm": _fdiv(dpo_family.sigmoid_norm, "length-normalised DPO (Tülu 3): -log σ(β(lc/|y_w| - lr/|y_l|))"),
    "simpo": LossSpec(
        reference_free.simpo, "SimPO (Meng et al. 2024, Eq. 6): -log σ(β(ā_w - ā_l) - γ) on mean token logps",
        reference_free=True, hparams={"simpo_gamma": 0.5, "label_smoothing": 0.0},
        checks={"simpo_gamma": _FINITE, "label_smoothing": _SMOOTHING},
    ),
    "cpo": LossSpec(
        reference_free.cpo, "CPO (Xu et al. 2024, Eq. 3): -log σ(β(logπ_w - logπ_l)) + cpo_alpha·NLL(chosen)",
        reference_free=True, hparams={"cpo_alpha": 1.0, "label_smoothing": 0.0},
        checks={"cpo_alpha": _NON_NEGATIVE, "label_smoothing": _SMOOTHING},
    ),
    "orpo": LossSpec(
        reference_free.orpo,
        "ORPO (Hong et al. 2024, Eqs. 4, 7): NLL(chosen) - β·log σ(log odds ratio) on mean token logps",
        reference_free=True,
    ),
    "mapo": LossSpec(
        reference_free.mapo,
        "MaPO (Hong et al. 2024), diffusion: mean(L_w) - β·mean(log σ(T·[f(s·L_w) - f(s·L_l)])), f(x) = x/(eˣ-1)",
        reference_free=True, hparams={"mapo_snr": 0.5, "mapo_timesteps": 1000},
        checks={"mapo_snr": _POSITIVE, "mapo_timesteps": _POSITIVE}, likelihoods=("diffusion",),
    ),
    "spo": LossSpec(
        dpo_family.spo,
        "SPO (Liang et al. 2025, §3.3), sampler transitions: -log σ(β log r_w - β log r_l), r = clamp(π/π_ref, 1±ε)",
        hparams={"spo_ratio_clip": 0.1}, checks={"spo_ratio_clip": _OPEN_UNIT}, likelihoods=("transition",),
    ),
    "kto": LossSpec(
        kto.kto_loss, "KTO (Ethayarajh et al. 2024, Eq. 7), unpaired: λ(1 - σ(±β(r - z0))); use kto_loss()",
        hparams={"desirable_weight": 1.0, "undesirable_weight": 1.0},
        checks={"desirable_weight": _NON_NEGATIVE, "undesirable_weight": _NON_NEGATIVE}, paired=False,
        likelihoods=("tokens",),
    ),
}


@dataclass(frozen=True)
class LossPlan:
    """One validated entry of a loss combination: name, spec, weight and resolved hparams."""

    name: str
    spec: LossSpec
    weight: float
    hparams: dict[str, Any]


def _names(loss_type: str | Sequence[str]) -> list[str]:
    names = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if not names:
        raise ValueError("loss_type is empty; choose at least one of: " + ", ".join(LOSSES))
    return names


def needs_reference(loss_type: str | Sequence[str]) -> bool:
    """True unless every selected loss is reference-free (then trainers skip the reference forward)."""
    return not all(_spec(name).reference_free for name in _names(loss_type))


def _spec(name: str) -> LossSpec:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from: {', '.join(LOSSES)}")
    return LOSSES[name]


def runnable_losses(*, likelihood: str, unpaired: bool = False) -> list[str]:
    """The losses a family runs: defined on its ``likelihood`` and for its data (pairs, or unpaired with ``unpaired``)."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; one of {LIKELIHOODS}")
    return [name for name, spec in LOSSES.items() if likelihood in spec.likelihoods and spec.paired != unpaired]


def check_family(loss_type: str | Sequence[str], *, likelihood: str, unpaired: bool = False) -> None:
    """Raise ``ValueError`` naming the loss when a family with this ``likelihood`` and data cannot run it (a loss
    for the other data kind, or one not defined on ``likelihood``), listing the losses it can run."""
    runnable = runnable_losses(likelihood=likelihood, unpaired=unpaired)
    for name in _names(loss_type):
        spec = _spec(name)
        if name in runnable:
            continue
        if spec.paired == unpaired:
            reason = ("needs preference pairs, but this family trains on unpaired data" if unpaired else
                      "needs unpaired data, but this family trains on pairs")
        else:
            reason = f"is defined on the {' / '.join(spec.likelihoods)} likelihood only, not on {likelihood}"
        raise ValueError(f"loss {name!r} {reason}; it runs: {', '.join(runnable)}")


def plan_losses(
    loss_type: str | Sequence[str], *, beta: float, loss_weights: Sequence[float] | None = None, **hparams: Any
) -> list[LossPlan]:
    """Validate a loss configuration without touching tensors (config ``__post_init__`` can call this).

    Raises ``ValueError`` naming the loss and key for: an unknown or repeated loss name, an unpaired loss (KTO),
    β ≤ 0, a ``loss_weights`` length that differs from the loss list, an hparam no selected loss reads, an hparam
    out of range, or a non-reverse-KL ``f_divergence_type`` with a loss TRL does not allow it for.
    """
    names = _names(loss_type)
    specs = [_spec(name) for name in names]
    seen = set()
    for name, spec in zip(names, specs):
        if name in seen:
            raise ValueError(f"loss {name!r} is listed twice in loss_type {names}")
        seen.add(name)
        if not spec.paired:
            raise ValueError(
                f"loss {name!r} is unpaired: it needs UnpairedLogLik data; call visalign.losses.kto_loss instead of "
                "preference_loss"
            )
    if not (_real(beta) and beta > 0):
        label = repr(names[0]) if len(names) == 1 else names
        raise ValueError(f"loss {label}: beta must be > 0; got {beta!r}")
    weights = [1.0] * len(names) if loss_weights is None else list(loss_weights)
    if len(weights) != len(names):
        raise ValueError(
            f"loss_weights has {len(weights)} entries but loss_type lists {len(names)} losses {names}"
        )
    read = {key for spec in specs for key in spec.hparams}
    for key in hparams:
        if key not in read:
            readers = sorted({n for n, s in LOSSES.items() if key in s.hparams})
            hint = f"it is read by {', '.join(readers)}" if readers else "no loss reads it"
            raise ValueError(f"hparam {key!r} is not read by any selected loss {names} ({hint})")
    if hparams.get("f_divergence_type", "reverse_kl") != "reverse_kl":
        for name, spec in zip(names, specs):
            if not spec.f_divergence:
                allowed = ", ".join(n for n, s in LOSSES.items() if s.f_divergence)
                raise ValueError(
                    f"loss {name!r} does not support f_divergence_type={hparams['f_divergence_type']!r} "
                    f"(allowed with: {allowed})"
                )
    return [LossPlan(name, spec, float(w), spec.resolve(name, hparams)) for name, spec, w in zip(names, specs, weights)]


def preference_loss(
    loss_type: str | Sequence[str],
    policy: PairLogLik,
    ref: PairLogLik | None,
    *,
    beta: float,
    loss_weights: Sequence[float] | None = None,
    **hparams: Any,
) -> LossOutput:
    """Weighted sum of paired preference losses (TRL semantics: ``loss = Σ_k w_k·mean(loss_k)``, weights default 1).

    ``losses`` is the per-pair weighted sum ``[B]`` in fp32. Rewards are ``β·(policy − ref)`` when ``ref`` is given;
    otherwise the policy-only reward of the first selected loss that defines one (SimPO, CPO, ORPO, MaPO), else
    ``β·policy``. Metrics: TRL's ``rewards/chosen|rejected|accuracies|margins`` (strict ``>``),
    ``logps/chosen|rejected`` (policy, as given), the losses' extras, and ``loss/<name>`` (unweighted mean) when
    several losses are combined.
    """
    plans = plan_losses(loss_type, beta=beta, loss_weights=loss_weights, **hparams)
    return combined_loss(plans, policy, ref, beta=beta)


def combined_loss(plans: Sequence[LossPlan], policy: PairLogLik, ref: PairLogLik | None, *, beta: float) -> LossOutput:
    """:func:`preference_loss` for a loss combination validated once by :func:`plan_losses` (and the same ``beta``):
    the training step (``visalign.objective``) plans at build time, not every micro-batch."""
    if ref is None:
        for plan in plans:
            if not plan.spec.reference_free:
                raise ValueError(f"loss {plan.name!r} needs a reference: ref is None")
    elif ref.chosen.shape != policy.chosen.shape:
        raise ValueError(
            f"ref.chosen {tuple(ref.chosen.shape)} and policy.chosen {tuple(policy.chosen.shape)} differ in shape"
        )
    policy32 = policy.float()
    ref32 = None if ref is None else ref.float()

    losses = torch.zeros_like(policy32.chosen)
    metrics: dict[str, torch.Tensor] = {}
    own_rewards = None
    for plan in plans:
        terms = plan.spec.fn(policy32, ref32, beta=beta, **plan.hparams)
        losses = losses + plan.weight * terms.losses
        metrics.update(terms.metrics)
        if len(plans) > 1:
            metrics[f"loss/{plan.name}"] = terms.losses.detach().mean()
        if own_rewards is None and terms.chosen_rewards is not None:
            own_rewards = (terms.chosen_rewards, terms.rejected_rewards)

    if ref32 is not None:
        chosen_rewards = beta * (policy32.chosen - ref32.chosen).detach()
        rejected_rewards = beta * (policy32.rejected - ref32.rejected).detach()
    elif own_rewards is not None:
        chosen_rewards, rejected_rewards = own_rewards
    else:
        chosen_rewards, rejected_rewards = beta * policy32.chosen.detach(), beta * policy32.rejected.detach()

    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": policy32.chosen.detach().mean(),
        "logps/rejected": policy32.rejected.detach().mean(),
        **metrics,
    }
    return LossOutput(losses, chosen_rewards, rejected_rewards, to_floats(metrics))
