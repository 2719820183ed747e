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
    python bench/vlm_dpo.py --quick               # tiny sizes, a smoke run of ~30 s
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
from datasets import Dataset
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Case, Options, Row, Setup, options, parse_args, report, run_bench  # noqa: E402

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
#: Chat-template words of the tiny LLaVA template; the rest of the vocabulary is ``w0 w1 ...``.
TEMPLATE_WORDS = ("user", "assistant", "system", ":")


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
    model, processor = tiny_llava(hidden_size=sizes["hidden"], seed=0, words=(*TEMPLATE_WORDS, *vocab))
    rows = synthetic_rows(opts.batch_size * opts.grad_accum * opts.total_steps, vocab, sizes["prompt_words"],
                          sizes["completion_words"], sizes["image_px"])
    setup = Setup(model=model, processor=processor, make_dataset=lambda: Dataset.from_dict(rows),
                  ours_trainer=VLMDPOTrainer, ours_config=VLMDPOConfig, processor_kwarg="processor",
                  ours_extra={"freeze_vision_tower": False}, cases=CASES)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    desc = (f"model: LLaVA-1.5 (CLIP ViT 2 layers + Llama 2 layers, hidden {sizes['hidden']}, vocab "
            f"{model.config.text_config.vocab_size}, {params:.2f}M params); 1 image ({sizes['image_px']} px -> 25 "
            f"tokens) + {sizes['prompt_words']}-word prompt + <= {sizes['completion_words']}-word answers; batch "
            f"{opts.batch_size} pairs x grad-accum {opts.grad_accum}; precision {opts.precision}; {opts.warmup} "
            f"warm-up + {opts.steps} timed steps, {opts.repeats} repeat(s)")
    return setup, desc


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the bench, print the table, return its rows."""
    args = parse_args(argv, __doc__)
    sizes = QUICK if args.quick else FULL
    opts = options(args, sizes, max_length=None)
    setup, desc = build_setup(sizes, opts)
    rows = run_bench(setup, opts)
    print(report(rows, desc, opts, peer=PEER, live=CASES[1].name, precomputed=CASES[2].name))
    return rows


if __name__ == "__main__":
    main()
