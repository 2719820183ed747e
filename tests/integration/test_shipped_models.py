"""The shipped shapes models load through their libraries' own from_pretrained and do better than chance."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline
from transformers import AutoModelForImageTextToText, AutoProcessor

from reward_models import load_scorer
from visalign.evaluation.generate import load_prompts
from visalign.models.builtin import resolve_model
from visalign.shapes.vqa import accuracy, examples, generate_answers


def _mean_reward(pipe, prompts, seed=0) -> float:
    images = pipe(prompts, num_inference_steps=10, guidance_scale=3.0, height=32, width=32, output_type="pt",
                  generator=torch.Generator().manual_seed(seed)).images
    return load_scorer("shapes").score(images, prompts).scores.mean().item()


def test_shapes_sd_draws_what_a_random_unet_cannot():
    pipe = StableDiffusionPipeline.from_pretrained(resolve_model("builtin:shapes-sd"))
    pipe.set_progress_bar_config(disable=True)
    prompts = load_prompts("builtin:shapes-prompts", split="test", limit=12)
    trained = _mean_reward(pipe, prompts)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.normal_(0, 0.02)
    assert trained > 0.55 and trained > _mean_reward(pipe, prompts) + 0.2


def test_shapes_llava_answers_above_chance():
    path = resolve_model("builtin:shapes-llava")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    items = examples(24, seed=30_000, questions=("colour", "shape"))
    result = accuracy(items, generate_answers(model, processor, items))
    assert result["colour"] > 0.5 and result["shape"] > 0.2  # chance: 1/6 and 1/5
