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
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_count: torch.Tensor | None = None
    rejected_count: torch.Tensor | None = None
    chosen_token_logps: torch.Tensor | None = None
    rejected_token_logps: torch.Tensor | None = None

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

    def detach(self) -> "PairLogLik":
        def d(t):
            return None if t is None else t.detach()

        return PairLogLik(
            d(self.chosen), d(self.rejected), d(self.chosen_count), d(self.rejected_count),
            d(self.chosen_token_logps), d(self.rejected_token_logps),
        )


@dataclass
class LossOutput:
    """What every loss returns.

    Attributes:
        losses: per-pair loss ``[B]`` (for weighted combinations, the weighted sum of the per-pair losses).
        chosen_rewards: implicit reward of each chosen sample ``[B]``, detached.
        rejected_rewards: same for rejected ``[B]``, detached.
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
