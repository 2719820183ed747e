"""Causal-LM batch -> per-sample completion log-likelihoods (reference §C.6, RLHF-V §A.4–A.5).

Per-token tensors are aligned with ``input_ids``: position ``t`` holds ``log p(input_ids[t] | input_ids[<t])``,
computed from the logits at ``t - 1``; position 0 has no context and is never scored. A token is scored where
``completion_mask`` (and ``attention_mask``) is 1, so prompt and padding never count.

Sequence scores (``reduction``):

- ``sum``: ``Σ_t m_t·logp_t``, the DPO paper's ``log π(y|x)`` (TRL's default);
- ``mean``: ``Σ_t m_t·logp_t / Σ_t m_t``;
- ``weighted``: ``Σ_t w_t·m_t·logp_t`` (RLHF-V code, ``dpo_use_average=False``, its released recipe);
- ``weighted_mean``: ``Σ_t w_t·m_t·logp_t / Σ_t w_t·m_t`` (RLHF-V paper eq. 5, ``N = |y_u| + γ|y_c|``).

Counts (``PairLogLik.chosen_count`` ...) are always the number of scored tokens ``Σ_t m_t``. All maths is fp32
whatever the model dtype. Differs from TRL: no fused LM head (the model's logits are used, from the first completion
position on via ``logits_to_keep``), but only the label logit and a per-row ``logsumexp`` are taken, never a second
full-vocabulary ``log_softmax`` tensor.

The providers (``visalign.likelihood.base``) a trainer holds: :class:`TokenLogProbs` (paired, with the precomputed
reference reader) and :class:`UnpairedTokenLogProbs` (KTO); the functions below are their maths.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from visalign.likelihood.base import LikelihoodProvider
from visalign.losses.types import PairLogLik, UnpairedLogLik

REDUCTIONS = ("sum", "mean", "weighted", "weighted_mean")


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` fp32 log-probs of each token of ``input_ids`` ``[N, T]`` under ``logits`` ``[N, K, V]``.

    ``logits`` cover the last ``K ≤ T`` positions (all of them, or what ``logits_to_keep=K`` returned); positions
    before ``T - K + 1`` get 0 (never scored). Gathers the label logit and subtracts ``logsumexp`` over the
    vocabulary one row at a time, so the only full-vocabulary fp32 temporary is one row's ``[K, V]``.
    """
    first = input_ids.shape[1] - logits.shape[1] + 1  # first position whose log-prob these logits give
    shifted = logits[:, :-1]
    labels = input_ids[:, first:].to(logits.device)
    label_logits = shifted.gather(-1, labels.unsqueeze(-1)).squeeze(-1).float()
    normaliser = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in shifted])
    return F.pad(label_logits - normaliser, (first, 0))


def check_reduction(reduction: str) -> str:
    """``reduction`` if it is one of ``REDUCTIONS``, else a ValueError naming them."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; use one of {list(REDUCTIONS)}")
    return reduction


def scored_mask(completion_mask: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 ``[N, T]`` mask of the tokens that count: completion, attended, and not position 0."""
    mask = completion_mask.to(torch.float32, copy=True)
    if attention_mask is not None:
        mask = mask * attention_mask.to(mask.device).float()
    mask[:, 0] = 0.0
    return mask


def sequence_scores(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    reduction: str = "sum",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[N]`` sequence scores from per-token log-probs ``[N, T]``, a 0/1 ``mask`` and optional ``weights``."""
    check_reduction(reduction)
    mask = mask.to(token_logps.device, torch.float32)
    if reduction.startswith("weighted"):
        if weights is None:
            raise ValueError(f"reduction {reduction!r} needs per-token weights (batch key 'token_weights')")
        mask = mask * weights.to(token_logps.device, torch.float32)
    total = (token_logps.float() * mask).sum(-1)
    if reduction in ("mean", "weighted_mean"):
        total = total / mask.sum(-1).clamp(min=torch.finfo(torch.float32).tiny)
    return total


def completion_token_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    **model_inputs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of ``model``; returns (per-token log-probs with unscored positions zeroed, scored mask).

    Only the logits from the batch's first scored position on are computed when the model takes
    ``logits_to_keep`` (transformers causal LMs and VLMs), which skips the output layer over the prompt.
    ``model_inputs`` are passed to the forward as well (``pixel_values``, ``image_grid_thw``, ...).
    """
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    mask = scored_mask(completion_mask.to(device), attention_mask)
    if _takes_logits_to_keep(model):
        scored = mask.any(0).nonzero()
        first = int(scored[0]) if len(scored) else input_ids.shape[1] - 1
        model_inputs["logits_to_keep"] = input_ids.shape[1] - first + 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **model_inputs).logits
    return token_logps(logits, input_ids) * mask, mask


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the innermost model's forward has a ``logits_to_keep`` argument (unwrapping DDP and peft)."""
    inner = extract_model_from_parallel(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def pair_loglik(
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    reduction: str = "sum",
    return_token_logps: bool = False,
    model_inputs: Mapping | None = None,
) -> PairLogLik:
    """Score a ``PreferenceCollator`` batch with ONE forward over ``[chosen; rejected]``.

    Returns ``[B]`` scores and token counts, and ``[B, T]`` per-token log-probs when ``return_token_logps``
    (needed by per-token losses and by the precomputed reference cache). Gradients flow unless the caller wraps it
    in ``torch.no_grad()`` (the reference does). ``model_inputs``: extra forward inputs (a VLM's images).
    """
    logps, mask = completion_token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                         **(model_inputs or {}))
    return _pair_from_tokens(logps, mask, reduction, batch.get("token_weights"), return_token_logps)


def cached_pair_loglik(batch: Mapping[str, torch.Tensor], *, reduction: str = "sum") -> PairLogLik:
    """The reference ``PairLogLik`` from precomputed batch columns (``visalign.data.ref_cache``), no forward.

    ``sum`` uses ``ref_chosen_logps``/``ref_rejected_logps``; other reductions and per-token losses need the
    per-token columns ``ref_chosen_token_logps``/``ref_rejected_token_logps`` (cache built with ``per_token=True``).
    """
    mask = scored_mask(batch["completion_mask"], batch["attention_mask"])
    per_token = ("ref_chosen_token_logps", "ref_rejected_token_logps")
    if all(key in batch for key in per_token):
        logps = torch.cat([batch[key] for key in per_token]).to(mask.device, torch.float32) * mask
        return _pair_from_tokens(logps, mask, reduction, batch.get("token_weights"), True)
    if reduction != "sum":
        raise ValueError(
            f"reduction {reduction!r} needs per-token reference log-probs (batch keys {list(per_token)}); "
            "precompute the reference with per_token=True"
        )
    for key in ("ref_chosen_logps", "ref_rejected_logps"):
        if key not in batch:
            raise ValueError(f"precomputed reference: batch has no {key!r}; attach the reference cache first")
    counts = mask.sum(-1).chunk(2)
    return PairLogLik(
        batch["ref_chosen_logps"].to(mask.device, torch.float32),
        batch["ref_rejected_logps"].to(mask.device, torch.float32),
        counts[0],
        counts[1],
    )


def _pair_from_tokens(logps, mask, reduction, weights, return_token_logps) -> PairLogLik:
    scores = sequence_scores(logps, mask, reduction=reduction, weights=weights).chunk(2)
    counts = mask.sum(-1).chunk(2)
    tokens = logps.chunk(2) if return_token_logps else (None, None)
    return PairLogLik(scores[0], scores[1], counts[0], counts[1], tokens[0], tokens[1])


def unpaired_loglik(
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    reduction: str = "sum",
    kl: bool = True,
) -> UnpairedLogLik:
    """Score an ``UnpairedCollator`` (KTO) batch: the matched rows with gradients, and with ``kl`` the mismatched
    KL rows under ``torch.no_grad()`` (KTO's z0 is detached, as in TRL)."""
    logps, mask = completion_token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    out = UnpairedLogLik(
        logps=sequence_scores(logps, mask, reduction=reduction),
        desirable=batch["desirable"].to(logps.device),
        count=mask.sum(-1),
    )
    if kl:
        if "kl_input_ids" not in batch:
            raise ValueError("kl=True but the batch has no 'kl_input_ids'; build it with UnpairedCollator(kl=True)")
        with torch.no_grad():
            kl_logps, kl_mask = completion_token_logps(
                model, batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_completion_mask"]
            )
        out.kl_logps = sequence_scores(kl_logps, kl_mask, reduction=reduction)
        out.kl_count = kl_mask.sum(-1)
    return out


class TokenLogProbs(LikelihoodProvider):
    """Completion-token log-probs of preference pairs under a causal LM (:func:`pair_loglik`); the collated
    ``PreferenceCollator`` batch is the input. ``reduction``: the sequence score (module docstring);
    ``return_token_logps``: also give the per-token log-probs (per-token losses)."""

    def __init__(self, reduction: str = "sum", *, return_token_logps: bool = False) -> None:
        self.reduction, self.return_token_logps = check_reduction(reduction), return_token_logps

    def pair_loglik(self, model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> PairLogLik:
        return pair_loglik(model, inputs, reduction=self.reduction, return_token_logps=self.return_token_logps)

    def precomputed(self, inputs: Mapping[str, torch.Tensor]) -> PairLogLik:
        """The reference from the batch's ``ref_*`` columns (:func:`cached_pair_loglik`), with this ``reduction``."""
        return cached_pair_loglik(inputs, reduction=self.reduction)


class UnpairedTokenLogProbs(LikelihoodProvider):
    """KTO's unpaired rows (:func:`unpaired_loglik`): ``pair_loglik`` returns an ``UnpairedLogLik`` with the
    mismatched KL rows; no precomputed reference (the KL reference point needs a reference forward)."""

    def __init__(self, reduction: str = "sum") -> None:
        self.reduction = check_reduction(reduction)

    def pair_loglik(self, model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> UnpairedLogLik:
        return unpaired_loglik(model, inputs, reduction=self.reduction)
