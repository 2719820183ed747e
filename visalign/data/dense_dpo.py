"""RLHF-V dense DPO token weights (Yu et al. 2024, "RLHF-V", §3.2, eq. 5; reference §A.4–A.5).

RLHF-V's annotators correct only the hallucinated segments of a model answer, so the corrected answer (``chosen``) and
the original (``rejected``) share most of their tokens. The corrected segments are recovered by diffing the two token
sequences (the released data has no segment labels), and their tokens get weight ``γ`` (``gamma``) on both sides;
every other completion token gets weight 1. The sequence score is then (``likelihood.text`` reductions)

- ``"weighted"``: ``Σ_t w_t·logp_t``, the released recipe (Muffin ``dpo_use_average=False``), or
- ``"weighted_mean"``: ``Σ_t w_t·logp_t / Σ_t w_t``, the paper's eq. 5 with ``N = |y_u| + γ·|y_c|``,

applied to the policy and the reference alike, chosen and rejected alike, then the plain DPO sigmoid.

The diff (Muffin ``utils/diff_lib.py`` semantics, re-derived from §A.4):

1. diff ``prefix + rejected`` against ``prefix + chosen`` with ``difflib.SequenceMatcher(None, rejected, chosen)``
   (default ``autojunk``, as the reference). ``prefix`` is the shared prompt (the reference diffs whole sequences
   without BOS): a short common start of the two answers then joins the prompt's long matching block instead of
   counting as changed;
2. matching blocks shorter than ``min_match_size`` (3) are dropped, so 1–2-token coincidences count as changed;
3. between consecutive kept blocks (and before the first / after the last) lies one rejected gap and one chosen gap;
   the pair is a *replacement* and is up-weighted only when **both** gaps are non-empty. Pure insertions (empty
   rejected gap) and deletions (empty chosen gap) are not marked, as in the reference; ``mark_insertions_deletions``
   marks their non-empty side too.

Named ``dense_dpo`` throughout: "DDPO" means denoising diffusion policy optimisation elsewhere in visalign.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import datasets

#: dense-DPO score name -> ``visalign.likelihood.text`` reduction.
DENSE_DPO_SCORES = {"weighted_sum": "weighted", "normalized": "weighted_mean"}


def changed_spans(
    rejected: Sequence[Any],
    chosen: Sequence[Any],
    *,
    min_match_size: int = 3,
    mark_insertions_deletions: bool = False,
) -> tuple[list[int], list[int]]:
    """Indices of the corrected tokens in ``rejected`` and in ``chosen`` (module docstring, steps 2–3)."""
    if min_match_size < 1:
        raise ValueError(f"min_match_size must be >= 1; got {min_match_size}")
    blocks = difflib.SequenceMatcher(None, rejected, chosen).get_matching_blocks()
    kept = [b for b in blocks if b.size >= min_match_size]
    rejected_marked: list[int] = []
    chosen_marked: list[int] = []
    r_pos = c_pos = 0
    for r_start, c_start, size in [*kept, (len(rejected), len(chosen), 0)]:
        r_gap, c_gap = range(r_pos, r_start), range(c_pos, c_start)
        if (len(r_gap) and len(c_gap)) or mark_insertions_deletions:
            rejected_marked.extend(r_gap)
            chosen_marked.extend(c_gap)
        r_pos, c_pos = r_start + size, c_start + size
    return rejected_marked, chosen_marked


def dense_token_weights(
    chosen_ids: Sequence[int],
    rejected_ids: Sequence[int],
    *,
    gamma: float,
    prefix_ids: Sequence[int] = (),
    min_match_size: int = 3,
    mark_insertions_deletions: bool = False,
) -> tuple[list[float], list[float]]:
    """Per-completion-token weights ``(chosen, rejected)``: ``gamma`` on corrected tokens, 1 elsewhere.

    ``prefix_ids`` (the shared prompt tokens) take part in the diff but get no weight of their own.
    """
    if not gamma > 0:
        raise ValueError(f"dense_dpo gamma must be > 0; got {gamma!r}")
    prefix = list(prefix_ids)
    r_marked, c_marked = changed_spans(
        prefix + list(rejected_ids), prefix + list(chosen_ids),
        min_match_size=min_match_size, mark_insertions_deletions=mark_insertions_deletions,
    )
    return _weights(len(chosen_ids), c_marked, len(prefix), gamma), _weights(len(rejected_ids), r_marked,
                                                                             len(prefix), gamma)


def _weights(length: int, marked: list[int], offset: int, gamma: float) -> list[float]:
    weights = [1.0] * length
    for index in marked:
        if index >= offset:
            weights[index - offset] = float(gamma)
    return weights


def add_dense_weights(
    dataset: datasets.Dataset,
    *,
    gamma: float,
    min_match_size: int = 3,
    mark_insertions_deletions: bool = False,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Add ``chosen_token_weights``/``rejected_token_weights`` to a tokenized text preference set
    (``visalign.data.text.tokenize_preferences`` output), which ``PreferenceCollator`` turns into ``token_weights``."""
    def weigh(row):
        chosen, rejected = dense_token_weights(
            row["chosen_input_ids"], row["rejected_input_ids"], gamma=gamma, prefix_ids=row["prompt_input_ids"],
            min_match_size=min_match_size, mark_insertions_deletions=mark_insertions_deletions,
        )
        return {"chosen_token_weights": chosen, "rejected_token_weights": rejected}

    return dataset.map(weigh, num_proc=num_proc, desc="dense_dpo token weights")
