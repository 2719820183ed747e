"""Collators for tokenized text preference rows (``visalign.data.text``), right-padded.

Naming: papers write the preferred sample ``y_w`` (winner) and the dispreferred ``y_l`` (loser); visalign calls them
``chosen`` and ``rejected`` everywhere, from this point on.

``PreferenceCollator`` (paired; TRL's ``DataCollatorForPreference``) returns, for ``B`` rows:

- ``input_ids``, ``attention_mask``, ``completion_mask``: ``[2B, T]``, rows ``0..B-1`` are prompt+chosen and rows
  ``B..2B-1`` prompt+rejected (so ``.chunk(2)`` splits them); ``completion_mask`` is 1 on completion tokens only;
- when every row carries them: ``ref_chosen_logps``/``ref_rejected_logps`` ``[B]`` (precomputed reference sums),
  ``ref_chosen_token_logps``/``ref_rejected_token_logps`` ``[B, T]`` (per-token reference log-probs, one value per
  completion token in the row, placed at the completion positions, 0 elsewhere), and ``token_weights`` ``[2B, T]``
  from ``chosen_token_weights``/``rejected_token_weights`` (e.g. RLHF-V's γ on corrected tokens; 0 off-completion).

``UnpairedCollator`` (KTO) returns ``input_ids``/``attention_mask``/``completion_mask`` ``[B, T]``, ``desirable``
(bool ``[B]``, from ``label``), ``ref_logps`` ``[B]`` when carried, and with ``kl=True`` the mismatched sequences
``kl_input_ids``/``kl_attention_mask``/``kl_completion_mask``: row ``i`` is prompt ``i`` followed by the completion
of row ``i-1`` (cyclic; TRL's KTO collator cycles completions by +1 within the batch), the sample behind KTO's KL
reference point z0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def pad_right(rows: Sequence[Sequence[float]], value: float, *, length: int, dtype: torch.dtype) -> torch.Tensor:
    """Stack ``rows`` into ``[len(rows), length]``, right-padded with ``value``."""
    out = torch.full((len(rows), length), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=dtype)
    return out


def _padded_length(lengths: Sequence[int], multiple: int | None) -> int:
    length = max(lengths)
    return length if multiple is None else -(-length // multiple) * multiple


def _sequences(prompts, completions, pad_token_id: int, multiple: int | None) -> dict[str, torch.Tensor]:
    """``input_ids``/``attention_mask``/``completion_mask`` of prompt+completion rows."""
    length = _padded_length([len(p) + len(c) for p, c in zip(prompts, completions)], multiple)
    return {
        "input_ids": pad_right([[*p, *c] for p, c in zip(prompts, completions)], pad_token_id, length=length,
                               dtype=torch.long),
        "attention_mask": pad_right([[1] * (len(p) + len(c)) for p, c in zip(prompts, completions)], 0,
                                    length=length, dtype=torch.long),
        "completion_mask": pad_right([[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions)], 0,
                                     length=length, dtype=torch.long),
    }


def _at_completion(prompts, values, length: int) -> torch.Tensor:
    """Per-completion-token ``values`` placed at their positions in a ``[len(values), length]`` fp32 tensor."""
    return pad_right([[0.0] * len(p) + list(v) for p, v in zip(prompts, values)], 0.0, length=length,
                     dtype=torch.float32)


def _check_per_token(examples, key: str, completion_key: str) -> None:
    for i, ex in enumerate(examples):
        if len(ex[key]) != len(ex[completion_key]):
            raise ValueError(
                f"batch row {i}: {key!r} has {len(ex[key])} values but {completion_key!r} has "
                f"{len(ex[completion_key])} tokens; per-token values need one per completion token"
            )


@dataclass
class PreferenceCollator:
    """Collate paired rows to ``[chosen; rejected]`` tensors (module docstring).

    Args:
        pad_token_id: id written into padding positions of ``input_ids`` (masked out by ``attention_mask``).
        pad_to_multiple_of: round ``T`` up to a multiple of this (tensor-core friendly shapes); ``None``: no rounding.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [ex["prompt_input_ids"] for ex in examples] * 2
        completions = [ex["chosen_input_ids"] for ex in examples] + [ex["rejected_input_ids"] for ex in examples]
        batch = _sequences(prompts, completions, self.pad_token_id, self.pad_to_multiple_of)
        length = batch["input_ids"].shape[1]
        b = len(examples)
        for side in ("chosen", "rejected"):
            key = f"ref_{side}_logps"
            if all(key in ex for ex in examples):
                batch[key] = torch.tensor([ex[key] for ex in examples], dtype=torch.float32)
            key = f"ref_{side}_token_logps"
            if all(key in ex for ex in examples):
                _check_per_token(examples, key, f"{side}_input_ids")
                batch[key] = _at_completion(prompts[:b], [ex[key] for ex in examples], length)
        if all("chosen_token_weights" in ex and "rejected_token_weights" in ex for ex in examples):
            _check_per_token(examples, "chosen_token_weights", "chosen_input_ids")
            _check_per_token(examples, "rejected_token_weights", "rejected_input_ids")
            weights = [ex[f"{side}_token_weights"] for side in ("chosen", "rejected") for ex in examples]
            batch["token_weights"] = _at_completion(prompts, weights, length)
        return batch


@dataclass
class UnpairedCollator:
    """Collate unpaired (KTO) rows (module docstring).

    Args:
        pad_token_id: id written into padding positions of ``input_ids``.
        kl: also build the mismatched KL sequences (needs at least 2 rows per batch).
        max_length: cap on prompt + mismatched completion tokens of the KL rows (their completion end is cut); the
            matched rows were already cut to ``max_length`` by ``tokenize_unpaired``.
        pad_to_multiple_of: round ``T`` up to a multiple of this.
    """

    pad_token_id: int
    kl: bool = True
    max_length: int | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [ex["prompt_input_ids"] for ex in examples]
        completions = [ex["completion_input_ids"] for ex in examples]
        batch = _sequences(prompts, completions, self.pad_token_id, self.pad_to_multiple_of)
        batch["desirable"] = torch.tensor([bool(ex["label"]) for ex in examples], dtype=torch.bool)
        if all("ref_logps" in ex for ex in examples):
            batch["ref_logps"] = torch.tensor([ex["ref_logps"] for ex in examples], dtype=torch.float32)
        if self.kl:
            if len(examples) < 2:
                raise ValueError(
                    "the KTO KL term pairs each prompt with another row's completion, so it needs at least 2 rows "
                    "per batch; raise per_device_batch_size"
                )
            shifted = completions[-1:] + completions[:-1]
            if self.max_length is not None:
                shifted = [c[: max(self.max_length - len(p), 0)] for p, c in zip(prompts, shifted)]
            kl = _sequences(prompts, shifted, self.pad_token_id, self.pad_to_multiple_of)
            batch.update({f"kl_{key}": value for key, value in kl.items()})
        return batch
