"""MIA-DPO attention-aware selection of rejected answers, and the data pipeline that writes MIA-DPO JSON
(Liu et al. 2024, "MIA-DPO", §3.3; reference §B.3–B.6).

For each augmented sample (``visalign.data.mia_dpo``) the model answers greedily while its attentions are recorded;
chosen = the ground-truth answer, rejected = the model's answer, kept only when every check passes
(``MIASelectConfig``):

- ``gt != response`` and both are non-empty; ``len(gt) < max_gt_chars`` (512 characters);
- greedy perplexity ``exp(-mean_t log max softmax(scores_t)) > min_perplexity`` (1.1): a confidence filter on the
  model's own tokens, not a gold-text perplexity;
- the attention ratio on the true image is below the threshold for the augmentation and image count
  (``DEFAULT_THRESHOLDS``; ``≤`` for sequences, ``<`` for grids and picture-in-picture, as the released scripts):
  a low ratio means the model did not look at the referenced image, so its answer likely shows sequence confusion or
  element interference.

Attention ratio (``attention_ratio``): layer ``layer`` (16), averaged over heads; the rows of the generated tokens;
the columns of each image's visual tokens (runs of the image token in the prompt); averaged over generated tokens.
Sequence: mean attention on the true image / Σ over images of the mean attention on each. Grid: the single image's
``side``×``side`` map is cut into the collage's rows×cols blocks (ignoring the margins and padding, as the
reference), ratio = the true cell's block sum / total. Picture-in-picture: sum over the central ``pip_fraction`` of
the map (16×16 of 24×24 for LLaVA-1.5) / total.

Where the model's image processor would centre-crop (LLaVA-1.5's), every augmented image is first padded to a square
of the processor's mean colour (``mia_dpo.pad_to_square``, LLaVA's ``expand2square``, as MIA-DPO's LLaVA saw it), so
the model sees every cell and the whole host; the written images are the padded ones, so training sees them whole
too. Before generation the image is corrupted with Gaussian noise (``noise_sigma``: grid σ=225 on the true cell only,
pip σ=49 on the whole image, none for sequences); the written data set keeps the clean image.

Where visalign differs: the "rows of generated tokens" are the query rows that *predict* each generated token
(the last prompt row, then each generated token's row but the last), so a one-token answer has a ratio too; the
reference takes the rows of the generated tokens themselves. The written JSON uses ``<image>`` placeholders, which
the trainer reads (the released scripts write ``<image-placeholder>`` and leave the conversion undocumented).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from visalign.data import mia_dpo
from visalign.data.vlm import prompt_to_messages, template_moves_images_first
from visalign.data.vlm_collator import encode_prompts

#: augmentation -> number of images -> ratio threshold (reference §B.3).
DEFAULT_THRESHOLDS: dict[str, dict[int, float]] = {
    "sequence": {2: 0.8, 3: 0.7, 4: 0.6, 5: 0.6},
    "grid": {2: 0.7, 3: 0.6, 4: 0.5, 6: 0.4, 9: 0.3},
    "pip": {1: 0.8},
}
#: augmentation -> whether a ratio equal to the threshold still passes.
INCLUSIVE = {"sequence": True, "grid": False, "pip": False}
DEFAULT_NOISE = {"sequence": 0.0, "grid": 225.0, "pip": 49.0}


@dataclass
class MIASelectConfig:
    """Selection settings (module docstring); defaults are the released scripts'."""

    layer: int = field(default=16, metadata={"help": "decoder layer whose attentions give the ratio"})
    max_new_tokens: int = field(default=512, metadata={"help": "greedy answer length cap"})
    min_perplexity: float = field(default=1.1, metadata={"help": "keep answers whose greedy perplexity exceeds this"})
    max_gt_chars: int = field(default=512, metadata={"help": "keep samples whose ground truth is shorter than this"})
    thresholds: dict[str, dict[int, float]] = field(default_factory=lambda: {k: dict(v) for k, v in
                                                                            DEFAULT_THRESHOLDS.items()})
    noise_sigma: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_NOISE))
    pip_fraction: float = field(default=16 / 24, metadata={"help": "side of the central pip region / map side"})
    training_format: bool = field(
        default=True, metadata={"help": "prompt with the model's BOS, as in training (VLMDPOConfig.training_format)"}
    )


def greedy_perplexity(scores: Sequence[torch.Tensor]) -> float:
    """``exp(-mean_t log max softmax(scores_t))`` over the generation scores (one ``[V]`` or ``[1, V]`` per step)."""
    if not scores:
        raise ValueError("greedy_perplexity needs at least one generated token")
    top = torch.stack([torch.log_softmax(s.float().reshape(-1), -1).max() for s in scores])
    return math.exp(-top.mean().item())


def image_spans(input_ids: Sequence[int], image_token_id: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each run of ``image_token_id`` (one run per image)."""
    spans, start = [], None
    ids = list(input_ids)
    for i, token in enumerate([*ids, None]):
        if token == image_token_id and start is None:
            start = i
        elif token != image_token_id and start is not None:
            spans.append((start, i - start))
            start = None
    return spans


def _square(length: int) -> int:
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"the image has {length} visual tokens, not a square map; grid/pip ratios need one")
    return side


def attention_ratio(
    rows: torch.Tensor,
    spans: Sequence[tuple[int, int]],
    kind: str,
    target: int,
    *,
    grid: tuple[int, int] | None = None,
    pip_fraction: float = 16 / 24,
) -> float:
    """The attention ratio of the true image (module docstring).

    Args:
        rows: ``[G, T]`` head-averaged attention of the ``G`` generated-token queries over all positions.
        spans: ``(start, length)`` of each image's visual tokens.
        kind: ``sequence`` | ``grid`` | ``pip``.
        target: 1-based index of the true image (sequence) or grid cell (grid); ignored for pip.
        grid: ``(rows, cols)`` of the collage (grid only).
    """
    rows = rows.float()
    if kind == "sequence":
        means = torch.stack([rows[:, s:s + n].mean() for s, n in spans])
        return (means[target - 1] / means.sum()).item()
    if len(spans) != 1:
        raise ValueError(f"a {kind} sample has one image; found {len(spans)} image-token runs")
    start, length = spans[0]
    side = _square(length)
    amap = rows[:, start:start + length].mean(0).reshape(side, side)
    total = amap.sum()
    if kind == "grid":
        if grid is None:
            raise ValueError("attention_ratio(kind='grid') needs grid=(rows, cols)")
        n_rows, n_cols = grid
        i, j = divmod(target - 1, n_cols)
        block = amap[side * i // n_rows: side * (i + 1) // n_rows, side * j // n_cols: side * (j + 1) // n_cols]
        return (block.sum() / total).item()
    if kind == "pip":
        inner = round(side * pip_fraction)
        lo = (side - inner) // 2
        return (amap[lo:lo + inner, lo:lo + inner].sum() / total).item()
    raise ValueError(f"unknown augmentation kind {kind!r}; use sequence, grid or pip")


def passes_threshold(ratio: float, kind: str, num_images: int, thresholds: dict[str, dict[int, float]]) -> bool:
    """True when ``ratio`` is below the threshold of ``kind`` and ``num_images`` (``≤`` for sequences)."""
    table = thresholds.get(kind, {})
    if num_images not in table:
        raise ValueError(f"no {kind} threshold for {num_images} images; configured: {sorted(table)}")
    limit = table[num_images]
    return ratio <= limit if INCLUSIVE[kind] else ratio < limit


SELECTION_JSON = "selection.json"

#: why the selection drops a generated answer (checked in this order) -> its description
DROP_REASONS: dict[str, str] = {
    "empty": "ground truth or answer empty",
    "same_as_ground_truth": "answer equals the ground truth",
    "ground_truth_too_long": "ground truth longer than max_gt_chars",
    "low_perplexity": "greedy perplexity at or below min_perplexity",
    "attention_ratio": "attention ratio on the target image above its threshold",
}


def drop_reason(gt: str, response: str, perplexity: float, ratio_ok: bool, config: MIASelectConfig) -> str | None:
    """The released scripts' filters: ``None`` when the pair is kept, else the first failed filter (a key of
    :data:`DROP_REASONS`): non-empty texts, answer differs from the ground truth, length cap, PPL, attention ratio."""
    if not gt.strip() or not response.strip():
        return "empty"
    if gt.strip() == response.strip():
        return "same_as_ground_truth"
    if len(gt) >= config.max_gt_chars:
        return "ground_truth_too_long"
    if perplexity <= config.min_perplexity:
        return "low_perplexity"
    return None if ratio_ok else "attention_ratio"


def add_gaussian_noise(image: Image.Image, sigma: float, *, rng: np.random.Generator,
                       box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """``image`` plus N(0, σ²) noise per pixel and channel (0..255 scale, clipped), inside ``box`` only if given."""
    if sigma <= 0:
        return image
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    left, top, right, bottom = box or (0, 0, image.width, image.height)
    region = pixels[top:bottom, left:right]
    pixels[top:bottom, left:right] = region + rng.normal(0.0, sigma, region.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@torch.no_grad()
def generate_with_attention(model, processor, images: list[Image.Image], prompt: str, *, layer: int,
                            max_new_tokens: int, training_format: bool = True
                            ) -> tuple[str, float, torch.Tensor, list[int]]:
    """Greedy answer to ``prompt`` (``<image>`` placeholders) with attentions of ``layer``, the prompt encoded as the
    trainer's collator encodes it (``vlm_collator.encode_prompts``: BOS with ``training_format``).

    Returns ``(answer, greedy perplexity, [G, T] head-averaged attention rows of the queries that predicted each
    generated token, prompt token ids)``. The model must use eager attention (``attn_implementation="eager"``).
    """
    inline = processor.image_token if template_moves_images_first(processor) else None
    text = processor.apply_chat_template(prompt_to_messages(prompt, len(images), inline_image_token=inline),
                                         add_generation_prompt=True)
    inputs = encode_prompts(processor, [text], [images], training_format=training_format)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, output_attentions=True,
                         output_scores=True, return_dict_in_generate=True)
    prompt_len = inputs["input_ids"].shape[1]
    generated = out.sequences[0, prompt_len:]
    total = prompt_len + len(generated)
    rows = []
    for step, per_layer in enumerate(out.attentions[: len(generated)]):
        attn = per_layer[layer][0].float().mean(0)  # [queries, keys]
        row = torch.zeros(total, device=attn.device)
        row[: attn.shape[-1]] = attn[-1]
        rows.append(row)
    answer = processor.tokenizer.decode(generated, skip_special_tokens=True).strip()
    return answer, greedy_perplexity(out.scores), torch.stack(rows), inputs["input_ids"][0].tolist()


@dataclass
class SourceSample:
    """A single-image QA sample: its image, question and ground-truth answer."""

    image: Image.Image
    question: str
    answer: str
    id: str


def augment(sample: SourceSample, pool: Sequence[Image.Image], own: int, kind: str, num_images: int,
            rng: random.Random) -> mia_dpo.Augmented:
    """One augmentation of ``sample`` with distractors drawn from ``pool`` (``own`` = the sample's index there)."""
    if kind == "pip":
        host = pool[mia_dpo.choose_distractors(len(pool), own, 1, rng)[0]]
        return mia_dpo.picture_in_picture(sample.image, host, sample.question, rng=rng)
    distractors = [pool[i] for i in mia_dpo.choose_distractors(len(pool), own, num_images - 1, rng)]
    position = rng.randint(1, num_images)
    build = mia_dpo.sequence_sample if kind == "sequence" else mia_dpo.grid_collage
    return build(sample.image, distractors, sample.question, position)


def _noisy(aug: mia_dpo.Augmented, config: MIASelectConfig, rng: np.random.Generator) -> list[Image.Image]:
    sigma = config.noise_sigma.get(aug.kind, 0.0)
    if aug.kind == "grid":
        return [add_gaussian_noise(aug.images[0], sigma, rng=rng, box=aug.boxes[aug.target - 1])]
    return [add_gaussian_noise(image, sigma, rng=rng) for image in aug.images]


def build_mia_dpo(
    model,
    processor,
    samples: Sequence[SourceSample],
    output_dir: str | Path,
    *,
    kinds: Sequence[tuple[str, int]] = (("sequence", 2), ("grid", 4), ("pip", 1)),
    config: MIASelectConfig | None = None,
    seed: int = 0,
) -> Path:
    """Augment every sample (cycling through ``kinds``: ``(augmentation, number of images)``), answer with ``model``,
    keep the pairs that pass the filters, and write ``output_dir/mia_dpo.json`` (reference §B.6: ``id``, ``image``
    (relative paths), ``prompt``, ``chosen``, ``rejected``, ``gt``, plus ``kind``, ``attention_ratio``,
    ``perplexity``) with the images under ``output_dir/images``, and ``output_dir/selection.json`` with the answers
    generated, kept and dropped per :data:`DROP_REASONS` key. Returns the path of ``mia_dpo.json``."""
    config = config or MIASelectConfig()
    out = Path(output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    pool = [s.image for s in samples]
    fill = mia_dpo.square_fill(processor)
    rows: list[dict[str, Any]] = []
    dropped: Counter = Counter()
    for index, sample in enumerate(samples):
        kind, num_images = kinds[index % len(kinds)]
        aug = augment(sample, pool, index, kind, num_images, rng)
        if fill is not None:
            aug = mia_dpo.pad_to_square(aug, fill)
        answer, ppl, attn, prompt_ids = generate_with_attention(
            model, processor, _noisy(aug, config, np_rng), aug.question, layer=config.layer,
            max_new_tokens=config.max_new_tokens, training_format=config.training_format,
        )
        ratio = attention_ratio(attn, image_spans(prompt_ids, image_token_id), kind, aug.target, grid=aug.layout,
                                pip_fraction=config.pip_fraction)
        count = num_images if kind != "pip" else 1
        ratio_ok = passes_threshold(ratio, kind, count, config.thresholds)
        reason = drop_reason(sample.answer, answer, ppl, ratio_ok, config)
        if reason is not None:
            dropped[reason] += 1
            continue
        paths = []
        for k, image in enumerate(aug.images):
            path = Path("images") / f"{sample.id}_{kind}_{k}.png"
            image.save(out / path)
            paths.append(str(path))
        rows.append({"id": f"{sample.id}_{kind}", "image": paths if len(paths) > 1 else paths[0],
                     "prompt": aug.question, "chosen": sample.answer, "rejected": answer, "gt": sample.answer,
                     "kind": kind, "attention_ratio": ratio, "perplexity": ppl})
    path = out / "mia_dpo.json"
    path.write_text(json.dumps(rows, indent=1))
    (out / SELECTION_JSON).write_text(json.dumps({"generated": len(samples), "kept": len(rows),
                                                  "dropped": {k: dropped[k] for k in DROP_REASONS}}, indent=1))
    return path
