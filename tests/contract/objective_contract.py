"""Behaviour contract of the preference objective (``visalign.objective``), one mixin applied to every likelihood
family (``test_objective.py``), as ``scorer_contract.py`` does for scorers.

For each reference strategy the family supports, the objective's loss, metrics and policy gradients equal the step
written out by hand with the family's likelihood provider: the policy log-likelihood (``provider.pair_loglik``) with
gradients; the reference's under ``torch.no_grad()`` in eval mode on the model the strategy stands for (the policy as
it was when the reference was made for ``frozen_copy`` and ``ref_adapter``, the model without its adapter for
``disable_adapter``, the batch's columns holding the former for ``precomputed``, nothing for ``none``); then the loss
core (``preference_loss`` / ``kto_loss``) and the provider's own metrics.

A family subclass provides ``STRATEGIES`` and the hooks below; ``LOSS_TYPE`` and ``REFERENCE_FREE_LOSS`` (for
``none``) pick the losses, ``BETA`` their β.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from visalign.likelihood.base import LikelihoodProvider
from visalign.objective import make_objective
from visalign.reference import make_reference
from visalign.trainers.config import PreferenceConfig

#: Strategies whose policy carries a LoRA adapter.
ADAPTER_STRATEGIES = ("disable_adapter", "ref_adapter")


def perturb(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Add seeded noise to every trainable parameter (so policy, reference and base model differ)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(scale * torch.randn(param.shape, generator=generator))


def by_hand(fn, module: torch.nn.Module, batch: Any) -> Any:
    """``fn(module, batch)`` as a reference forward is written by hand: no grad, eval mode, mode restored."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return fn(module, batch)
    finally:
        module.train(was_training)


class ObjectiveContract:
    """Mixin: the objective equals the hand-written step for every strategy in ``STRATEGIES``."""

    STRATEGIES: tuple[str, ...] = ()
    LOSS_TYPE: str | list[str] = "sigmoid"
    REFERENCE_FREE_LOSS: str = "simpo"
    BETA: float = 0.1
    SCALE: float = 0.05
    CONFIG: type[PreferenceConfig] = PreferenceConfig

    # ------------------------------------------------------------------ family hooks
    def base_model(self) -> torch.nn.Module:
        """A fresh, deterministic model (the same weights on every call)."""
        raise NotImplementedError

    def add_adapter(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` with a LoRA adapter, only the adapter trainable."""
        raise NotImplementedError

    def likelihood(self) -> LikelihoodProvider:
        """The family's likelihood provider."""
        raise NotImplementedError

    def batch(self) -> Any:
        """Fixed inputs of the provider's ``pair_loglik`` (what its ``prepare`` returns)."""
        raise NotImplementedError

    def with_columns(self, batch: Any, ref: Any) -> Any:
        """``batch`` carrying ``ref`` as precomputed reference columns (families with ``precomputed``)."""
        raise NotImplementedError

    def expected_loss(self, loss_type, policy: Any, ref: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss core on hand-computed log-likelihoods."""
        from visalign.losses import preference_loss

        out = preference_loss(loss_type, policy, ref, beta=self.BETA)
        return out.loss, out.metrics

    def objective_kwargs(self) -> dict[str, Any]:
        """Further arguments of ``make_objective`` (KTO's ``reduce``)."""
        return {}

    def scores(self, loglik: Any) -> torch.Tensor:
        """The per-sample scores of a log-likelihood output."""
        return torch.cat([loglik.chosen, loglik.rejected])

    # ------------------------------------------------------------------ the contract
    def _policy(self, strategy: str) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(policy, the model the reference stands for), with the policy moved after the reference was made."""
        base = self.base_model()
        policy = self.add_adapter(copy.deepcopy(base)) if strategy in ADAPTER_STRATEGIES else base
        perturb(policy, seed=1, scale=self.SCALE)
        stands_for = base if strategy == "disable_adapter" else copy.deepcopy(policy)
        return policy, stands_for

    def test_loss_and_gradients_equal_the_step_written_by_hand(self):
        for strategy in self.STRATEGIES:
            loss_type = self.REFERENCE_FREE_LOSS if strategy == "none" else self.LOSS_TYPE
            config = self.CONFIG(loss_type=loss_type, beta=self.BETA, reference=strategy)
            policy, stands_for = self._policy(strategy)
            likelihood, batch = self.likelihood(), self.batch()
            loglik = likelihood.pair_loglik
            if strategy == "precomputed":
                batch = self.with_columns(batch, by_hand(loglik, stands_for, batch))
            reference = make_reference(strategy, policy)
            objective = make_objective(config, reference=reference, likelihood=likelihood, **self.objective_kwargs())
            perturb(policy, seed=2, scale=self.SCALE)  # the policy moves on; the reference must not

            loss, metrics = objective(policy, batch)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
            policy.zero_grad(set_to_none=True)

            ref = None if strategy == "none" else by_hand(loglik, stands_for, batch)
            expected, expected_metrics = self.expected_loss(loss_type, loglik(policy, batch), ref)
            expected.backward()
            assert grads and grads.keys() == {n for n, p in policy.named_parameters() if p.grad is not None}
            torch.testing.assert_close(loss, expected, msg=f"{strategy}: loss")
            assert metrics == pytest.approx(expected_metrics, rel=1e-6, abs=1e-7), strategy
            for name, grad in grads.items():
                torch.testing.assert_close(grad, policy.get_parameter(name).grad, msg=f"{strategy}: grad {name}")
            if strategy != "none":  # the reference is another model than the policy: the check has teeth
                assert not torch.equal(self.scores(loglik(policy, batch)), self.scores(ref)), strategy
