"""Tiny CLIP models built in code: transformers ``CLIPModel`` + ``CLIPProcessor``, and an open_clip ViT-H-14 model.

Also the CLIP building blocks the other tiny builders share: a seeded-init context, the CLIP text-tower config for a
word-level tokenizer and the CLIP image processor (shortest-edge bicubic resize, centre crop, OpenAI mean/std).
Shapes follow ``shared/reference/reward-scorers.md`` §2.6 (PickScore/CLIP) and §3.6 (HPS, open_clip).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import open_clip
import torch
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPVisionConfig,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from visalign.testing.tokenizers import clip_style_tokenizer

#: ``logit_scale`` of the tiny CLIPs: ln 100, the value trained CLIP scorers end at (PickScore, HPS clamp).
LOGIT_SCALE_INIT = math.log(100.0)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the block (weight init) and restore the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def clip_text_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 16,
    num_layers: int = 2,
    num_heads: int = 2,
    projection_dim: int = 16,
    hidden_act: str = "quick_gelu",
) -> CLIPTextConfig:
    """A tiny CLIP text-tower config whose vocabulary and special ids match ``tokenizer``.

    ``eos_token_id`` is the tokenizer's (not the legacy 2), so the pooled output is taken at the first ``</s>``
    that ``clip_style_tokenizer`` appends. ``quick_gelu`` is OpenAI CLIP's activation; OpenCLIP towers use ``gelu``.
    """
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=projection_dim,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act=hidden_act,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def clip_image_processor(image_size: int) -> CLIPImageProcessor:
    """CLIP preprocessing at ``image_size``: shortest edge to ``image_size`` (bicubic), centre crop, OpenAI mean/std."""
    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )


def tiny_clip(
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 16,
    num_layers: int = 2,
    num_heads: int = 2,
    projection_dim: int = 16,
    hidden_act: str = "gelu",
    seed: int = 0,
) -> tuple[CLIPModel, CLIPProcessor]:
    """A random ``CLIPModel`` (PickScore/ViT-H layout: ``gelu``, text pooled at EOS) and its ``CLIPProcessor``.

    The processor pairs ``clip_style_tokenizer`` (word-level, 77 tokens) with ``clip_image_processor(image_size)``;
    pass ``image_size=224, patch_size=14`` to exercise the real 224-px preprocessing. Use
    ``hidden_act="quick_gelu"`` for an OpenAI-CLIP-shaped model.
    """
    tokenizer = clip_style_tokenizer()
    text = clip_text_config(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        projection_dim=projection_dim,
        hidden_act=hidden_act,
    )
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=projection_dim,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        hidden_act=hidden_act,
    )
    config = CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=projection_dim,
        logit_scale_init_value=LOGIT_SCALE_INIT,
    )
    with seeded(seed):
        model = CLIPModel(config).eval()
    processor = CLIPProcessor(image_processor=clip_image_processor(image_size), tokenizer=tokenizer)
    return model, processor


def save_tiny_clip(path: str | Path, **kwargs) -> Path:
    """``save_pretrained`` a ``tiny_clip(**kwargs)`` model and processor into ``path``.

    The folder loads with ``CLIPModel``/``AutoModel.from_pretrained(path)`` and ``AutoProcessor.from_pretrained(path)``.
    """
    path = Path(path)
    model, processor = tiny_clip(**kwargs)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


#: Name under which ``register_tiny_open_clip`` adds ``TINY_OPEN_CLIP_CONFIG`` to open_clip's model registry.
TINY_OPEN_CLIP_NAME = "visalign-tiny-ViT-H-14"

#: open_clip's ``ViT-H-14`` config (``open_clip/model_configs/ViT-H-14.json``) at tiny width and depth. The text
#: tower keeps CLIP's 49408-token BPE vocabulary and 77-token context so ``open_clip.get_tokenizer`` works offline
#: with the BPE file bundled in the wheel; that embedding table is most of the ~0.9M parameters.
TINY_OPEN_CLIP_CONFIG: dict = {
    "embed_dim": 16,
    "init_logit_scale": LOGIT_SCALE_INIT,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}

#: Preprocessing stored beside the weights, as in the hub's ``open_clip_config.json`` of laion/CLIP-ViT-H-14.
_OPEN_CLIP_PREPROCESS = {
    "mean": OPENAI_CLIP_MEAN,
    "std": OPENAI_CLIP_STD,
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def tiny_open_clip(*, seed: int = 0) -> open_clip.CLIP:
    """A random ``open_clip.CLIP`` of ``TINY_OPEN_CLIP_CONFIG``, with its preprocessing config attached.

    Built with ``open_clip.CLIP(**config)``, the class ``open_clip.create_model`` instantiates for this config.
    """
    with seeded(seed):
        model = open_clip.CLIP(**deepcopy(TINY_OPEN_CLIP_CONFIG)).eval()
    size = TINY_OPEN_CLIP_CONFIG["vision_cfg"]["image_size"]
    open_clip.set_model_preprocess_cfg(model, {**_OPEN_CLIP_PREPROCESS, "size": size})
    return model


def save_tiny_open_clip(path: str | Path, *, seed: int = 0) -> Path:
    """Write a ``tiny_open_clip`` in the hub layout: ``open_clip_config.json`` + ``open_clip_model.safetensors``.

    Loads with ``open_clip.create_model_and_transforms(f"local-dir:{path}")`` (as ``hf-hub:laion/...`` ids do) and,
    after ``register_tiny_open_clip``, with ``create_model_and_transforms(TINY_OPEN_CLIP_NAME,
    pretrained=str(path / "open_clip_model.safetensors"))``. The tokenizer is ``open_clip.get_tokenizer`` of either.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = tiny_open_clip(seed=seed)
    save_file(model.state_dict(), path / "open_clip_model.safetensors")
    save_config_for_hf(model, path / "open_clip_config.json", model_config=deepcopy(TINY_OPEN_CLIP_CONFIG))
    return path


def register_tiny_open_clip(config_dir: str | Path) -> str:
    """Write ``TINY_OPEN_CLIP_CONFIG`` to ``config_dir/<TINY_OPEN_CLIP_NAME>.json``, add it with
    ``open_clip.add_model_config`` and return the model name to pass to ``open_clip.create_model*``."""
    file = Path(config_dir) / f"{TINY_OPEN_CLIP_NAME}.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG, indent=2))
    open_clip.add_model_config(file)
    return TINY_OPEN_CLIP_NAME
