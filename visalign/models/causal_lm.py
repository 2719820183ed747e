"""Load a causal LM and its tokenizer: ``load_causal_lm(name_or_path, dtype=...) -> (model, tokenizer)``.

``load_tokenizer(name_or_path)`` loads the tokenizer alone. ``name_or_path`` is a hub id or a local
``save_pretrained`` folder (``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``), or ``builtin:tiny-llama``
(``visalign.models.builtin``), loaded through the same ``from_pretrained`` path. A tokenizer without a pad
token gets its EOS token as pad token (the collators mask padding, so the id only fills space).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from visalign.models.builtin import resolve_model

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    """A torch dtype, one of the names in ``DTYPES``, or ``None``/``"auto"`` (the checkpoint's own dtype)."""
    if dtype is None:
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_causal_lm(
    name_or_path: str,
    *,
    dtype: str | torch.dtype | None = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    device_map: str | dict | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` from a hub id, a local folder or ``builtin:tiny-llama`` (module docstring)."""
    name_or_path = resolve_model(name_or_path, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        dtype=resolve_dtype(dtype),
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        revision=revision,
        device_map=device_map,
    )
    return model, load_tokenizer(name_or_path, trust_remote_code=trust_remote_code, revision=revision)


def load_tokenizer(
    name_or_path: str, *, trust_remote_code: bool = False, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of a hub id, local folder or ``builtin:NAME``; a missing pad token becomes the EOS token."""
    name_or_path = resolve_model(name_or_path, revision=revision)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {name_or_path!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
