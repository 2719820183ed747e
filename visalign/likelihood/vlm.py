"""VLM batch -> ``PairLogLik``: one forward over a ``VisionPreferenceCollator`` batch ``[chosen; rejected]`` that
carries every model-specific input (pixel values, image sizes, grids ...), scored per token as text is
(``visalign.likelihood.text``; reference §C.5–C.6). :class:`VLMTokenLogProbs` is the provider a trainer holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from visalign.likelihood.text import TokenLogProbs, pair_loglik
from visalign.losses.types import PairLogLik

#: Batch keys that are not model inputs.
NON_MODEL_KEYS = ("completion_mask", "token_weights", "ref_chosen_logps", "ref_rejected_logps",
                  "ref_chosen_token_logps", "ref_rejected_token_logps")


def vlm_pair_loglik(model: torch.nn.Module, batch: Mapping[str, Any], *, reduction: str = "sum",
                    return_token_logps: bool = False) -> PairLogLik:
    """One forward of a VLM over a ``VisionPreferenceCollator`` batch -> ``PairLogLik`` (``likelihood.text`` scoring).

    A forward that fails with transformers' "Image features and image tokens do not match" is re-raised with the
    likely causes.
    """
    device = next(model.parameters()).device
    extras = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()
              if k not in NON_MODEL_KEYS and k not in ("input_ids", "attention_mask")}
    try:
        return pair_loglik(model, batch, reduction=reduction, return_token_logps=return_token_logps,
                           model_inputs=extras)
    except ValueError as exc:
        if "Image features and image tokens do not match" in str(exc):
            raise ValueError(f"{exc}. The prompt's image tokens disagree with the processed images: the processor and "
                             "the model configs differ, or the text contains image tokens itself") from exc
        raise


class VLMTokenLogProbs(TokenLogProbs):
    """Completion-token log-probs of a VLM over a ``VisionPreferenceCollator`` batch (:func:`vlm_pair_loglik`), the
    batch's model-specific inputs (pixel values, image sizes, grids) passed to the forward. ``reduction``: ``sum``, or
    RLHF-V dense DPO's ``weighted``/``weighted_mean`` over the batch's ``token_weights``; the precomputed reference
    reads per-token columns with the same reduction (``TokenLogProbs.precomputed``)."""

    def pair_loglik(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> PairLogLik:
        return vlm_pair_loglik(model, inputs, reduction=self.reduction, return_token_logps=self.return_token_logps)
