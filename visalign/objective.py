"""The preference objective: the one place a training step's loss is written (DESIGN.md "The axes as objects").

Every trainer's step is ``loss, metrics = objective(model, likelihood.prepare(batch, step))``: the family's likelihood
provider (``visalign.likelihood.base``) scores the prepared inputs under the policy (with gradients), the
:class:`~visalign.reference.Reference` gives the reference's scores (a no-grad forward of the same provider, the
provider's reading of the batch's precomputed columns, or nothing), and the loss core turns both into the loss and
TRL-named metrics, with the provider's own extra metrics. The loss configuration is validated and planned once, when
the objective is built (``make_objective``).

- :class:`PairedObjective`: preference pairs, any combination of ``visalign.losses.LOSSES`` (``combined_loss``).
- :class:`UnpairedObjective`: KTO (Ethayarajh et al. 2024, Eq. 7) on unpaired rows, with the KL reference point z0
  averaged over processes as TRL's ``KTOTrainer`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from visalign.likelihood.base import LikelihoodProvider
from visalign.losses import LOSSES, LossPlan, combined_loss, kto_loss, kto_reference_point, plan_losses
from visalign.losses.types import to_floats
from visalign.reference import Reference

if TYPE_CHECKING:
    from visalign.trainers.config import PreferenceConfig


class PairedObjective:
    """Policy log-likelihood -> reference -> ``combined_loss`` over a loss plan built once.

    Args:
        plans: the validated loss combination (``plan_losses``).
        beta: β of every loss in ``plans``.
        reference: the reference strategy bound to the policy.
        likelihood: the family's provider, run on the policy and, for a forward strategy, on the reference; its
            ``metrics`` join the loss core's.
    """

    def __init__(self, plans: Sequence[LossPlan], *, beta: float, reference: Reference,
                 likelihood: LikelihoodProvider) -> None:
        self.plans, self.beta, self.reference, self.likelihood = list(plans), beta, reference, likelihood

    def __call__(self, model: torch.nn.Module, inputs: Any, *, weights: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """``(mean per-pair loss, metrics)`` of the provider's prepared ``inputs``; ``weights`` ``[B]`` scale each
        pair's loss (a dataset weight column)."""
        policy = self.likelihood.pair_loglik(model, inputs)
        ref = self.reference.loglik(model, inputs, self.likelihood)
        out = combined_loss(self.plans, policy, ref, beta=self.beta)
        losses = out.losses if weights is None else out.losses * weights.to(out.losses.device)
        return losses.mean(), {**out.metrics, **to_floats(self.likelihood.metrics(policy, ref))}


class UnpairedObjective:
    """KTO: policy ``UnpairedLogLik`` -> reference -> ``kto_loss`` with z0 = ``reduce(kto_reference_point(...))``.

    Args:
        beta: KTO's β.
        hparams: the resolved KTO hparams (``desirable_weight``, ``undesirable_weight``).
        reference: a reference strategy with a forward (z0 needs the reference on mismatched pairs).
        likelihood: a provider whose ``pair_loglik`` gives an ``UnpairedLogLik`` with ``kl_logps``.
        reduce: the mean over processes of the local z0 estimate (``accelerator.reduce(..., "mean")``).
    """

    def __init__(self, *, beta: float, hparams: Mapping[str, Any], reference: Reference,
                 likelihood: LikelihoodProvider, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.beta, self.hparams, self.reference = beta, dict(hparams), reference
        self.likelihood, self.reduce = likelihood, reduce

    def __call__(self, model: torch.nn.Module, inputs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        policy = self.likelihood.pair_loglik(model, inputs)
        ref = self.reference.loglik(model, inputs, self.likelihood)
        z0 = self.reduce(kto_reference_point(policy, ref))
        out = kto_loss(policy, ref, beta=self.beta, z0=z0, **self.hparams)
        return out.loss, out.metrics


def make_objective(
    config: PreferenceConfig, *, reference: Reference, likelihood: LikelihoodProvider,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> PairedObjective | UnpairedObjective:
    """The objective ``config`` (a validated ``PreferenceConfig``) describes: :class:`UnpairedObjective` for an
    unpaired loss (KTO; ``reduce`` is required), else :class:`PairedObjective` with the loss plan built here. A
    ``precomputed`` reference needs a provider that reads precomputed columns."""
    if reference.reads_batch and likelihood.precomputed is None:
        raise ValueError(f"reference 'precomputed': {type(likelihood).__name__} cannot read a precomputed reference; "
                         "use a reference strategy with a forward")
    names = config.loss_types
    if not LOSSES[names[0]].paired:
        if reduce is None:
            raise ValueError(f"loss {names[0]!r} (unpaired) needs reduce=, the mean of its reference point over "
                             "processes")
        hparams = LOSSES[names[0]].resolve(names[0], config.loss_hparams)
        return UnpairedObjective(beta=config.beta, hparams=hparams, reference=reference, likelihood=likelihood,
                                 reduce=reduce)
    plans = plan_losses(config.loss_type, beta=config.beta, loss_weights=config.loss_weights, **config.loss_hparams)
    return PairedObjective(plans, beta=config.beta, reference=reference, likelihood=likelihood)
