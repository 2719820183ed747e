"""Paired losses that need no reference model: SFT term, SimPO, CPO, ORPO (text) and MaPO (diffusion).

Every function takes fp32 ``PairLogLik`` inputs (``preference_loss`` casts them) and its hyper-parameters as required
keywords (defaults live once, in ``registry.LOSSES``); ``ref`` is accepted and ignored so all registered losses share
one signature. Each defines its own policy-only rewards, used when no reference is given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from visalign.losses.dpo_family import smoothed_sigmoid
from visalign.losses.types import LossTerms, PairLogLik

# Below this |x| the MaPO link f(x) = x/(eˣ − 1) is evaluated by its Taylor series (error ~ x⁶/30240 < 1e-16).
_SERIES_RADIUS = 1e-2


def chosen_nll(policy: PairLogLik) -> torch.Tensor:
    """The supervised loss of the chosen samples over the whole batch: ``−nll_scale · Σ chosen / Σ count``.

    Text: the cross-entropy TRL averages over every chosen token (DPO ``sft``, CPO and ORPO ``nll_loss``). Diffusion
    (``nll_scale`` 2): the mean denoising MSE of the chosen images, Salesforce Diffusion-DPO's ``--sft``
    (``F.mse_loss(..., "mean")``) and MaPO's ``mean(L_w)`` (reference ``diffusion-methods.md`` §3.1, §5.1).
    """
    count, _ = policy.counts
    return -policy.nll_scale * policy.chosen.sum() / count.sum().clamp(min=1.0)


def _mean_token_logps(policy: PairLogLik) -> tuple[torch.Tensor, torch.Tensor]:
    c, r = policy.counts
    return policy.chosen / c.clamp(min=1.0), policy.rejected / r.clamp(min=1.0)


def sft(policy, ref, *, beta) -> LossTerms:
    """SFT / RPO term (Pang et al. 2024, "Iterative Reasoning Preference Optimization", the NLL term):
    the batch token-mean NLL of the chosen completions, broadcast to every pair (TRL's ``sft`` loss type); on
    diffusion the mean denoising MSE of the chosen images (:func:`chosen_nll`)."""
    nll = chosen_nll(policy)
    return LossTerms(nll.expand_as(policy.chosen), metrics={"nll_loss": nll.detach()})


def simpo(policy, ref, *, beta, simpo_gamma, label_smoothing) -> LossTerms:
    """SimPO (Meng et al. 2024, Eq. 6): ``−logσ(β·ā_w − β·ā_l − γ)`` on mean token log-probs ``ā``, with optional
    label smoothing ε as TRL's CPOTrainer. Rewards ``β·ā``.

    Differs from TRL's ``CPOTrainer(loss_type="simpo")``, which adds ``cpo_alpha·NLL`` (default 1.0) on top: here SimPO
    is the paper's pure loss; add ``"sft"`` to the loss list for CPO-SimPO.
    """
    a_w, a_l = _mean_token_logps(policy)
    losses = smoothed_sigmoid(beta * (a_w - a_l) - simpo_gamma, label_smoothing)
    return LossTerms(losses, beta * a_w.detach(), beta * a_l.detach())


def cpo(policy, ref, *, beta, cpo_alpha, label_smoothing) -> LossTerms:
    """CPO (Xu et al. 2024, "Contrastive Preference Optimization", Eq. 3 plus the NLL regulariser):
    ``−(1−ε)logσ(β(logπ_w − logπ_l)) − ε·logσ(−…) + cpo_alpha·NLL(chosen)`` on summed log-probs. Rewards ``β·logπ``."""
    losses = smoothed_sigmoid(beta * (policy.chosen - policy.rejected), label_smoothing)
    nll = chosen_nll(policy)
    return LossTerms(
        losses + cpo_alpha * nll, beta * policy.chosen.detach(), beta * policy.rejected.detach(),
        metrics={"nll_loss": nll.detach()},
    )


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """``log(1 − eᵃ)`` for ``a ≤ 0`` without cancellation (Mächler 2012): ``log(−expm1(a))`` for ``a > −ln 2``,
    ``log1p(−eᵃ)`` below."""
    near_zero = a > -math.log(2.0)
    a_near = torch.where(near_zero, a, torch.full_like(a, -1.0))
    a_far = torch.where(near_zero, torch.full_like(a, -1.0), a)
    return torch.where(near_zero, torch.log(-torch.expm1(a_near)), torch.log1p(-torch.exp(a_far)))


def orpo(policy, ref, *, beta) -> LossTerms:
    """ORPO (Hong et al. 2024, derived from Eqs. 4 and 7; TRL's ORPOTrainer): ``NLL(chosen) − β·logσ(log_odds)``,
    where on mean token log-probs ``a``: ``log_odds = (a_w − a_l) − (log(1 − e^{a_w}) − log(1 − e^{a_l}))``.
    β plays the paper's λ. Rewards ``β·a``. Mean token log-probs must be < 0 (a probability of 1 has infinite odds)."""
    a_w, a_l = _mean_token_logps(policy)
    log_odds = (a_w - a_l) - (log1mexp(a_w) - log1mexp(a_l))
    ratio = F.logsigmoid(log_odds)
    nll = chosen_nll(policy)
    return LossTerms(
        nll - beta * ratio, beta * a_w.detach(), beta * a_l.detach(),
        metrics={"nll_loss": nll.detach(), "log_odds_ratio": ratio.detach().mean(),
                 "log_odds_chosen": log_odds.detach().mean()},
    )


def mapo_link(x: torch.Tensor) -> torch.Tensor:
    """MaPO's bounded link ``f(x) = x / (eˣ − 1)`` (decreasing, ``f(0) = 1``), stable for every real ``x``.

    Series ``1 − x/2 + x²/12 − x⁴/720`` near 0; ``x·e^{−x} / (1 − e^{−x})`` for large positive ``x`` (no overflow);
    the unselected branches are fed safe inputs so gradients stay finite.
    """
    small = x.abs() < _SERIES_RADIUS
    positive = x > 0
    ones = torch.ones_like(x)
    x_pos = torch.where(small | ~positive, ones, x)
    x_neg = torch.where(small | positive, -ones, x)
    far = torch.where(positive, x_pos * torch.exp(-x_pos) / -torch.expm1(-x_pos), x_neg / torch.expm1(x_neg))
    x2 = x * x
    series = 1.0 - x / 2.0 + x2 / 12.0 - x2 * x2 / 720.0
    return torch.where(small, series, far)


def mapo(policy, ref, *, beta, mapo_snr, mapo_timesteps) -> LossTerms:
    """MaPO (Hong et al. 2024, "Margin-aware Preference Optimization", code ``utils.compute_loss``), diffusion only.

    With the per-sample MSE ``L = −2·loglik`` (the inverse of the diffusion ELBO surrogate ``−½·MSE``) and
    ``s = mapo_snr``, ``T = mapo_timesteps``: ``mean(L_w) − β·mean(logσ(T·[f(s·L_w) − f(s·L_l)]))``, β = β_mapo.
    Per pair: ``L_w − β·logσ(T·margin)``. Rewards ``T·f(s·L)`` so that ``rewards/margins`` is the logit ``T·margin``,
    positive iff ``L_w < L_l``.
    """
    mse_w, mse_l = -2.0 * policy.chosen, -2.0 * policy.rejected
    score_w, score_l = mapo_link(mapo_snr * mse_w), mapo_link(mapo_snr * mse_l)
    ratio = F.logsigmoid(mapo_timesteps * (score_w - score_l))
    return LossTerms(
        mse_w - beta * ratio, mapo_timesteps * score_w.detach(), mapo_timesteps * score_l.detach(),
        metrics={"mapo/win_score": score_w.detach().mean(), "mapo/lose_score": score_l.detach().mean(),
                 "mapo/ratio": ratio.detach().mean(), "mse/chosen": mse_w.detach().mean(),
                 "mse/rejected": mse_l.detach().mean()},
    )
