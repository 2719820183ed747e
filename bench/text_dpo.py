"""Steps/s and peak memory of visalign's text ``DPOTrainer`` vs TRL 1.16's ``DPOTrainer``, side by side in one run.

Same model (a random Llama built in code: 4 layers, hidden 256, 4 heads / 2 KV heads, MLP 768, vocabulary 4096 words),
same data (synthetic plain-text pairs: 127-word prompts, 112-127-word completions, so prompt + completion + EOS is
~250 tokens), same settings (batch 8 pairs, AdamW at a constant lr 1e-6, clipping 1.0, no weight decay, the same
precision and gradient accumulation, dropout off, no gradient checkpointing, logging every 10 steps, no checkpoints,
sigmoid loss with β 0.1). Each trainer uses its own default AdamW implementation. The reference is a frozen in-memory
copy for both (TRL: ``ref_model=deepcopy(model)``), then the precomputed reference (TRL ``precompute_ref_log_probs``,
ours ``reference: precomputed``), timed excluding and including the one-off pass. Timing and memory accounting:
``bench/_common.py``. Results and the machine they were measured on: ``bench/README.md``.

Usage::

    python bench/text_dpo.py                      # the full bench (about 10 minutes on 2 CPU cores)
    python bench/text_dpo.py --steps 10 --warmup 2 --repeats 2 --device cpu
    python bench/text_dpo.py --precision bf16 --device cuda
    python bench/text_dpo.py --gpu --device cuda --precision bf16   # TinyLlama-1.1B-sized (about 1.5 min on an H100)
    python bench/text_dpo.py --quick              # tiny sizes, a smoke run of ~30 s
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    Case, Options, Row, Setup, flops_line, options, parse_args, preset, report, run_bench, train_flops, weights_gib,
    write_json,
)

from visalign.testing.causal_lm import tiny_llama  # noqa: E402
from visalign.testing.tokenizers import word_level_tokenizer  # noqa: E402
from visalign.trainers.text import DPOConfig, DPOTrainer  # noqa: E402

PEER = "TRL DPOTrainer, ref copy"
CASES = (
    Case(PEER, "trl"),
    Case("visalign DPOTrainer, frozen_copy", "ours"),
    Case("TRL DPOTrainer, precompute_ref_log_probs", "trl", precompute=True),
    Case("visalign DPOTrainer, precomputed", "ours", precompute=True),
)
FULL = {"vocab": 4096, "hidden": 256, "layers": 4, "heads": 4, "kv_heads": 2, "intermediate": 768, "prompt_words": 127,
        "completion_words": 127, "batch_size": 8, "steps": 6, "warmup": 2}
QUICK = {"vocab": 512, "hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 64, "prompt_words": 24,
         "completion_words": 24, "batch_size": 4, "steps": 2, "warmup": 1}
#: TinyLlama-1.1B's shape (22 layers, hidden 2048, 32 heads / 4 KV heads, MLP 5632, vocabulary 32000), ~512-token
#: sequences, 8 pairs: ~72 TFLOP per step with the live reference (see bench/README.md "On a GPU")
GPU = {"vocab": 32000, "hidden": 2048, "layers": 22, "heads": 32, "kv_heads": 4, "intermediate": 5632,
       "prompt_words": 255, "completion_words": 255, "batch_size": 8, "steps": 8, "warmup": 2}


def synthetic_rows(n: int, vocab: list[str], prompt_words: int, completion_words: int, seed: int = 0) -> dict:
    """``n`` plain-text pairs of random words: fixed-length prompts, completions of 7/8 to all of
    ``completion_words`` words (so batches carry some padding), each with its leading space (TRL's convention)."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choices(vocab, k=k))

    def completion() -> str:
        return " " + words(rng.randint(completion_words - completion_words // 8, completion_words))

    rows = {"prompt": [], "chosen": [], "rejected": []}
    for _ in range(n):
        rows["prompt"].append(words(prompt_words))
        rows["chosen"].append(completion())
        rows["rejected"].append(completion())
    return rows


def build_setup(sizes: dict, opts: Options) -> tuple[Setup, str]:
    vocab = [f"w{i}" for i in range(sizes["vocab"] - 4)]  # + <pad> <unk> <s> </s>
    tokenizer = word_level_tokenizer(vocab, model_max_length=4096)
    def build():
        return tiny_llama(tokenizer, hidden_size=sizes["hidden"], num_layers=sizes["layers"], num_heads=sizes["heads"],
                          num_kv_heads=sizes["kv_heads"], intermediate_size=sizes["intermediate"],
                          max_position_embeddings=1024)

    with torch.device(opts.device):  # random weights built where they train
        model = build()
    tokens = 1 + sizes["prompt_words"] + sizes["completion_words"] + 1
    with torch.device("meta"):
        meta = build()
        ids = torch.zeros(2 * opts.batch_size * opts.grad_accum, tokens, dtype=torch.long)
    flops = train_flops(meta, lambda m: m(input_ids=ids).logits.float().sum())
    rows = synthetic_rows(opts.batch_size * opts.grad_accum * opts.total_steps, vocab, sizes["prompt_words"],
                          sizes["completion_words"])
    setup = Setup(model=model, processor=tokenizer, make_dataset=lambda: Dataset.from_dict(rows),
                  ours_trainer=DPOTrainer, ours_config=DPOConfig, processor_kwarg="processing_class", cases=CASES,
                  flops=flops)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    desc = (f"model: Llama {sizes['layers']} layers, hidden {sizes['hidden']}, MLP {sizes['intermediate']}, vocab "
            f"{len(tokenizer)} ({params:.2f}M params); sequences <= {tokens} tokens; batch {opts.batch_size} pairs x "
            f"grad-accum {opts.grad_accum}; precision {opts.precision}; {opts.warmup} warm-up + {opts.steps} timed "
            f"steps, {opts.repeats} repeat(s)")
    note = (flops_line(flops.policy + flops.forward, "step (live reference; every sequence at the longest length)",
                       weights_gib(meta)))
    return setup, desc, note


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the bench, print the table, return its rows."""
    args = parse_args(argv, __doc__)
    sizes = preset(args, full=FULL, quick=QUICK, gpu=GPU)
    opts = options(args, sizes)
    setup, desc, note = build_setup(sizes, opts)
    rows = run_bench(setup, opts)
    text, result = report("text_dpo", rows, desc, opts, peer=PEER, live=CASES[1].name, precomputed=CASES[3].name,
                          flops_note=note)
    print(text)
    write_json(args.json, result)
    return rows


if __name__ == "__main__":
    main()
