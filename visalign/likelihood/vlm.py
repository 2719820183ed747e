"""VLM batch -> ``PairLogLik``: one forward over a ``VisionPreferenceCollator`` batch ``[chosen; rejected]`` that
carries every model-specific input (pixel values, image sizes, grids ...), scored per token as text is
(``visalign.likelihood.text``; reference §C.5–C.6).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from visalign.likelihood.text import pair_loglik
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
