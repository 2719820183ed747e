"""KTO: the unpaired preference loss (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization", Eq. 7; TRL 1.16 ``KTOTrainer``, loss_type ``kto``)."""

from __future__ import annotations

import torch

from visalign.losses.types import LossOutput, UnpairedLogLik, to_floats


def kto_reference_point(policy: UnpairedLogLik, ref: UnpairedLogLik) -> torch.Tensor:
    """The local batch KL estimate ``mean(kl_logps_policy − kl_logps_ref)``, detached and unclamped.

    Under DDP, all-reduce (mean) this across ranks and pass it to ``kto_loss(z0=...)``, as TRL does.
    """
    if policy.kl_logps is None or ref.kl_logps is None:
        raise ValueError(
            "kto: UnpairedLogLik.kl_logps is required on both policy and ref to estimate the reference point z0 "
            "(or pass z0= explicitly)"
        )
    return (policy.kl_logps.float() - ref.kl_logps.float()).mean().detach()


def kto_loss(
    policy: UnpairedLogLik,
    ref: UnpairedLogLik,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    z0: torch.Tensor | float | None = None,
) -> LossOutput:
    """KTO, Eq. 7: with ``r = logπθ(y) − logπref(y)`` and ``z0 = max(0, KL estimate)`` (detached),
    desirable samples ``λ_D·(1 − σ(β(r − z0)))``, undesirable ``λ_U·(1 − σ(β(z0 − r)))``.

    ``z0=None`` estimates it from ``kl_logps`` of this batch (``kto_reference_point``); a given ``z0`` (e.g. the
    all-reduced estimate) is detached and clamped ≥ 0 too. ``losses`` keeps the input order; ``chosen_rewards`` and
    ``rejected_rewards`` hold ``β·r`` of the desirable and undesirable samples. Metrics under TRL's KTO names:
    ``kl``, ``rewards/chosen|rejected|margins``, ``logps/chosen|rejected`` (means over each side, present when that
    side is non-empty).
    """
    if beta <= 0:
        raise ValueError(f"kto: beta must be > 0; got {beta}")
    for key, weight in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
        if weight < 0:
            raise ValueError(f"kto: {key} must be >= 0; got {weight}")
    if ref.logps.shape != policy.logps.shape:
        raise ValueError(
            f"kto: policy.logps {tuple(policy.logps.shape)} and ref.logps {tuple(ref.logps.shape)} differ in shape"
        )
    if z0 is None:
        z0 = kto_reference_point(policy, ref)
    logps = policy.logps.float()
    z0 = torch.as_tensor(z0, dtype=torch.float32, device=logps.device).detach().clamp(min=0.0)

    logratio = logps - ref.logps.float()
    desirable = policy.desirable.to(logps.device)
    losses = torch.where(
        desirable,
        desirable_weight * (1.0 - torch.sigmoid(beta * (logratio - z0))),
        undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - logratio))),
    )
    rewards = beta * logratio.detach()
    chosen_rewards, rejected_rewards = rewards[desirable], rewards[~desirable]

    metrics = {"kl": z0}
    if chosen_rewards.numel():
        metrics["rewards/chosen"] = chosen_rewards.mean()
        metrics["logps/chosen"] = logps.detach()[desirable].mean()
    if rejected_rewards.numel():
        metrics["rewards/rejected"] = rejected_rewards.mean()
        metrics["logps/rejected"] = logps.detach()[~desirable].mean()
    if chosen_rewards.numel() and rejected_rewards.numel():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return LossOutput(losses, chosen_rewards, rejected_rewards, to_floats(metrics))
