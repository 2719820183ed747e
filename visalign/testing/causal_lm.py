"""Tiny Llama-architecture causal LMs built in code, for tests, docs and the built-in text quickstart."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from visalign.testing.tokenizers import SIMPLE_CHAT_TEMPLATE, word_level_tokenizer


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` whose vocabulary and special ids match ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_llama(path: str | Path, *, chat: bool = True, seed: int = 0, **model_kwargs) -> Path:
    """Build a tiny Llama and its word-level tokenizer and ``save_pretrained`` both into ``path``.

    The folder loads with ``AutoModelForCausalLM.from_pretrained(path)`` / ``AutoTokenizer.from_pretrained(path)``.
    """
    path = Path(path)
    tok = word_level_tokenizer(chat_template=SIMPLE_CHAT_TEMPLATE if chat else None)
    model = tiny_llama(tok, seed=seed, **model_kwargs)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
