"""Vision preference data: three on-disk schemas normalised to one row format (reference §A.2, §B.6, §C.5).

Accepted rows (detected per data set from its columns):

- **TRL** (``trl``): ``images`` (list) or ``image`` (one), ``prompt``/``chosen``/``rejected`` as plain strings or
  conversational message lists (``[{"role", "content"}]``);
- **RLHF-V** (``rlhfv``, ``HaoyeZhang/RLHF-V-Dataset``): ``text``, a JSON string with ``question``/``chosen``/
  ``rejected``, and ``image`` (``{"bytes": ...}``); the prompt is ``"<image>\\n" + question`` (Muffin's loader);
- **MIA-DPO** (``mia_dpo``, ``visalign.data.mia_dpo_select`` output): ``image`` (a path or a list of paths, relative
  to ``image_folder``), ``prompt``/``chosen``/``rejected`` (plus ``gt`` and diagnostics, ignored).

Every row becomes ``{"index", "images", "prompt", "chosen", "rejected"}`` (+ any ``ref_*`` columns): ``images`` is a
list of undecoded references (PIL image, bytes, ``{"bytes", "path"}`` or a path), decoded in the collator so data sets
with many images never sit in memory. Plain prompts mark image positions with ``<image>`` (``IMAGE_PLACEHOLDER``,
whatever the model's own image token is); a plain single-image prompt without one gets ``"<image>\\n"`` prepended
(MIA-DPO's rule), and any other mismatch between placeholders and images is an error naming the row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import torch

from visalign.data.text import is_conversational
from visalign.errors import DataError

IMAGE_PLACEHOLDER = "<image>"
SCHEMAS = ("trl", "rlhfv", "mia_dpo")
#: Column names carried through from the data set to the collator (precomputed reference values).
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "ref_chosen_token_logps", "ref_rejected_token_logps")


def detect_schema(columns: list[str], first_row: Mapping[str, Any] | None = None, *, name: str = "dataset") -> str:
    """``rlhfv`` when there is a ``text`` column and no ``prompt``; ``mia_dpo`` when ``image`` holds paths;
    else ``trl``. Raises naming the missing columns."""
    if "text" in columns and "prompt" not in columns:
        if "image" not in columns:
            raise DataError(f"{name}: RLHF-V rows need an 'image' column beside 'text'; columns are {columns}")
        return "rlhfv"
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in columns]
    if missing or not ({"image", "images"} & set(columns)):
        raise DataError(
            f"{name} is missing {missing or ['image or images']}; it has {columns}. Vision preference data needs "
            "'images' (or 'image'), 'prompt', 'chosen', 'rejected' (TRL / MIA-DPO), or RLHF-V's 'text' + 'image'"
        )
    image = None if first_row is None else first_row.get("image", first_row.get("images"))
    paths = image if isinstance(image, list) else [image]
    return "mia_dpo" if paths and all(isinstance(p, str) for p in paths) else "trl"


def prompt_to_messages(prompt: str, num_images: int, *, inline_image_token: str | None = None
                       ) -> list[dict[str, Any]]:
    """A plain prompt as one user message: ``<image>`` placeholders become image parts in place; without any
    placeholder, the images go first (TRL's ``prepare_multimodal_messages`` rule).

    ``inline_image_token``: write the placeholders into the text as this token instead of image parts, for a chat
    template that would move image parts ahead of the text (:func:`template_moves_images_first`), so that
    MIA-DPO's ``Image1: <image>`` labels stay beside their images as in LLaVA's own conversation format."""
    pieces = prompt.split(IMAGE_PLACEHOLDER)
    if len(pieces) == 1:
        return [{"role": "user", "content": [*([{"type": "image"}] * num_images), {"type": "text", "text": prompt}]}]
    if inline_image_token is not None:
        return [{"role": "user", "content": [{"type": "text", "text": inline_image_token.join(pieces)}]}]
    content: list[dict[str, Any]] = []
    for k, piece in enumerate(pieces):
        if k:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return [{"role": "user", "content": content}]


def template_moves_images_first(processor) -> bool:
    """Whether the processor's chat template writes a user turn's image parts before its text whatever their order
    (llava-hf's LLaVA-1.5/NeXT templates: "Render all images first"); found by rendering one probe turn."""
    token = getattr(processor, "image_token", None)
    if token is None or getattr(processor, "chat_template", None) is None:
        return False
    probe = "visalign-probe-text"
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": probe}, {"type": "image"}]}],
        add_generation_prompt=True, tokenize=False)
    return token in text and text.index(token) < text.index(probe)


def structured_messages(messages: list[dict[str, Any]], num_images: int, *, row: str) -> list[dict[str, Any]]:
    """Message list with list-form content; image parts inserted at the start of the first string-content user
    turn (TRL's rule); the number of image parts must equal ``num_images``."""
    out, inserted = [], False
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
            if message["role"] == "user" and not inserted:
                parts = [*([{"type": "image"}] * num_images), *parts]
                inserted = True
            message = {**message, "content": parts}
        out.append(message)
    found = sum(1 for m in out for part in (m.get("content") or []) if part.get("type") == "image")
    if found != num_images:
        raise DataError(f"{row}: {num_images} image(s) but {found} image placeholder(s) in the messages")
    return out


def count_placeholders(prompt: Any) -> int:
    """Image placeholders in a plain prompt (``<image>``) or in message lists (image parts)."""
    if isinstance(prompt, str):
        return prompt.count(IMAGE_PLACEHOLDER)
    return sum(1 for m in prompt if isinstance(m.get("content"), list) for p in m["content"] if p.get("type") == "image")


def normalize_row(row: Mapping[str, Any], index: int, schema: str, *, name: str = "dataset") -> dict[str, Any]:
    """One row in the common format (module docstring); errors name ``name`` and the row."""
    where = f"{name} row {index}"
    if schema == "rlhfv":
        try:
            text = json.loads(row["text"]) if isinstance(row["text"], str) else dict(row["text"])
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: column 'text' is not RLHF-V JSON ({exc})") from None
        missing = [k for k in ("question", "chosen", "rejected") if k not in text]
        if missing:
            raise DataError(f"{where}: RLHF-V 'text' JSON lacks {missing}")
        out = {"images": [row["image"]], "prompt": f"{IMAGE_PLACEHOLDER}\n{text['question']}",
               "chosen": text["chosen"], "rejected": text["rejected"]}
    else:
        images = row["images"] if "images" in row else row["image"]
        images = [] if images is None else (list(images) if isinstance(images, (list, tuple)) else [images])
        out = {"images": images, "prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
    for column in ("chosen", "rejected"):
        value = out[column]
        if (isinstance(value, str) and not value.strip()) or (not isinstance(value, str) and not value):
            raise DataError(f"{where}: column {column!r} is an empty completion")
    if isinstance(out["prompt"], str):
        placeholders = count_placeholders(out["prompt"])
        if placeholders == 0 and len(out["images"]) == 1:
            out["prompt"] = f"{IMAGE_PLACEHOLDER}\n{out['prompt']}"
        elif placeholders != len(out["images"]):
            raise DataError(f"{where}: {len(out['images'])} image(s) but {placeholders} '{IMAGE_PLACEHOLDER}' "
                            "placeholder(s) in the prompt")
    elif not is_conversational(out["prompt"]):
        raise DataError(f"{where}: 'prompt' must be a string or a message list; got {type(out['prompt']).__name__}")
    out.update({key: row[key] for key in REF_COLUMNS if key in row})
    out["index"] = index
    return out


class VisionPreferenceDataset(torch.utils.data.Dataset):
    """A ``datasets.Dataset`` (or list of dicts) of any accepted schema, read lazily as normalised rows.

    Args:
        data: the rows.
        name: used in error messages (``train_dataset``, a file name, ...).
        image_folder: base folder of relative image paths (MIA-DPO's ``--image_folder``).
        schema: one of ``SCHEMAS``; ``None`` detects it from the columns.
        confine_image_paths: image paths must stay under ``image_folder`` (``/etc/...`` or ``../`` refused when an
            image is read, naming the row).

    ``columns`` (precomputed reference values) can be added with ``with_columns``; they are returned with each row.
    """

    def __init__(self, data, *, name: str = "dataset", image_folder: str | Path | None = None,
                 schema: str | None = None, confine_image_paths: bool = False) -> None:
        if isinstance(data, list):
            data = datasets.Dataset.from_list(data)
        if len(data) == 0:
            raise DataError(f"{name} is empty")
        self.data = data
        self.name = name
        self.image_folder = None if image_folder is None else Path(image_folder)
        self.confine_image_paths = confine_image_paths
        self.schema = schema or detect_schema(list(data.column_names), data[0], name=name)
        if self.schema not in SCHEMAS:
            raise DataError(f"{name}: unknown schema {self.schema!r}; use one of {SCHEMAS}")
        self.extra: dict[str, list] = {}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = normalize_row(self.data[int(index)], int(index), self.schema, name=self.name)
        row.update({key: values[int(index)] for key, values in self.extra.items()})
        row["image_folder"] = self.image_folder
        row["confine_image_paths"] = self.confine_image_paths
        row["dataset_name"] = self.name
        return row

    def with_columns(self, columns: Mapping[str, list]) -> "VisionPreferenceDataset":
        """A copy that also returns ``columns`` (one value per row) with each row."""
        for key, values in columns.items():
            if len(values) != len(self):
                raise DataError(f"{self.name}: column {key!r} has {len(values)} values for {len(self)} rows")
        copy = VisionPreferenceDataset(self.data, name=self.name, image_folder=self.image_folder, schema=self.schema,
                                       confine_image_paths=self.confine_image_paths)
        copy.extra = {**self.extra, **columns}
        return copy
