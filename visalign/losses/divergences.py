"""f-DPO scores: the derivative f'(u) of an f-divergence at the policy/reference ratio u = πθ/πref.

Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence
Constraints": the DPO logit becomes ``β·(f'(u_w) − f'(u_l))``. Reverse KL gives back plain DPO.
Formulas as TRL 1.16 writes them, in terms of the log-ratio ``l = log u``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# exp() argument ceiling for the alpha-divergence score: keeps it finite in fp32 (TRL clamps the same way).
_ALPHA_EXP_MAX = 80.0


def f_divergence_score(logratio: torch.Tensor, f_divergence_type: str, alpha: float) -> torch.Tensor:
    """``f'(u)`` at ``u = exp(logratio)``.

    reverse_kl: ``l``; forward_kl: ``1 − e^{−l}``; js_divergence: ``log 2 + logσ(l)``;
    alpha_divergence: ``(e^{(α−1)l} − 1)/(α−1)`` with the exponent clamped at 80, and ``l`` itself as α → 1.
    """
    if f_divergence_type == "reverse_kl":
        return logratio
    if f_divergence_type == "forward_kl":
        return -torch.expm1(-logratio)
    if f_divergence_type == "js_divergence":
        return math.log(2.0) + F.logsigmoid(logratio)
    if f_divergence_type == "alpha_divergence":
        if abs(alpha - 1.0) < 1e-6:
            return logratio
        exponent = torch.clamp((alpha - 1.0) * logratio, max=_ALPHA_EXP_MAX)
        return torch.expm1(exponent) / (alpha - 1.0)
    raise ValueError(f"f_divergence_type must be one of {F_DIVERGENCES}; got {f_divergence_type!r}")
