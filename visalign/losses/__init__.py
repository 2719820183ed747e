"""The shared preference-loss core: pure tensor maths over per-sample log-likelihoods, no model code.

Paired data goes through ``preference_loss(loss_type, policy, ref, beta=..., loss_weights=..., **hparams)``; unpaired
(KTO) data through ``kto_loss``; a training step plans the combination once (``plan_losses``) and runs it with
``combined_loss`` (``visalign.objective``). ``LOSSES`` lists every loss with its hparams, reference-freeness and a
one-line doc.
"""

from visalign.losses.kto import kto_loss, kto_reference_point
from visalign.losses.registry import (
    LIKELIHOODS,
    LOSSES,
    LossPlan,
    LossSpec,
    check_family,
    combined_loss,
    needs_reference,
    plan_losses,
    preference_loss,
    runnable_losses,
)
from visalign.losses.types import LossOutput, LossTerms, PairLogLik, UnpairedLogLik

__all__ = [
    "LIKELIHOODS",
    "LOSSES",
    "LossOutput",
    "LossPlan",
    "LossSpec",
    "LossTerms",
    "PairLogLik",
    "UnpairedLogLik",
    "check_family",
    "combined_loss",
    "kto_loss",
    "kto_reference_point",
    "needs_reference",
    "plan_losses",
    "preference_loss",
    "runnable_losses",
]
