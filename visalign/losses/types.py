"""The two data types every loss speaks: per-sample log-likelihoods in, per-pair losses and TRL-named metrics out.

Scaling convention (DESIGN.md "The core"): the likelihood provider decides what a "log-likelihood" is, the losses
never rescale it. For text it is the summed completion-token log-prob; for diffusion it is the ELBO surrogate
``-0.5 * mean_{c,h,w}(target - pred)^2``. Every ``beta`` multiplies a difference of these quantities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PairLogLik:
    """Per-sample log-likelihoods of a batch of preference pairs, all ``[B]`` unless stated.

    Attributes:
        chosen: log-likelihood of each chosen sample (sum over completion tokens for text; the ELBO surrogate for
            diffusion).
        rejected: same for each rejected sample.
        chosen_count: number of scored units behind ``chosen`` (completion tokens for text, 1 for diffusion);
            needed by length-normalised losses (ipo, sigmoid_norm, simpo, cpo, orpo, sft). ``None`` means 1.
        rejected_count: same for ``rejected``.
        chosen_token_logps: optional ``[B, T]`` per-token log-probs (0 where masked) for losses that need them.
        rejected_token_logps: same for ``rejected``.
        nll_scale: the factor that turns ``−loglik / count`` into the family's own supervised loss, read by the SFT
            term (``sft``, and the NLL of ``cpo``/``orpo``): 1 for tokens (cross-entropy); 2 for the diffusion ELBO
            surrogate, whose supervised loss is the denoising MSE ``−2·loglik`` (Salesforce ``--sft``, MaPO's SFT
            term). Set by the likelihood provider, like the log-likelihood's own scale.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_count: torch.Tensor | None = None
    rejected_count: torch.Tensor | None = None
    chosen_token_logps: torch.Tensor | None = None
    rejected_token_logps: torch.Tensor | None = None
    nll_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.chosen.ndim != 1 or self.chosen.shape != self.rejected.shape:
            raise ValueError(
                f"PairLogLik.chosen and .rejected must be 1-D tensors of the same length [B]; got "
                f"{tuple(self.chosen.shape)} and {tuple(self.rejected.shape)}"
            )

    @property
    def counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(chosen_count, rejected_count)`` as float tensors, ones where not given."""
        ones = torch.ones_like(self.chosen)
        c = ones if self.chosen_count is None else self.chosen_count.to(self.chosen.dtype)
        r = ones if self.rejected_count is None else self.rejected_count.to(self.rejected.dtype)
        return c, r

    def float(self) -> "PairLogLik":
        """A copy with every tensor cast to fp32, where all loss maths happens."""

        def f(t):
            return None if t is None else t.float()

        return PairLogLik(
            f(self.chosen), f(self.rejected), f(self.chosen_count), f(self.rejected_count),
            f(self.chosen_token_logps), f(self.rejected_token_logps), self.nll_scale,
        )

    def detach(self) -> "PairLogLik":
        def d(t):
            return None if t is None else t.detach()

        return PairLogLik(
            d(self.chosen), d(self.rejected), d(self.chosen_count), d(self.rejected_count),
            d(self.chosen_token_logps), d(self.rejected_token_logps), self.nll_scale,
        )


@dataclass
class LossOutput:
    """What every loss returns.

    Attributes:
        losses: per-pair loss ``[B]`` (for weighted combinations, the weighted sum of the per-pair losses).
        chosen_rewards: implicit reward of each chosen sample ``[B]``, detached (KTO: of each desirable sample).
        rejected_rewards: same for rejected ``[B]``, detached (KTO: of each undesirable sample).
        metrics: scalar floats under TRL's names (``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``,
            ``rewards/margins``, ``logps/chosen``, ``logps/rejected``) plus loss-specific extras.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> torch.Tensor:
        """The scalar to back-propagate: the mean of ``losses``."""
        return self.losses.mean()


@dataclass
class UnpairedLogLik:
    """Per-sample log-likelihoods of an unpaired (KTO) batch, all ``[B]``.

    Attributes:
        logps: log-likelihood of each completion (same scaling as ``PairLogLik.chosen``).
        desirable: bool, True where the completion is desirable (KTO's ``label``).
        kl_logps: log-likelihood of mismatched prompt/completion pairs (completion ``i`` scored under another
            sample's prompt), used only for the KL reference point z0; ``None`` when the caller passes z0 itself.
        count: number of scored units behind ``logps`` (``None`` means 1).
        kl_count: same for ``kl_logps``.
    """

    logps: torch.Tensor
    desirable: torch.Tensor
    kl_logps: torch.Tensor | None = None
    count: torch.Tensor | None = None
    kl_count: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.logps.ndim != 1 or self.desirable.shape != self.logps.shape:
            raise ValueError(
                f"UnpairedLogLik.logps and .desirable must be 1-D tensors of the same length [B]; got "
                f"{tuple(self.logps.shape)} and {tuple(self.desirable.shape)}"
            )
        if self.desirable.dtype != torch.bool:
            raise ValueError(f"UnpairedLogLik.desirable must be a bool tensor; got {self.desirable.dtype}")
        if self.kl_logps is not None and self.kl_logps.ndim != 1:
            raise ValueError(f"UnpairedLogLik.kl_logps must be 1-D; got shape {tuple(self.kl_logps.shape)}")


@dataclass
class LossTerms:
    """What one registered loss function returns, before weighting and metric collection.

    Attributes:
        losses: per-pair loss ``[B]`` in fp32.
        chosen_rewards: the policy-only reward a reference-free loss defines (e.g. SimPO's ``β·mean-token logp``),
            ``[B]``; ``None`` for losses whose reward is the reference log-ratio ``β·(policy − ref)``.
        rejected_rewards: same for rejected.
        metrics: loss-specific extras as scalar tensors (converted to floats by ``preference_loss``).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor | None = None
    rejected_rewards: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar metric tensors as Python floats, with one device sync for all of them."""
    if not metrics:
        return {}
    values = torch.stack([v.detach().float().reshape(()) for v in metrics.values()]).tolist()
    return dict(zip(metrics.keys(), values))
