"""Tokenizing prompts as the diffusers text-to-image pipelines do."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """``[N, model_max_length]`` input ids, padded to ``max_length`` and truncated, as the SD/SDXL pipelines do."""
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {i} must be a str; got {type(prompt).__name__}")
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids
