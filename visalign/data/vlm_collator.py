"""On-the-fly collation of vision preference rows (``visalign.data.vlm``) for one ``[chosen; rejected]`` forward.

Naming: papers' ``y_w``/``y_l`` (winner/loser) are ``chosen``/``rejected`` here. For ``B`` rows the batch holds, as
TRL 1.16's ``DataCollatorForVisionPreference`` (reference §C.5):

- the processor's prompt outputs for ``2B`` prompts (each row's images listed twice, chosen copy then rejected copy):
  ``pixel_values`` and whatever the model needs besides (``image_sizes`` for LLaVA-NeXT, ``image_grid_thw`` for
  Qwen2-VL, ``pixel_attention_mask`` ...);
- ``input_ids``/``attention_mask``/``completion_mask`` ``[2B, T]``: left-padded prompt then right-padded completion,
  leading all-padding columns removed ("flush left"); ``mm_token_type_ids``/``token_type_ids`` extended with zeros
  over the completion when the processor returns them;
- ``token_weights`` ``[2B, T]`` with ``dense_dpo`` (RLHF-V γ on corrected tokens, ``visalign.data.dense_dpo``);
- ``ref_chosen_logps``/``ref_rejected_logps`` ``[B]`` and ``ref_chosen_token_logps``/``ref_rejected_token_logps``
  ``[B, T]`` (values at the completion positions) when every row carries them (precomputed reference).

Conversational rows are rendered with the processor's chat template; the completion is what ``prompt + completion``
adds to the prompt text (TRL's rule). Plain rows are wrapped in the chat template too (one user turn, ``<image>``
placeholders in place; RLHF-V and MIA-DPO trained in chat format) unless ``chat_template_for_plain=False``, which
feeds them raw. A template that moves image parts ahead of the text (llava-hf's) gets the placeholders as image
tokens inside the text instead, so multi-image prompts keep each ``ImageN:`` label beside its image.

Prompt format (``training_format``, default on): the sequences follow the format the model trained with, not only
the chat template's text. The prompt gets the special tokens the model's tokenizer adds itself (BOS for LLaVA's
Llama tokenizer, none for Qwen2-VL's; never a second BOS when the template already writes one), and each completion
ends with the model's end-of-turn token: EOS (``</s>`` for LLaVA-1.5, after the answer's trailing whitespace is
dropped, as LLaVA's ``ASSISTANT: answer</s>``) unless the template already closes the turn with a special token
(Qwen2-VL's ``<|im_end|>``, kept with its newline). The llava-hf chat template has neither BOS nor EOS; LLaVA,
RLHF-V and MIA-DPO trained with both. ``training_format=False`` feeds the template's text as it is (TRL 1.16's
format: no BOS, no EOS added).

Checks, each naming the data set row: an unreadable image; images ≠ placeholders; after processing, each row's
image tokens must equal the processor's own count for its images (``_get_num_multimodal_tokens``), which catches a
prompt text that contains image tokens itself. Truncation (``max_length``, prompt + completion tokens of a row) cuts
only the end of the completion, per row, so it never reaches image tokens and never depends on the batch; a prompt
that leaves no room for a completion is an error (TRL cuts columns after flush-left and fails inside the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from visalign.data.dense_dpo import dense_token_weights
from visalign.data.image_transforms import IMAGE_ERRORS, open_rgb
from visalign.data.text import common_prefix_length
from visalign.data.vlm import prompt_to_messages, structured_messages, template_moves_images_first


@dataclass(frozen=True)
class DenseDPOWeights:
    """RLHF-V dense-DPO token weighting (``visalign.data.dense_dpo``)."""

    gamma: float = 1.1
    min_match_size: int = 3
    mark_insertions_deletions: bool = False


def _where(example: dict[str, Any]) -> str:
    return f"{example.get('dataset_name', 'dataset')} row {example.get('index', '?')}"


def load_images(example: dict[str, Any]) -> list:
    """Decode a row's images to RGB; an unreadable one raises naming the row and the image."""
    images = []
    for k, source in enumerate(example["images"]):
        try:
            images.append(open_rgb(source, base_dir=example.get("image_folder"),
                                   confine=example.get("confine_image_paths", False)))
        except IMAGE_ERRORS as exc:
            label = source if isinstance(source, str) else (source.get("path") if isinstance(source, dict) else None)
            raise ValueError(f"{_where(example)}: image {k}{f' ({label})' if label else ''} is unreadable: "
                             f"{type(exc).__name__}: {exc}") from None
    return images


def encode_prompts(processor, prompts: list[str], images: list[list], *, training_format: bool = True):
    """The processor's outputs for rendered prompt texts, left-padded; with ``training_format`` the tokenizer adds
    its own special tokens (BOS for LLaVA), unless the texts already start with BOS (module docstring)."""
    bos = processor.tokenizer.bos_token
    add_special_tokens = training_format and not (bos and any(p.startswith(bos) for p in prompts))
    return processor(images=images if any(images) else None, text=prompts, padding=True, padding_side="left",
                     return_tensors="pt", add_special_tokens=add_special_tokens)


def end_turn(completion: str, tokenizer) -> str:
    """``completion`` closed with the model's end-of-turn token: as it is when it already ends with a special token
    (Qwen2-VL's ``<|im_end|>``, then a newline), else without trailing whitespace and with EOS appended (LLaVA's
    ``</s>``)."""
    if tokenizer.eos_token is None or any(completion.rstrip().endswith(t) for t in tokenizer.all_special_tokens):
        return completion
    return completion.rstrip() + tokenizer.eos_token


def flush_left(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the leading columns that are padding in every row (``tensors[0]`` is the attention mask)."""
    mask = tensors[0]
    filled = mask.any(0).nonzero()
    start = int(filled[0]) if len(filled) else 0
    return tuple(t[:, start:] for t in tensors)


@dataclass
class VisionPreferenceCollator:
    """Collate normalised vision preference rows (module docstring).

    Args:
        processor: the model's ``ProcessorMixin`` (LLaVA, LLaVA-NeXT, Qwen2-VL ...).
        max_length: cap on prompt + completion tokens per row (completion end cut); ``None``: no cap.
        chat_template_for_plain: render plain string rows with the chat template (default) or feed them raw.
        dense_dpo: RLHF-V token weights to add as ``token_weights``; ``None``: none.
        training_format: BOS and end-of-turn tokens as the model trained (default), or the template's text as it
            is (TRL's format); module docstring.
    """

    processor: Any
    max_length: int | None = None
    chat_template_for_plain: bool = True
    dense_dpo: DenseDPOWeights | None = None
    training_format: bool = True

    def __post_init__(self) -> None:
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError(f"{type(self.processor).__name__} has no tokenizer; VLM training needs a processor")
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id
        image_token = getattr(self.processor, "image_token", None)
        self.image_token_id = None if image_token is None else self.tokenizer.convert_tokens_to_ids(image_token)
        self.inline_image_token = image_token if template_moves_images_first(self.processor) else None

    # ------------------------------------------------------------------------------------------ text

    def render(self, example: dict[str, Any], num_images: int) -> tuple[str, str, str]:
        """``(prompt, chosen, rejected)`` texts of one row; with ``training_format`` the completions end the turn."""
        prompt, *completions = self._texts(example, num_images)
        if self.training_format:
            completions = [end_turn(c, self.tokenizer) for c in completions]
        return prompt, *completions

    def _texts(self, example: dict[str, Any], num_images: int) -> tuple[str, str, str]:
        prompt, chosen, rejected = example["prompt"], example["chosen"], example["rejected"]
        where = _where(example)
        if isinstance(prompt, str) and not self.chat_template_for_plain:
            return prompt, chosen, rejected
        if isinstance(prompt, str):
            prompt = prompt_to_messages(prompt, num_images, inline_image_token=self.inline_image_token)
        else:
            prompt = structured_messages(prompt, num_images, row=where)
        if isinstance(chosen, str):
            chosen, rejected = ([{"role": "assistant", "content": c}] for c in (chosen, rejected))
        chosen = structured_messages(chosen, 0, row=where)
        rejected = structured_messages(rejected, 0, row=where)
        template = self.processor.apply_chat_template
        prompt_text = template(prompt, add_generation_prompt=True, tokenize=False)
        full = [template(prompt + c, tokenize=False) for c in (chosen, rejected)]
        cut = min(common_prefix_length(prompt_text, f) for f in full)
        return prompt_text[:cut], full[0][cut:], full[1][cut:]

    # ------------------------------------------------------------------------------------------ batch

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [load_images(ex) for ex in examples]
        texts = [self.render(ex, len(imgs)) for ex, imgs in zip(examples, images)]
        b = len(examples)
        prompts = [t[0] for t in texts] * 2
        try:
            processed = encode_prompts(self.processor, prompts, images * 2, training_format=self.training_format)
        except ValueError as exc:
            rows = ", ".join(_where(ex) for ex in examples)
            raise ValueError(f"{rows}: the processor rejected the batch (does a prompt text contain the image "
                             f"token itself?): {exc}") from exc
        completions = [self.tokenizer(t[1], add_special_tokens=False)["input_ids"] for t in texts]
        completions += [self.tokenizer(t[2], add_special_tokens=False)["input_ids"] for t in texts]
        prompt_ids, prompt_mask = processed["input_ids"], processed["attention_mask"]
        prompt_lengths = prompt_mask.sum(1).tolist()
        self._check_image_tokens(examples, images, prompt_ids)
        weights = self._dense_weights(prompt_ids, prompt_mask, completions, b)
        completions = [self._truncate(c, int(n), examples[i % b]) for i, (c, n) in
                       enumerate(zip(completions, prompt_lengths))]
        width = max(len(c) for c in completions)
        completion_ids = torch.full((2 * b, width), self.pad_token_id, dtype=prompt_ids.dtype)
        completion_mask = torch.zeros((2 * b, width), dtype=prompt_mask.dtype)
        for i, ids in enumerate(completions):
            completion_ids[i, : len(ids)] = torch.as_tensor(ids, dtype=prompt_ids.dtype)
            completion_mask[i, : len(ids)] = 1
        zeros = torch.zeros_like(completion_mask)
        columns = {
            "attention_mask": torch.cat([prompt_mask, completion_mask], 1),
            "input_ids": torch.cat([prompt_ids, completion_ids], 1),
            "completion_mask": torch.cat([torch.zeros_like(prompt_mask), completion_mask], 1),
        }
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in processed:
                columns[key] = torch.cat([processed[key], zeros.to(processed[key].dtype)], 1)
        if weights is not None:
            columns["token_weights"] = torch.cat(
                [torch.zeros(prompt_mask.shape), _place([w[: len(c)] for w, c in zip(weights, completions)], width)], 1
            )
        per_token = {}
        for side, offset in (("chosen", 0), ("rejected", b)):
            key = f"ref_{side}_token_logps"
            if all(key in ex for ex in examples):
                values = [list(ex[key]) for ex in examples]
                for i, (ex, v) in enumerate(zip(examples, values)):
                    if len(v) != len(completions[offset + i]):
                        raise ValueError(f"{_where(ex)}: {key} has {len(v)} values for "
                                         f"{len(completions[offset + i])} completion tokens; recompute the reference")
                per_token[key] = torch.cat([torch.zeros(b, prompt_mask.shape[1]), _place(values, width)], 1)
        names = list(columns) + list(per_token)
        flushed = flush_left(*columns.values(), *per_token.values())
        batch = dict(processed)
        batch.update(dict(zip(names, flushed)))
        for side in ("chosen", "rejected"):
            key = f"ref_{side}_logps"
            if all(key in ex for ex in examples):
                batch[key] = torch.tensor([float(ex[key]) for ex in examples], dtype=torch.float32)
        return batch

    # ------------------------------------------------------------------------------------------ helpers

    def _truncate(self, ids: list[int], prompt_length: int, example: dict[str, Any]) -> list[int]:
        if self.max_length is None:
            return ids
        budget = self.max_length - prompt_length
        if budget < 1:
            raise ValueError(
                f"{_where(example)}: the prompt has {prompt_length} tokens (image tokens included), which leaves no "
                f"room for the completion within max_length={self.max_length}; truncation never cuts into the "
                "prompt or its image tokens. Raise max_length or set it to none (recommended for VLMs)."
            )
        return ids[:budget]

    def _dense_weights(self, prompt_ids, prompt_mask, completions, b) -> list[list[float]] | None:
        if self.dense_dpo is None:
            return None
        weights: list[list[float]] = [[] for _ in completions]
        for i in range(b):
            prefix = prompt_ids[i][prompt_mask[i].bool()].tolist()
            weights[i], weights[b + i] = dense_token_weights(
                completions[i], completions[b + i], gamma=self.dense_dpo.gamma, prefix_ids=prefix,
                min_match_size=self.dense_dpo.min_match_size,
                mark_insertions_deletions=self.dense_dpo.mark_insertions_deletions,
            )
        return weights

    def _check_image_tokens(self, examples, images, prompt_ids: torch.Tensor) -> None:
        counter = getattr(self.processor, "_get_num_multimodal_tokens", None)
        if self.image_token_id is None or counter is None:
            return
        for i, (ex, imgs) in enumerate(zip(examples, images)):
            found = int((prompt_ids[i] == self.image_token_id).sum())
            expected = sum(counter(image_sizes=[(img.height, img.width) for img in imgs]).num_image_tokens) \
                if imgs else 0
            if found != expected:
                raise ValueError(
                    f"{_where(ex)}: the prompt has {found} image tokens but its {len(imgs)} image(s) need "
                    f"{expected}; does the prompt text contain the image token itself?"
                )


def _place(rows: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.float32)
    return out
