"""The preference objective: the one place a training step's loss is written (DESIGN.md "The axes as objects").

Every trainer's step is ``loss, metrics = objective(model, batch)``: the family's likelihood function scores the batch
under the policy (with gradients), the :class:`~visalign.reference.Reference` gives the reference's scores (a no-grad
forward, the batch's precomputed columns, or nothing), and the loss core turns both into the loss and TRL-named
metrics. The loss configuration is validated and planned once, when the objective is built (``make_objective``).

- :class:`PairedObjective`: preference pairs, any combination of ``visalign.losses.LOSSES`` (``combined_loss``).
- :class:`UnpairedObjective`: KTO (Ethayarajh et al. 2024, Eq. 7) on unpaired rows, with the KL reference point z0
  averaged over processes as TRL's ``KTOTrainer`` does.

A likelihood function is ``fn(model, batch) -> PairLogLik`` (``UnpairedLogLik`` for KTO); ``batch`` is whatever the
family prepared for it (a collated batch for text and VLMs, the noised latents and conditioning for diffusion).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from visalign.losses import LOSSES, LossPlan, PairLogLik, combined_loss, kto_loss, kto_reference_point, plan_losses
from visalign.losses.types import to_floats
from visalign.reference import Reference

if TYPE_CHECKING:
    from visalign.trainers.config import PreferenceConfig

LogLik = Callable[[torch.nn.Module, Any], Any]
#: ``(policy, ref or None) -> {metric name: scalar tensor}``: metrics the likelihood defines on its own scale.
LogLikMetrics = Callable[[PairLogLik, PairLogLik | None], Mapping[str, torch.Tensor]]


class PairedObjective:
    """Policy log-likelihood -> reference -> ``combined_loss`` over a loss plan built once.

    Args:
        plans: the validated loss combination (``plan_losses``).
        beta: β of every loss in ``plans``.
        reference: the reference strategy bound to the policy.
        loglik: the family's likelihood function, run on the policy and, for a forward strategy, on the reference.
        loglik_metrics: optional extra metrics from the log-likelihoods (diffusion's ``mse/*``).
    """

    def __init__(self, plans: Sequence[LossPlan], *, beta: float, reference: Reference, loglik: LogLik,
                 loglik_metrics: LogLikMetrics | None = None) -> None:
        self.plans, self.beta, self.reference = list(plans), beta, reference
        self.loglik, self.loglik_metrics = loglik, loglik_metrics

    def __call__(self, model: torch.nn.Module, batch: Any, *, weights: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """``(mean per-pair loss, metrics)``; ``weights`` ``[B]`` scale each pair's loss (a dataset weight column)."""
        policy = self.loglik(model, batch)
        ref = self.reference.loglik(model, batch, self.loglik)
        out = combined_loss(self.plans, policy, ref, beta=self.beta)
        losses = out.losses if weights is None else out.losses * weights.to(out.losses.device)
        metrics = out.metrics
        if self.loglik_metrics is not None:
            metrics = {**metrics, **to_floats(self.loglik_metrics(policy, ref))}
        return losses.mean(), metrics


class UnpairedObjective:
    """KTO: policy ``UnpairedLogLik`` -> reference -> ``kto_loss`` with z0 = ``reduce(kto_reference_point(...))``.

    Args:
        beta: KTO's β.
        hparams: the resolved KTO hparams (``desirable_weight``, ``undesirable_weight``).
        reference: a reference strategy with a forward (z0 needs the reference on mismatched pairs).
        loglik: ``(model, batch) -> UnpairedLogLik`` with ``kl_logps``.
        reduce: the mean over processes of the local z0 estimate (``accelerator.reduce(..., "mean")``).
    """

    def __init__(self, *, beta: float, hparams: Mapping[str, Any], reference: Reference, loglik: LogLik,
                 reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.beta, self.hparams, self.reference = beta, dict(hparams), reference
        self.loglik, self.reduce = loglik, reduce

    def __call__(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        policy = self.loglik(model, batch)
        ref = self.reference.loglik(model, batch, self.loglik)
        z0 = self.reduce(kto_reference_point(policy, ref))
        out = kto_loss(policy, ref, beta=self.beta, z0=z0, **self.hparams)
        return out.loss, out.metrics


def make_objective(
    config: PreferenceConfig, *, reference: Reference, loglik: LogLik,
    loglik_metrics: LogLikMetrics | None = None, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> PairedObjective | UnpairedObjective:
    """The objective ``config`` (a validated ``PreferenceConfig``) describes: :class:`UnpairedObjective` for an
    unpaired loss (KTO; ``reduce`` is required), else :class:`PairedObjective` with the loss plan built here."""
    names = config.loss_types
    if not LOSSES[names[0]].paired:
        if reduce is None:
            raise ValueError(f"loss {names[0]!r} (unpaired) needs reduce=, the mean of its reference point over "
                             "processes")
        hparams = LOSSES[names[0]].resolve(names[0], config.loss_hparams)
        return UnpairedObjective(beta=config.beta, hparams=hparams, reference=reference, loglik=loglik, reduce=reduce)
    plans = plan_losses(config.loss_type, beta=config.beta, loss_weights=config.loss_weights, **config.loss_hparams)
    return PairedObjective(plans, beta=config.beta, reference=reference, loglik=loglik, loglik_metrics=loglik_metrics)
