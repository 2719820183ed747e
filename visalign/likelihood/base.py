"""The likelihood-provider interface: what a model family's trainer calls to score a batch (DESIGN.md "The axes as
objects").

A provider owns everything between a collated batch and the per-sample log-likelihoods the loss core reads, and the
scale they are on (DESIGN.md "The core": scaling lives in one place, the provider). Each training step is::

    inputs = provider.prepare(batch, step)         # once per micro-batch; the policy and the reference share it
    policy = provider.pair_loglik(policy_model, inputs)            # with gradients
    ref = provider.pair_loglik(reference_model, inputs)            # under no_grad (visalign.reference), or
    ref = provider.precomputed(inputs)                             # reference: precomputed, or None (reference: none)
    metrics = provider.metrics(policy, ref)                        # extra metrics on the provider's own scale

``visalign.objective`` writes that step once for every family; ``visalign.reference`` picks the reference line.

The methods:

- ``prepare(batch, step) -> inputs``: everything both models score, built once. It may draw randomness, keyed by
  ``step`` and the batch's own indices (never the global RNG), so the policy and the reference see the same inputs and
  a resumed run draws what an uninterrupted one does. Default: the collated batch itself (token providers).
- ``pair_loglik(model, inputs) -> PairLogLik``: ONE forward of ``model`` over ``[chosen; rejected]``; ``[B]`` fp32
  scores per side, token counts where the provider scores tokens, ``nll_scale`` where its supervised loss is not
  ``-loglik``. An unpaired provider (KTO) returns ``UnpairedLogLik`` from the same method, so the objective and the
  reference call every provider alike.
- ``precomputed(inputs) -> PairLogLik``: the reference's log-likelihoods read from columns the trainer attached to
  the dataset beforehand (``visalign.data.ref_cache``), no forward; ``None`` (the default) where the family cannot
  precompute (a fresh noise draw per step, an unpaired KL point).
- ``metrics(policy, ref) -> {name: scalar tensor}``: optional metrics on the provider's scale (the diffusion ELBO's
  ``mse/*``); default none.

Implementations: ``likelihood.text.TokenLogProbs`` (causal LMs: summed, mean or γ-weighted token log-probs),
``likelihood.text.UnpairedTokenLogProbs`` (KTO), ``likelihood.vlm.VLMTokenLogProbs`` (images as extra forward inputs)
and ``likelihood.diffusion.DiffusionELBO`` (ε/v-prediction ELBO surrogate with keyed noise). The next two fit as they
are:

- a flow-matching ELBO (SD3, FLUX; reference ``flow-and-online.md`` §2): ``prepare`` draws keyed t and ε per pair and
  builds ``x_t = (1 - t)·x0 + t·ε`` and the target velocity ``u = ε - x0`` (with FLUX's packed latents and image ids);
  ``pair_loglik`` is ``-0.5 · mean (v_θ(x_t, c, t) - u)^2``; ``metrics`` the velocity MSEs; ``precomputed`` ``None``.
- a sampler-transition log-prob (SPO, GRPO; reference ``diffusion-methods.md`` §6, ``flow-and-online.md`` §3): the
  batch carries stored transitions ``x_t -> x_{t-1}`` (latents, timestep, conditioning) of the sampler run that
  produced the pair; ``prepare`` moves them to the device, ``pair_loglik`` is the Gaussian log-density of
  ``x_{t-1}`` under the policy's sampler step (DDIM with η > 0, or an SDE step), mean over dims in fp32;
  ``precomputed`` reads the sampling policy's stored log-probs when the data holds them (the ratio's denominator),
  else ``None``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from visalign.losses.types import PairLogLik, UnpairedLogLik


class LikelihoodProvider(ABC):
    """Batch -> inputs -> per-sample log-likelihoods of a model family (module docstring)."""

    #: Reads the reference's log-likelihoods from ``inputs`` (``reference: precomputed``); ``None`` where the family
    #: cannot precompute. A subclass that can defines it as a method ``precomputed(self, inputs) -> PairLogLik``.
    precomputed: ClassVar[Callable[[Any], PairLogLik] | None] = None

    def prepare(self, batch: Mapping[str, Any], step: int) -> Any:
        """The inputs both models score at optimizer step ``step``; default: ``batch`` as it is."""
        return batch

    @abstractmethod
    def pair_loglik(self, model: torch.nn.Module, inputs: Any) -> PairLogLik | UnpairedLogLik:
        """``model``'s log-likelihoods of ``inputs`` (one forward; gradients flow unless the caller stops them)."""

    def metrics(self, policy: PairLogLik, ref: PairLogLik | None) -> Mapping[str, torch.Tensor]:
        """Extra metrics on the provider's own scale (scalar tensors); default: none."""
        return {}
