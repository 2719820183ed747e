"""Behaviour every likelihood provider must have, written once and applied to each (``test_likelihood_contract.py``),
as ``scorer_contract.py`` does for scorers and ``objective_contract.py`` for the training step.

A provider (``visalign.likelihood.base.LikelihoodProvider``) turns a model and a batch of preference pairs
``[chosen; rejected]`` into a ``PairLogLik`` (DESIGN.md "The core"). The contract works on raw rows (one dict per
pair): a family subclass gives the provider and collates rows as its trainer does; the contract runs the provider as
the objective does (``loglik``: ``prepare(batch, step)`` then ``pair_loglik``), so swapping or tying the sides of a
pair is the same edit of the rows for every family (``SIDE_KEYS``).

What every provider promises:

- ``[B]`` finite fp32 ``chosen``/``rejected`` (also for a bf16 model: the maths is fp32) and its ``nll_scale``;
- swapping the sides of every pair swaps ``chosen`` and ``rejected`` (and their counts);
- a pair whose two sides are identical scores them equally (diffusion: same t and noise for both sides);
- gradients reach the model's parameters from both sides;
- the same rows give the same scores whatever the global RNG state (a noise draw comes from the batch's own seeds);
- a pair scored alone scores as it does within the batch;
- counts: the number of scored tokens where the provider scores tokens (length-normalised losses divide by it), and
  per-token log-probs, where given, sum to the sequence score; none (meaning 1) for the diffusion ELBO surrogate;
- the interface: it is a ``LikelihoodProvider``; its extra ``metrics`` are detached finite scalars, with and without
  a reference; a provider that reads a precomputed reference (``PRECOMPUTED``) reads from the columns the trainer
  attaches exactly what a live reference forward gives at step 0 (through ``visalign.reference``, as the objective
  calls it), and one that does not says so (``precomputed is None``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from visalign.likelihood.base import LikelihoodProvider
from visalign.losses.types import PairLogLik
from visalign.reference import make_reference


class LikelihoodContract:
    """Mixin: a subclass provides ``model``, ``rows``, ``provider``, ``collate`` and, for token providers,
    ``expected_counts``; for a provider that reads a precomputed reference, ``PRECOMPUTED`` and ``precomputed_rows``."""

    #: ``(chosen key, rejected key)`` pairs of a row that belong to one side each; swapped or tied together.
    SIDE_KEYS: tuple[tuple[str, str], ...] = (("chosen", "rejected"),)
    #: ``PairLogLik.nll_scale`` the provider sets (1 for tokens, 2 for the diffusion ELBO surrogate).
    NLL_SCALE: float = 1.0
    #: Whether the provider reads a precomputed reference (``reference: precomputed``).
    PRECOMPUTED: bool = False
    #: The optimizer step the inputs are prepared for.
    STEP: int = 0
    ATOL: float = 1e-5

    # ------------------------------------------------------------------ family hooks
    def model(self) -> torch.nn.Module:
        """A fresh, deterministic model (the same weights on every call), in train mode as a trainer holds it."""
        raise NotImplementedError

    def rows(self) -> list[dict[str, Any]]:
        """At least two pairs whose chosen and rejected sides differ."""
        raise NotImplementedError

    def provider(self, model: torch.nn.Module) -> LikelihoodProvider:
        """The provider as the family's trainer builds it for the policy ``model``."""
        raise NotImplementedError

    def collate(self, rows: list[dict[str, Any]]) -> Any:
        """``rows`` collated as the family's trainer does."""
        raise NotImplementedError

    def expected_counts(self, rows: list[dict[str, Any]]) -> tuple[list[float], list[float]] | None:
        """Scored units per side, worked out from the rows alone; ``None``: the provider gives no counts (1)."""
        return None

    def precomputed_rows(self, model: torch.nn.Module, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` with the reference columns the trainer attaches for ``reference: precomputed``, computed with
        ``model`` as the reference (``PRECOMPUTED`` providers only)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the provider as the objective runs it
    def loglik(self, model: torch.nn.Module, rows: list[dict[str, Any]]) -> PairLogLik:
        """Collate ``rows``, ``prepare`` them for step ``STEP``, score them with ``pair_loglik``."""
        provider = self.provider(model)
        return provider.pair_loglik(model, provider.prepare(self.collate(rows), self.STEP))

    # ------------------------------------------------------------------ row edits
    def swapped(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            row = dict(row)
            for chosen, rejected in self.SIDE_KEYS:
                row[chosen], row[rejected] = row[rejected], row[chosen]
            out.append(row)
        return out

    def tied(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each pair with its rejected side replaced by a copy of its chosen side."""
        out = []
        for row in rows:
            row = dict(row)
            for chosen, rejected in self.SIDE_KEYS:
                row[rejected] = copy.deepcopy(row[chosen])
            out.append(row)
        return out

    def _close(self, actual, expected, msg: str) -> None:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=self.ATOL, msg=msg)

    # ------------------------------------------------------------------ the contract
    def test_returns_finite_fp32_pair_loglik_of_batch_size(self):
        rows = self.rows()
        out = self.loglik(self.model(), rows)
        assert isinstance(out, PairLogLik)
        for side in (out.chosen, out.rejected):
            assert side.shape == (len(rows),) and side.dtype == torch.float32
            assert torch.isfinite(side).all()
        assert out.nll_scale == self.NLL_SCALE

    def test_fp32_scores_from_a_bf16_model(self):
        rows = self.rows()
        out = self.loglik(self.model().to(torch.bfloat16), rows)
        assert out.chosen.dtype == out.rejected.dtype == torch.float32
        assert torch.isfinite(out.chosen).all() and torch.isfinite(out.rejected).all()

    def test_swapping_the_sides_swaps_chosen_and_rejected(self):
        model, rows = self.model(), self.rows()
        with torch.no_grad():
            out, swapped = self.loglik(model, rows), self.loglik(model, self.swapped(rows))
        assert not torch.allclose(out.chosen, out.rejected), "the rows' two sides must differ for this check"
        self._close(swapped.chosen, out.rejected, "chosen after the swap")
        self._close(swapped.rejected, out.chosen, "rejected after the swap")
        if out.chosen_count is not None:
            torch.testing.assert_close(swapped.chosen_count, out.rejected_count)
            torch.testing.assert_close(swapped.rejected_count, out.chosen_count)

    def test_identical_sides_score_equally(self):
        with torch.no_grad():
            out = self.loglik(self.model(), self.tied(self.rows()))
        self._close(out.rejected, out.chosen, "a pair with two identical sides")

    def test_gradients_reach_the_model_from_both_sides(self):
        model, rows = self.model(), self.rows()
        for side in ("chosen", "rejected"):
            model.zero_grad(set_to_none=True)
            getattr(self.loglik(model, rows), side).sum().backward()
            grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
            assert grads, f"no gradient reached the model from {side}"
            assert all(torch.isfinite(g).all() for g in grads), side
            assert any(g.abs().sum() > 0 for g in grads), f"only zero gradients from {side}"

    def test_deterministic_whatever_the_global_rng(self):
        model, rows = self.model(), self.rows()
        with torch.no_grad():
            torch.manual_seed(1)
            first = self.loglik(model, rows)
            torch.manual_seed(2)
            second = self.loglik(model, rows)
        assert torch.equal(first.chosen, second.chosen) and torch.equal(first.rejected, second.rejected)

    def test_a_pair_alone_scores_as_within_the_batch(self):
        model, rows = self.model(), self.rows()
        with torch.no_grad():
            full = self.loglik(model, rows)
            for i, row in enumerate(rows):
                alone = self.loglik(model, [row])
                self._close(alone.chosen, full.chosen[i:i + 1], f"pair {i} chosen")
                self._close(alone.rejected, full.rejected[i:i + 1], f"pair {i} rejected")

    def test_counts_for_length_normalisation(self):
        rows = self.rows()
        with torch.no_grad():
            out = self.loglik(self.model(), rows)
        expected = self.expected_counts(rows)
        if expected is None:
            assert out.chosen_count is None and out.rejected_count is None
            assert all(torch.equal(c, torch.ones_like(out.chosen)) for c in out.counts)
            return
        assert out.counts[0].tolist() == expected[0] and out.counts[1].tolist() == expected[1]
        for side in ("chosen", "rejected"):
            tokens = getattr(out, f"{side}_token_logps")
            if tokens is not None:
                self._close(tokens.sum(-1), getattr(out, side), f"{side}: per-token log-probs sum to the score")
                assert ((tokens != 0).sum(-1) <= getattr(out, f"{side}_count")).all(), side

    def test_is_a_likelihood_provider(self):
        provider = self.provider(self.model())
        assert isinstance(provider, LikelihoodProvider)
        assert (provider.precomputed is not None) == self.PRECOMPUTED, "PRECOMPUTED must say what the provider reads"

    def test_extra_metrics_are_detached_finite_scalars(self):
        model, rows = self.model(), self.rows()
        provider = self.provider(model)
        policy = self.loglik(model, rows)
        for ref in (None, policy):
            for name, value in provider.metrics(policy, ref).items():
                assert value.shape == () and torch.isfinite(value) and not value.requires_grad, name

    def test_the_precomputed_reader_equals_a_live_reference_forward_at_step_0(self):
        if not self.PRECOMPUTED:
            return  # test_is_a_likelihood_provider holds that the provider reads no precomputed reference
        model, rows = self.model(), self.rows()
        provider = self.provider(model)
        live = make_reference("frozen_copy", model).loglik(model, provider.prepare(self.collate(rows), 0), provider)
        inputs = provider.prepare(self.collate(self.precomputed_rows(model, rows)), 0)
        read = make_reference("precomputed", model).loglik(model, inputs, provider)
        for side in ("chosen", "rejected"):
            self._close(getattr(read, side), getattr(live, side), f"{side}: read back vs live reference")
        for got, want in zip(read.counts, live.counts):
            torch.testing.assert_close(got, want)
