"""Paired losses that need a reference model: DPO and its TRL 1.16 variants.

Notation (TRL 1.16 ``DPOTrainer._compute_loss``): ``lc = logπθ(y_w) − logπref(y_w)``, ``lr`` the same for ``y_l``;
f-scores ``sc = f'(lc)``, ``sr = f'(lr)`` (equal to ``lc``, ``lr`` for reverse KL, see ``divergences``);
``Δ = sc − sr``. Every function takes fp32 ``PairLogLik`` inputs (``preference_loss`` casts them) and its
hyper-parameters as required keywords (defaults live once, in ``registry.LOSSES``), and returns per-pair losses
``[B]``; their rewards are the reference log-ratios, computed once by ``preference_loss``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from visalign.losses.divergences import f_divergence_score
from visalign.losses.types import LossTerms, PairLogLik


def _logratios(policy: PairLogLik, ref: PairLogLik) -> tuple[torch.Tensor, torch.Tensor]:
    return policy.chosen - ref.chosen, policy.rejected - ref.rejected


def _score_delta(
    policy: PairLogLik, ref: PairLogLik, f_divergence_type: str, f_alpha_divergence_coef: float,
    length_normalised: bool = False,
) -> torch.Tensor:
    """``Δ = f'(lc) − f'(lr)``; with ``length_normalised`` each score is first divided by its count (≥ 1)."""
    lc, lr = _logratios(policy, ref)
    sc = f_divergence_score(lc, f_divergence_type, f_alpha_divergence_coef)
    sr = f_divergence_score(lr, f_divergence_type, f_alpha_divergence_coef)
    if length_normalised:
        c, r = policy.counts
        sc, sr = sc / c.clamp(min=1.0), sr / r.clamp(min=1.0)
    return sc - sr


def smoothed_sigmoid(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Conservative logistic loss ``−(1−ε)·logσ(z) − ε·logσ(−z)`` (cDPO, Mitchell 2023; ε = 0 gives DPO)."""
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def sigmoid(policy, ref, *, beta, f_divergence_type, f_alpha_divergence_coef) -> LossTerms:
    """DPO (Rafailov et al. 2023, Eq. 7): ``−logσ(βΔ)``."""
    delta = _score_delta(policy, ref, f_divergence_type, f_alpha_divergence_coef)
    return LossTerms(-F.logsigmoid(beta * delta))


def cdpo(policy, ref, *, beta, label_smoothing, f_divergence_type, f_alpha_divergence_coef) -> LossTerms:
    """cDPO (Mitchell 2023, "A note on DPO with noisy preferences"): ``−(1−ε)logσ(βΔ) − ε·logσ(−βΔ)``.

    This is TRL ≤ 0.28's ``sigmoid`` with ``label_smoothing``; TRL 1.x dropped the smoothing from ``sigmoid``.
    """
    delta = _score_delta(policy, ref, f_divergence_type, f_alpha_divergence_coef)
    return LossTerms(smoothed_sigmoid(beta * delta, label_smoothing))


def hinge(policy, ref, *, beta, f_divergence_type, f_alpha_divergence_coef) -> LossTerms:
    """SLiC-HF hinge (Zhao et al. 2023; RSO, Liu et al. 2024): ``max(0, 1 − βΔ)``."""
    delta = _score_delta(policy, ref, f_divergence_type, f_alpha_divergence_coef)
    return LossTerms(torch.relu(1.0 - beta * delta))


def ipo(policy, ref, *, beta, f_divergence_type, f_alpha_divergence_coef) -> LossTerms:
    """IPO (Azar et al. 2023, Eq. 17, β = τ): ``(Δ̄ − 1/(2β))²``, length-normalised ``Δ̄ = sc/|y_w| − sr/|y_l|``.

    The per-token normalisation is TRL's (confirmed with the IPO authors); counts of ``None`` (diffusion) give the
    paper's plain form.
    """
    delta = _score_delta(policy, ref, f_divergence_type, f_alpha_divergence_coef, length_normalised=True)
    return LossTerms((delta - 1.0 / (2.0 * beta)) ** 2)


def robust(policy, ref, *, beta, label_smoothing, f_divergence_type, f_alpha_divergence_coef) -> LossTerms:
    """rDPO (Chowdhury et al. 2024, "Provably Robust DPO"): ``[−(1−ε)logσ(βΔ) + ε·logσ(−βΔ)] / (1 − 2ε)``,
    unbiased under the label-flip rate ε."""
    delta = _score_delta(policy, ref, f_divergence_type, f_alpha_divergence_coef)
    eps = label_smoothing
    losses = (-(1.0 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1.0 - 2.0 * eps)
    return LossTerms(losses)


def exo_pair(policy, ref, *, beta, label_smoothing, f_divergence_type, f_alpha_divergence_coef) -> LossTerms:
    """EXO-pref (Ji et al. 2024, Eq. 16, K = 2): ``KL(q ‖ [1−ε, ε])`` with ``q = (σ(βΔ), σ(−βΔ))``.

    Written out: ``q_w(logq_w − log(1−ε)) + q_l(logq_l − log ε)``. Registered default ε = 1e-3 is the paper's
    suggestion (TRL's default of 0 raises).
    """
    delta = _score_delta(policy, ref, f_divergence_type, f_alpha_divergence_coef)
    z = beta * delta
    eps = torch.tensor(label_smoothing, dtype=z.dtype, device=z.device)
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - torch.log(eps)
    )
    return LossTerms(losses)


def nca_pair(policy, ref, *, beta) -> LossTerms:
    """NCA (Chen et al. 2024, "Noise Contrastive Alignment", pairwise K = 2 form):
    ``−logσ(β·lc) − ½logσ(−β·lc) − ½logσ(−β·lr)``."""
    lc, lr = _logratios(policy, ref)
    losses = -F.logsigmoid(beta * lc) - 0.5 * F.logsigmoid(-beta * lc) - 0.5 * F.logsigmoid(-beta * lr)
    return LossTerms(losses)


def bco_pair(policy, ref, *, beta) -> LossTerms:
    """Paired BCO (Jung et al. 2024, "Binary Classifier Optimization"; without the reward shift δ, as TRL 1.x):
    ``−logσ(β·lc) − logσ(−β·lr)``."""
    lc, lr = _logratios(policy, ref)
    return LossTerms(-F.logsigmoid(beta * lc) - F.logsigmoid(-beta * lr))


def sppo_hard(policy, ref, *, beta) -> LossTerms:
    """SPPO with hard 0/1 win probabilities (Wu et al. 2024, Eq. 4.7): ``(lc − 1/(2β))² + (lr + 1/(2β))²``."""
    lc, lr = _logratios(policy, ref)
    half = 0.5 / beta
    return LossTerms((lc - half) ** 2 + (lr + half) ** 2)


def aot(policy, ref, *, beta, label_smoothing) -> LossTerms:
    """Paired AOT (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport"):
    sort ``x = logπθ(y_w) − logπθ(y_l)`` and ``y`` (the same for the reference) over the batch, then the smoothed
    logistic loss on ``β(x_sorted − y_sorted)``. Per-"pair" entries are quantiles, not pairs."""
    x, _ = torch.sort(policy.chosen - policy.rejected, dim=0)
    y, _ = torch.sort(ref.chosen - ref.rejected, dim=0)
    return LossTerms(smoothed_sigmoid(beta * (x - y), label_smoothing))


def aot_unpaired(policy, ref, *, beta, label_smoothing) -> LossTerms:
    """Unpaired AOT (Melnyk et al. 2024; TRL's ``aot_unpaired``, formerly ``aot_pair``): sort ``lc`` and
    ``lr`` separately over the batch, then the smoothed logistic loss on ``β(lc_sorted − lr_sorted)``."""
    lc, lr = _logratios(policy, ref)
    lc_sorted, _ = torch.sort(lc, dim=0)
    lr_sorted, _ = torch.sort(lr, dim=0)
    return LossTerms(smoothed_sigmoid(beta * (lc_sorted - lr_sorted), label_smoothing))


def apo_zero(policy, ref, *, beta) -> LossTerms:
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization", Eq. 7):
    ``(1 − σ(β·lc)) + σ(β·lr)``; chosen outputs are better than the model's own."""
    lc, lr = _logratios(policy, ref)
    return LossTerms((1.0 - torch.sigmoid(beta * lc)) + torch.sigmoid(beta * lr))


def apo_down(policy, ref, *, beta) -> LossTerms:
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8): ``σ(β·lc) + (1 − σ(β(lc − lr)))``; chosen outputs are worse than
    the model's own."""
    lc, lr = _logratios(policy, ref)
    return LossTerms(torch.sigmoid(beta * lc) + (1.0 - torch.sigmoid(beta * (lc - lr))))


def discopop(policy, ref, *, beta, discopop_tau, f_divergence_type, f_alpha_divergence_coef) -> LossTerms:
    """DiscoPOP / log-ratio modulated loss (Chan Lu et al. 2024, Eq. 5): with ``z = βΔ`` and ``m = σ(z/τ)``,
    ``(1 − m)·(−logσ(z)) + m·e^{−z}``."""
    z = beta * _score_delta(policy, ref, f_divergence_type, f_alpha_divergence_coef)
    m = torch.sigmoid(z / discopop_tau)
    return LossTerms((1.0 - m) * -F.logsigmoid(z) + m * torch.exp(-z))


def sigmoid_norm(policy, ref, *, beta, f_divergence_type, f_alpha_divergence_coef) -> LossTerms:
    """Length-normalised DPO (Tülu 3, Lambert et al. 2024): ``−logσ(β(sc/|y_w| − sr/|y_l|))``."""
    delta = _score_delta(policy, ref, f_divergence_type, f_alpha_divergence_coef, length_normalised=True)
    return LossTerms(-F.logsigmoid(beta * delta))


def spo(policy, ref, *, beta, spo_ratio_clip) -> LossTerms:
    """SPO (Liang et al., CVPR 2025, arXiv 2406.04314, §3.3; the clipped ratio of D3PO) on stored sampler transitions:
    ``−logσ(β·log r_w − β·log r_l)`` with ``r = clamp(π_θ/π_ref, 1 − ε, 1 + ε)``, ε = ``spo_ratio_clip``.

    ``policy``/``ref`` are the transitions' log-probabilities (``visalign.likelihood.transition``). The clamp is
    taken on the log-ratio, ``clamp(lc, log(1 − ε), log(1 + ε))``: the same value and gradient as SPO's clamp of
    ``exp(lc)`` (no gradient once a ratio leaves [1 − ε, 1 + ε]) without overflowing ``exp`` for a large log-ratio.
    Metrics: ``spo/ratio_chosen|rejected`` (mean unclipped ratio) and ``spo/clip_fraction`` (ratios outside).
    """
    low, high = math.log1p(-spo_ratio_clip), math.log1p(spo_ratio_clip)
    lc, lr = _logratios(policy, ref)
    clipped_c, clipped_r = lc.clamp(low, high), lr.clamp(low, high)
    outside = torch.cat([(lc < low) | (lc > high), (lr < low) | (lr > high)]).float()
    return LossTerms(-F.logsigmoid(beta * (clipped_c - clipped_r)), metrics={
        "spo/ratio_chosen": lc.detach().exp().mean(), "spo/ratio_rejected": lr.detach().exp().mean(),
        "spo/clip_fraction": outside.mean()})
