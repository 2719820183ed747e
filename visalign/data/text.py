"""Text preference data in TRL 1.16's format, validated and tokenized (reference §C.2).

Paired rows: ``prompt``/``chosen``/``rejected``, each a plain string or a conversational message list
(``[{"role": ..., "content": ...}]``) rendered with the tokenizer's chat template. Unpaired (KTO) rows:
``prompt``/``completion``/``label`` (bool, True = desirable). Steps, as in TRL:

1. a missing ``prompt`` column is extracted as the common prefix of ``chosen`` and ``rejected`` (``extract_prompt``);
2. plain-text completions get the tokenizer's EOS appended when missing (``prompt + completion`` is the full text,
   so a completion carries its own leading space);
3. prompt and prompt+completion are tokenized separately (the chat template with ``add_generation_prompt=True`` for
   the prompt); the completion starts at their **common prefix**, which differs from the prompt length when a
   template renders the prompt alone differently or tokens merge across the boundary (a warning says so once).

Output columns: ``prompt_input_ids`` and ``chosen_input_ids``/``rejected_input_ids`` (paired) or
``completion_input_ids``/``label`` (unpaired); the text columns are removed, other columns are kept.

Where visalign differs from TRL: ``max_length`` (prompt + completion tokens) is applied here, not in the collator,
by cutting the end of the completion only. A prompt that leaves no room for a completion raises an error naming the
row, or, with ``drop_long_prompts=True``, the row is dropped and counted in a warning (TRL drops silently). An
empty completion raises an error naming the row and column (TRL trains on it with a zero log-likelihood).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypedDict, Unpack

import datasets
import numpy as np
import pyarrow as pa
from transformers import PreTrainedTokenizerBase

from visalign.errors import DataError

PAIRED_TOKEN_COLUMNS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")


def is_conversational(value: Any) -> bool:
    """True when ``value`` is a message list (``[{"role": ..., "content": ...}, ...]``)."""
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict) and "role" in value[0]


def extract_prompt(example: dict[str, Any]) -> dict[str, Any]:
    """Split an implicit prompt off ``chosen``/``rejected``: their longest common prefix (characters for strings,
    whole messages for conversations). As in TRL, a space just before the divergence stays with the completions."""
    chosen, rejected = example["chosen"], example["rejected"]
    idx = common_prefix_length(chosen, rejected)
    if isinstance(chosen, str) and 0 < idx and chosen[idx - 1] == " ":
        idx -= 1
    return {"prompt": chosen[:idx], "chosen": chosen[idx:], "rejected": rejected[idx:]}


def validate_columns(dataset: datasets.Dataset, required: Sequence[str], *, name: str = "dataset") -> None:
    """Raise a ``DataError`` (a ``ValueError``) naming every column of ``required`` that ``dataset`` lacks."""
    missing = [c for c in required if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{name} is missing column(s) {missing}; it has {dataset.column_names}. Paired preference data needs "
            "'chosen' and 'rejected' (and 'prompt', unless it is the common start of both); unpaired (KTO) data "
            "needs 'prompt', 'completion' and 'label'."
        )


class TokenizeOptions(TypedDict, total=False):
    """Keyword options of :func:`tokenize_preferences` and :func:`tokenize_unpaired` (defaults in ``_tokenize``).

    ``max_length``: cap on prompt + completion tokens, met by cutting the end of the completion (``None``: no cap);
    ``drop_long_prompts``: drop and count rows whose prompt leaves no room for a completion instead of raising;
    ``chat_template_kwargs``: extra arguments of ``apply_chat_template``; ``num_proc``: ``Dataset.map`` processes;
    ``name``: the dataset's name in messages.
    """

    max_length: int | None
    drop_long_prompts: bool
    chat_template_kwargs: dict[str, Any] | None
    num_proc: int | None
    name: str


def tokenize_preferences(
    dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, **options: Unpack[TokenizeOptions]
) -> datasets.Dataset:
    """Tokenize paired rows to ``prompt_input_ids``/``chosen_input_ids``/``rejected_input_ids`` (module docstring)."""
    return _tokenize(dataset, tokenizer, ("chosen", "rejected"), _prepare_paired, **options)


def tokenize_unpaired(
    dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, **options: Unpack[TokenizeOptions]
) -> datasets.Dataset:
    """Tokenize unpaired (KTO) rows to ``prompt_input_ids``/``completion_input_ids``, keeping ``label`` (bool)."""
    return _tokenize(dataset, tokenizer, ("completion",), _prepare_unpaired, **options)


def _prepare_paired(dataset: datasets.Dataset, name: str, num_proc: int | None) -> datasets.Dataset:
    validate_columns(dataset, ("chosen", "rejected"), name=name)
    if "prompt" not in dataset.column_names:
        dataset = dataset.map(extract_prompt, num_proc=num_proc, desc=f"Extracting prompts of {name}")
    return dataset


def _prepare_unpaired(dataset: datasets.Dataset, name: str, num_proc: int | None) -> datasets.Dataset:
    validate_columns(dataset, ("prompt", "completion", "label"), name=name)
    for row, label in enumerate(dataset["label"]):
        if not isinstance(label, bool):
            raise DataError(f"{name} row {row}: column 'label' must be a bool (True = desirable); got {label!r}")
    return dataset


def _tokenize(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    completion_columns: tuple[str, ...],
    prepare: Callable[[datasets.Dataset, str, int | None], datasets.Dataset],
    *,
    max_length: int | None = None,
    drop_long_prompts: bool = False,
    chat_template_kwargs: dict[str, Any] | None = None,
    num_proc: int | None = None,
    name: str = "dataset",
) -> datasets.Dataset:
    """``prepare`` (check the columns of the row kind), then tokenize ``prompt`` and ``completion_columns``."""
    dataset = prepare(dataset, name, num_proc)
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be at least 2 (one prompt and one completion token); got {max_length}")
    text_columns = ["prompt", *completion_columns]

    def encode(example, row):
        prompt_ids, completion_ids = _encode_row(example, row, tokenizer, completion_columns,
                                                  chat_template_kwargs or {}, name)
        out = {"prompt_input_ids": prompt_ids, "_prompt_too_long": False}
        if max_length is not None and len(prompt_ids) >= max_length:
            if not drop_long_prompts:
                raise DataError(
                    f"{name} row {row}: the prompt has {len(prompt_ids)} tokens, which leaves no room for the "
                    f"completion within max_length={max_length}. Raise max_length, shorten the prompt, or set "
                    "drop_long_prompts to drop such rows."
                )
            out["_prompt_too_long"] = True
        budget = None if max_length is None else max(max_length - len(prompt_ids), 0)
        for column, ids in zip(completion_columns, completion_ids):
            out[f"{column}_input_ids"] = ids[:budget]
        return out

    tokenized = dataset.map(
        encode, with_indices=True, remove_columns=text_columns, num_proc=num_proc, desc=f"Tokenizing {name}"
    )
    too_long = sum(tokenized["_prompt_too_long"])
    if too_long:
        warnings.warn(
            f"{name}: dropped {too_long} of {len(tokenized)} rows whose prompt leaves no room for the completion "
            f"within max_length={max_length}",
            stacklevel=3,
        )
        tokenized = tokenized.filter(lambda too: not too, input_columns="_prompt_too_long", num_proc=num_proc)
    return tokenized.remove_columns("_prompt_too_long")


_warned_prefix_mismatch = False


def _encode_row(example, row, tokenizer, completion_columns, chat_kwargs, name):
    """Token ids of the prompt and of each completion of one row, split at the common prefix (TRL §C.2)."""
    prompt = example["prompt"]
    conversational = is_conversational(prompt) or is_conversational(example[completion_columns[0]])
    for column in ("prompt", *completion_columns):
        value = example[column]
        if value is None:
            raise DataError(f"{name} row {row}: column {column!r} is null or missing; give every row a value")
        if conversational != is_conversational(value) and not (column == "prompt" and value in ("", [])):
            raise DataError(f"{name} row {row}: column {column!r} mixes plain text and message lists")
        if column != "prompt" and _is_empty(value):
            raise DataError(f"{name} row {row}: column {column!r} is an empty completion")
    if conversational:
        prompt = prompt or []
        if tokenizer.chat_template is None:
            raise DataError(f"{name} row {row} is conversational but the tokenizer has no chat template")
        prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True, **chat_kwargs)
        full_ids = [_chat_ids(tokenizer, prompt + example[c], **chat_kwargs) for c in completion_columns]
    else:
        eos = tokenizer.eos_token
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = []
        for c in completion_columns:
            completion = example[c] if example[c].endswith(eos) else example[c] + eos
            full_ids.append(tokenizer(prompt + completion)["input_ids"])
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full_ids)
    global _warned_prefix_mismatch
    if prompt_len < len(prompt_ids) and not _warned_prefix_mismatch:
        _warned_prefix_mismatch = True
        warnings.warn(
            f"{name} row {row}: the tokenized prompt is not a prefix of the tokenized prompt+completion (the chat "
            f"template renders the prompt alone differently, or tokens merge across the boundary); the completion "
            f"starts where they diverge and the prompt's tail {tokenizer.decode(prompt_ids[prompt_len:])!r} is left "
            "out. Shown once; it likely applies to every row.",
            stacklevel=2,
        )
    completion_ids = [ids[prompt_len:] for ids in full_ids]
    for column, ids in zip(completion_columns, completion_ids):
        if not ids:
            raise DataError(f"{name} row {row}: column {column!r} tokenizes to an empty completion")
    return prompt_ids[:prompt_len], completion_ids


def _is_empty(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not value or all(_is_empty_content(m.get("content")) for m in value)


def _is_empty_content(content) -> bool:
    if content is None or isinstance(content, str):
        return not (content or "").strip()
    return len(content) == 0


def _chat_ids(tokenizer, messages, **kwargs) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    """How many leading items (token ids, characters, messages) ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def dataset_fingerprint(dataset: datasets.Dataset, columns: Sequence[str] | None = None) -> str:
    """A content hash (sha256 hex) of ``columns`` (default: all) of ``dataset``, stable across processes and runs.

    Hashes each column's Arrow values and list lengths, so it changes with any token id, row order or truncation,
    and not with how the dataset was built or cached (unlike ``Dataset._fingerprint``, which tracks transforms).
    """
    columns = list(dataset.column_names if columns is None else columns)
    validate_columns(dataset, columns, name="dataset")
    digest = hashlib.sha256(f"{len(dataset)}|{','.join(columns)}".encode())
    table = dataset.with_format("arrow").select_columns(columns)
    for batch in table.iter(batch_size=10_000):
        for column in columns:
            _hash_arrow(digest, batch[column].combine_chunks() if isinstance(batch[column], pa.ChunkedArray)
                        else batch[column])
    return digest.hexdigest()


def _hash_arrow(digest, array: pa.Array) -> None:
    """Feed ``array``'s type, nesting lengths and leaf values into ``digest``."""
    digest.update(str(array.type).encode())
    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        digest.update(array.value_lengths().fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
        array = array.flatten()
    if pa.types.is_primitive(array.type):
        digest.update(array.fill_null(0).to_numpy(zero_copy_only=False).tobytes())
    else:
        digest.update("\x1f".join(map(str, array.to_pylist())).encode())
