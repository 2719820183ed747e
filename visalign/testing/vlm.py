"""Tiny LLaVA-1.5, LLaVA-NeXT and Qwen2-VL models and processors built in code (no hub download).

Recipes from ``shared/reference/vlm-and-text-methods.md`` §D.5: word-level tokenizers with the models' image tokens
as special tokens, CLIP/Qwen2-VL vision towers a few thousand parameters large, and the real processor classes, so
``processor.apply_chat_template`` + ``processor(images=..., text=...)`` expand image tokens exactly as on the hub.
``save_tiny_*`` folders load with ``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from visalign.testing.clip import clip_image_processor, seeded
from visalign.testing.tokenizers import DEFAULT_WORDS, SIMPLE_CHAT_TEMPLATE, word_level_tokenizer

#: LLaVA's image placeholder, one per image in the prompt; the processor expands it to the image's feature count.
IMAGE_TOKEN = "<image>"

#: Qwen2-VL's special tokens (chat turns, vision span, image and video placeholders).
QWEN2_VL_SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Qwen2-VL's chat format (``<|im_start|>role\\n ... <|im_end|>``) with an image rendered as
#: ``<|vision_start|><|image_pad|><|vision_end|>`` and a video as ``<|vision_start|><|video_pad|><|vision_end|>``.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: ``llava-hf/llava-1.5-7b-hf``'s chat template (its ``chat_template.json``): ``USER: <image>\n... ASSISTANT:``, every
#: turn's text followed by a space, images before text; no BOS and no EOS (LLaVA-1.5 trained with both).
LLAVA_HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# LLaVA's vision tower: CLIP ViT at 30 px with 6 px patches, so one image is (30 / 6)^2 = 25 features after the
# "default" strategy drops CLS (num_additional_image_tokens=1), as in §D.5.
_LLAVA_IMAGE_SIZE = 30
_LLAVA_PATCH_SIZE = 6
#: LLaVA-NeXT "anyres" grid: tiles of the 30-px base resolution, as llava-v1.6's [[336, 672], [672, 336], ...].
LLAVA_NEXT_GRID_PINPOINTS = [[30, 60], [60, 30], [60, 60]]
# Qwen2-VL: 14-px patches merged 2x2, so a 56x56 image is a 4x4 patch grid and 4 image tokens.
_QWEN_PATCH, _QWEN_MERGE, _QWEN_TEMPORAL = 14, 2, 2
_QWEN_MIN_PIXELS, _QWEN_MAX_PIXELS = 56 * 56, 4 * 56 * 56


def _llama_text_config(tokenizer: PreTrainedTokenizerFast, hidden_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def _clip_vision_config(hidden_size: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=_LLAVA_IMAGE_SIZE,
        patch_size=_LLAVA_PATCH_SIZE,
    )


def _llava_tokenizer(words: Iterable[str] = DEFAULT_WORDS) -> PreTrainedTokenizerFast:
    return word_level_tokenizer(words, extra_special_tokens=(IMAGE_TOKEN,), chat_template=SIMPLE_CHAT_TEMPLATE)


def _llava_config_kwargs(tokenizer: PreTrainedTokenizerFast, hidden_size: int) -> dict[str, Any]:
    """What ``LlavaConfig`` and ``LlavaNextConfig`` share: the CLIP tower's penultimate layer without CLS
    ("default"), 25 features per 30-px image, the Llama LM and the ``<image>`` token."""
    return {
        "vision_config": _clip_vision_config(hidden_size).to_dict(),
        "text_config": _llama_text_config(tokenizer, hidden_size).to_dict(),
        "image_token_index": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "image_seq_length": (_LLAVA_IMAGE_SIZE // _LLAVA_PATCH_SIZE) ** 2,
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
    }


def _llava_processor(processor_cls, image_processor, tokenizer: PreTrainedTokenizerFast) -> ProcessorMixin:
    """A ``LlavaProcessor`` or ``LlavaNextProcessor`` matching :func:`_llava_config_kwargs`."""
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_LLAVA_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=SIMPLE_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def _init(model_cls, config, tokenizer: PreTrainedTokenizerFast, seed: int) -> PreTrainedModel:
    """Instantiate ``model_cls(config)`` with seeded weights, in eval mode, with the tokenizer's pad id for generate."""
    with seeded(seed):
        model = model_cls(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def tiny_llava(
    *, hidden_size: int = 16, seed: int = 0, words: Iterable[str] = DEFAULT_WORDS, hf_format: bool = False
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A random LLaVA-1.5 (CLIP ViT tower, 2-layer MLP projector, Llama LM) and its ``LlavaProcessor``.

    One ``<image>`` expands to 25 image tokens; the chat template renders ``{"type": "image"}`` as ``<image>``
    (``SIMPLE_CHAT_TEMPLATE``: ``user : <image> ... assistant : ... </s>``). ``words`` is the tokenizer's vocabulary
    (a larger one gives a realistic output-layer cost, e.g. for benchmarks). ``hf_format``: llava-1.5-7b-hf's text
    format instead: its chat template (``LLAVA_HF_CHAT_TEMPLATE``, ``USER:``/``ASSISTANT:`` added to the words) and a
    tokenizer that adds BOS, as LLaVA's Llama tokenizer does.
    """
    tokenizer = _llava_tokenizer((*words, "USER:", "ASSISTANT:") if hf_format else words)
    config = LlavaConfig(**_llava_config_kwargs(tokenizer, hidden_size))
    processor = _llava_processor(LlavaProcessor, clip_image_processor(_LLAVA_IMAGE_SIZE), tokenizer)
    if hf_format:
        processor.chat_template = tokenizer.chat_template = LLAVA_HF_CHAT_TEMPLATE
        tokenizer.add_bos_token = True
    return _init(LlavaForConditionalGeneration, config, tokenizer, seed), processor


def tiny_llava_next(
    *, hidden_size: int = 16, seed: int = 0
) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """A random LLaVA-NeXT ("anyres" tiling over ``LLAVA_NEXT_GRID_PINPOINTS``) and its ``LlavaNextProcessor``.

    ``pixel_values`` are 5-D (images, base + tiles, C, 30, 30) and the processor returns ``image_sizes``; the image
    token count depends on the image's aspect ratio (base tile + unpadded tile features + one newline per row).
    """
    tokenizer = _llava_tokenizer()
    config = LlavaNextConfig(
        **_llava_config_kwargs(tokenizer, hidden_size), image_grid_pinpoints=LLAVA_NEXT_GRID_PINPOINTS
    )
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": _LLAVA_IMAGE_SIZE},
        crop_size={"height": _LLAVA_IMAGE_SIZE, "width": _LLAVA_IMAGE_SIZE},
        image_grid_pinpoints=LLAVA_NEXT_GRID_PINPOINTS,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    processor = _llava_processor(LlavaNextProcessor, image_processor, tokenizer)
    return _init(LlavaNextForConditionalGeneration, config, tokenizer, seed), processor


def tiny_qwen2_vl(*, hidden_size: int = 16, seed: int = 0) -> tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]:
    """A random Qwen2-VL (ViT with 2x2 patch merger, M-RoPE Qwen2 LM) and its ``Qwen2VLProcessor``.

    Images are resized to multiples of 28 px between 56x56 and 112x112 pixels (``min_pixels``/``max_pixels``); a
    56x56 image gives ``pixel_values`` (16, 1176), ``image_grid_thw`` [[1, 4, 4]] and 4 ``<|image_pad|>`` tokens.
    ``mrope_section`` splits the rotary half-dimension (``hidden_size / 2 / 2``) over time, height and width.
    """
    tokenizer = word_level_tokenizer(
        extra_special_tokens=QWEN2_VL_SPECIAL_TOKENS, chat_template=QWEN2_VL_CHAT_TEMPLATE
    )
    ids = dict(zip(QWEN2_VL_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(QWEN2_VL_SPECIAL_TOKENS))))
    num_heads = 2
    half_rotary = hidden_size // num_heads // 2
    if half_rotary < 3:
        raise ValueError(f"tiny_qwen2_vl: hidden_size={hidden_size} too small for M-RoPE's three sections")
    mrope_section = [half_rotary - 2 * (half_rotary // 4), half_rotary // 4, half_rotary // 4]
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": 2,
            "num_attention_heads": num_heads,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 2 * hidden_size,
            "hidden_size": hidden_size,
            "num_heads": 4,
            "mlp_ratio": 2,
            "patch_size": _QWEN_PATCH,
            "spatial_merge_size": _QWEN_MERGE,
            "temporal_patch_size": _QWEN_TEMPORAL,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    geometry = {"patch_size": _QWEN_PATCH, "merge_size": _QWEN_MERGE, "temporal_patch_size": _QWEN_TEMPORAL}
    size = {"shortest_edge": _QWEN_MIN_PIXELS, "longest_edge": _QWEN_MAX_PIXELS}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, **geometry),
        video_processor=Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=True, **geometry),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    return _init(Qwen2VLForConditionalGeneration, config, tokenizer, seed), processor


def _save(model: PreTrainedModel, processor: ProcessorMixin, path: str | Path) -> Path:
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_llava(path: str | Path, **kwargs) -> Path:
    """``save_pretrained`` a ``tiny_llava(**kwargs)`` model and processor into ``path``."""
    return _save(*tiny_llava(**kwargs), path)


def save_tiny_llava_next(path: str | Path, **kwargs) -> Path:
    """``save_pretrained`` a ``tiny_llava_next(**kwargs)`` model and processor into ``path``."""
    return _save(*tiny_llava_next(**kwargs), path)


def save_tiny_qwen2_vl(path: str | Path, **kwargs) -> Path:
    """``save_pretrained`` a ``tiny_qwen2_vl(**kwargs)`` model and processor into ``path``."""
    return _save(*tiny_qwen2_vl(**kwargs), path)
