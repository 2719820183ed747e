"""Steps/s and peak memory of visalign's ``VLMDPOTrainer`` vs TRL 1.16's ``DPOTrainer`` on LLaVA, side by side in one run.

Same model (a random LLaVA-1.5 built in code by ``visalign.testing.vlm.tiny_llava``: CLIP ViT 2 layers and Llama 2
layers at hidden 256, a 4096-word vocabulary, one image = 25 image tokens), same data (conversational vision pairs in TRL's format: one
random-noise image per row, a 40-word question, 40-56-word answers, ~130 tokens per sequence), same settings (batch 8
pairs, AdamW at a constant lr 1e-6, clipping 1.0, no weight decay, the same precision and gradient accumulation,
dropout off, no gradient checkpointing, every weight trained including the vision tower, no ``max_length``, logging
every 10 steps, sigmoid loss with β 0.1). Both collate images on the fly. The reference is a frozen in-memory copy for
both; then ours with the precomputed reference (TRL refuses ``precompute_ref_log_probs`` for vision data), timed
excluding and including the one-off pass. Timing and memory accounting: ``bench/_common.py``; results:
``bench/README.md``.

Usage::

    python bench/vlm_dpo.py                       # the full bench
    python bench/vlm_dpo.py --steps 10 --warmup 2 --repeats 2 --device cpu
    python bench/vlm_dpo.py --precision bf16 --device cuda
    python bench/vlm_dpo.py --gpu --device cuda --precision bf16   # LLaVA-1.5-shaped at 1.4B (about 1.5 min, H100)
    python bench/vlm_dpo.py --quick               # tiny sizes, a smoke run of ~30 s
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from transformers import LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    Case, Options, Row, Setup, flops_line, options, parse_args, preset, report, run_bench, train_flops, weights_gib,
    write_json,
)

from visalign.testing.clip import clip_image_processor, seeded  # noqa: E402
from visalign.testing.vlm import tiny_llava  # noqa: E402
from visalign.trainers.vlm import VLMDPOConfig, VLMDPOTrainer  # noqa: E402

PEER = "TRL DPOTrainer, ref copy"
CASES = (
    Case(PEER, "trl"),
    Case("visalign VLMDPOTrainer, frozen_copy", "ours"),
    Case("visalign VLMDPOTrainer, precomputed", "ours", precompute=True),
)
FULL = {"vocab": 4096, "hidden": 256, "prompt_words": 40, "completion_words": 56, "image_px": 64, "batch_size": 8, "steps": 10,
        "warmup": 2}
QUICK = {"vocab": 512, "hidden": 16, "prompt_words": 6, "completion_words": 8, "image_px": 32, "batch_size": 2, "steps": 2,
         "warmup": 1}
#: LLaVA-1.5's vision side (CLIP ViT-L/14 at 336 px: 1024 wide, 24 layers, 576 image tokens) on a TinyLlama-1.1B
#: language model (the 7B LM's weights, gradients, AdamW and reference copy would not fit in 80 GB), every weight
#: trained; ~680-token sequences, 8 pairs: ~110 TFLOP per step with the live reference (bench/README.md "On a GPU")
GPU = {**FULL, "vocab": 32000, "hidden": 2048, "image_px": 336, "batch_size": 8, "steps": 8, "warmup": 2,
       "scale": {"vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                            "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
                 "text": {"intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
                          "num_key_value_heads": 4, "head_dim": 64, "max_position_embeddings": 1024}}}
#: Chat-template words of the tiny LLaVA template; the rest of the vocabulary is ``w0 w1 ...``.
TEMPLATE_WORDS = ("user", "assistant", "system", ":")
#: Tokens the chat template adds around a prompt and answer (``user : <image> ... assistant : ... </s>``), at most.
CHAT_TEMPLATE_TOKENS = 8


def synthetic_rows(n: int, vocab: list[str], prompt_words: int, completion_words: int, image_px: int,
                   seed: int = 0) -> dict:
    """``n`` conversational vision pairs (TRL's format): a random-noise RGB image, a ``prompt_words`` question, and
    answers of 5/7 to all of ``completion_words`` words."""
    rng = random.Random(seed)
    pixels = np.random.default_rng(seed)

    def words(k: int) -> str:
        return " ".join(rng.choices(vocab, k=k))

    def answer() -> list[dict]:
        k = rng.randint(completion_words - 2 * completion_words // 7, completion_words)
        return [{"role": "assistant", "content": words(k)}]

    rows = {"images": [], "prompt": [], "chosen": [], "rejected": []}
    for _ in range(n):
        rows["images"].append([Image.fromarray(pixels.integers(0, 256, (image_px, image_px, 3), dtype=np.uint8))])
        rows["prompt"].append([{"role": "user", "content": [{"type": "image"},
                                                            {"type": "text", "text": words(prompt_words)}]}])
        rows["chosen"].append(answer())
        rows["rejected"].append(answer())
    return rows


def build_setup(sizes: dict, opts: Options) -> tuple[Setup, str]:
    vocab = [f"w{i}" for i in range(sizes["vocab"] - 5 - len(TEMPLATE_WORDS))]  # + <pad> <unk> <s> </s> <image>
    with torch.device(opts.device):  # random weights built where they train
        model, processor = build_model(sizes, vocab)
    with torch.device("meta"):
        meta, _ = build_model(sizes, vocab)
    flops = llava_flops(meta, processor, sizes, 2 * opts.batch_size * opts.grad_accum)
    rows = synthetic_rows(opts.batch_size * opts.grad_accum * opts.total_steps, vocab, sizes["prompt_words"],
                          sizes["completion_words"], sizes["image_px"])
    setup = Setup(model=model, processor=processor, make_dataset=lambda: Dataset.from_dict(rows),
                  ours_trainer=VLMDPOTrainer, ours_config=VLMDPOConfig, processor_kwarg="processor",
                  ours_extra={"freeze_vision_tower": False}, cases=CASES, flops=flops)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    vision, text = model.config.vision_config, model.config.text_config
    desc = (f"model: LLaVA-1.5 (CLIP ViT {vision.num_hidden_layers} layers x {vision.hidden_size} + Llama "
            f"{text.num_hidden_layers} layers x {text.hidden_size}, vocab {text.vocab_size}, {params:.2f}M params); "
            f"1 image ({sizes['image_px']} px -> {model.config.image_seq_length} tokens) + {sizes['prompt_words']}-word "
            f"prompt + <= {sizes['completion_words']}-word answers; batch "
            f"{opts.batch_size} pairs x grad-accum {opts.grad_accum}; precision {opts.precision}; {opts.warmup} "
            f"warm-up + {opts.steps} timed steps, {opts.repeats} repeat(s)")
    note = flops_line(flops.policy + flops.forward, "step (live reference; every answer at the longest length)",
                      weights_gib(meta))
    return setup, desc, note


def build_model(sizes: dict, vocab: list[str]):
    """``tiny_llava`` at ``sizes["hidden"]``; with ``sizes["scale"]`` its vision and text configs are enlarged and the
    model is built again (random, seeded), and the processor's crop and patch size follow the vision tower."""
    model, processor = tiny_llava(hidden_size=sizes["hidden"], seed=0, words=(*TEMPLATE_WORDS, *vocab))
    scale = sizes.get("scale")
    if scale is None:
        return model, processor
    config = model.config
    for key, value in scale["vision"].items():
        setattr(config.vision_config, key, value)
    for key, value in scale["text"].items():
        setattr(config.text_config, key, value)
    config.image_seq_length = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    processor.image_processor = clip_image_processor(config.vision_config.image_size)
    processor.patch_size = config.vision_config.patch_size
    with seeded(0):
        model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


def llava_flops(meta, processor, sizes: dict, sequences: int):
    """:class:`TrainFlops` of one step on the meta device: the vision tower and projector on one image per sequence
    (chosen and rejected each carry the image), the language model on image tokens + prompt + the longest answer."""
    config = meta.config
    px = config.vision_config.image_size
    tokens = config.image_seq_length + sizes["prompt_words"] + sizes["completion_words"] + CHAT_TEMPLATE_TOKENS
    with torch.device("meta"):
        pixels = torch.zeros(sequences, 3, px, px)
        ids = torch.zeros(sequences, tokens, dtype=torch.long)

    def loss(model):
        features = model.model.get_image_features(pixel_values=pixels, vision_feature_layer=config.vision_feature_layer,
                                                  vision_feature_select_strategy="default")
        out = model(input_ids=ids).logits.float().sum()
        return out + sum(f.float().sum() for f in features.pooler_output)

    return train_flops(meta, loss)


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the bench, print the table, return its rows."""
    args = parse_args(argv, __doc__)
    sizes = preset(args, full=FULL, quick=QUICK, gpu=GPU)
    opts = options(args, sizes, max_length=None)
    setup, desc, note = build_setup(sizes, opts)
    rows = run_bench(setup, opts)
    text, result = report("vlm_dpo", rows, desc, opts, peer=PEER, live=CASES[1].name, precomputed=CASES[2].name,
                          flops_note=note)
    print(text)
    write_json(args.json, result)
    return rows


if __name__ == "__main__":
    main()
