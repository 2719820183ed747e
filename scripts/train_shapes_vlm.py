"""Train the shapes world's small VLM (LLaVA-1.5 architecture), seeded and reproducible: ``builtin:shapes-llava``.

    python scripts/train_shapes_vlm.py --out visalign/assets/shapes-llava     # the shipped model
    python scripts/train_shapes_vlm.py --out /tmp/shapes-llava --quick        # a smoke run of a few seconds

The model is ``visalign.testing.vlm.tiny_llava`` at hidden size ``hidden_size`` (CLIP ViT tower of 2 layers on 30-px
crops, 25 image tokens, 2-layer MLP projector, 2-layer Llama) with a word-level tokenizer over the shapes world's
question/answer words (``visalign.shapes.vqa.WORDS``), and the real ``LlavaProcessor``. It is trained by supervised
next-token prediction on the answers only (prompt and image tokens masked) to ``visalign.shapes.vqa`` questions about
rendered 32-px scenes ("what colour is the shape ?", "what shape is it ?", "describe the image ."): ``num_examples``
about one image, and ``num_sequence_examples`` about one image of a sequence of 2 or 3 in MIA-DPO's format
("Image1: <image> Image2: <image> In Image2, what colour is the shape ?", the others unrelated scenes), so that
MIA-DPO's augmented questions mean something to it. The budget is deliberately short: it answers in the right format
and often right, but not always (and among several images sometimes about the wrong one), which leaves
hallucinations for DPO to remove. At the end it answers ``eval_examples`` held-out scenes greedily, alone and in
sequences; ``metrics.json`` has the accuracy per question for each (``accuracy``, ``sequence_accuracy``; checked
against the scene by ``visalign.shapes.vqa.check_answer``) and the timings.

Run time on 2 CPU cores (torch 2.14): see ``metrics.json`` beside the shipped weights (``timings``). The shipped
500 steps were chosen among 300, 400, 500, 600 and 1,000 (seed 0, 150 held-out scenes each way): at 300 and 400 the
sequence questions were still half learnt (colour 0.58 and 0.44 in sequences, 0.98 and 1.00 alone); from 600 on the
model names the colour of the referenced image almost always (0.94-1.00), leaving MIA-DPO nothing of that kind to fix.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from _shapes_common import add_config_flags, config_from_args
from visalign.shapes.vqa import SEQUENCE_LENGTHS, WORDS, accuracy, examples, generate_answers
from visalign.testing.vlm import tiny_llava


@dataclass(frozen=True)
class TrainConfig:
    seed: int = field(default=0, metadata={"help": "seeds initialisation, data and batches"})
    hidden_size: int = field(default=64, metadata={"help": "width of the vision tower and the LM"})
    num_examples: int = field(default=3000, metadata={"help": "rendered training examples about one image"})
    num_sequence_examples: int = field(default=3000, metadata={
        "help": "rendered training examples about one image of a sequence (vqa.SEQUENCE_LENGTHS; MIA-DPO's format)"})
    steps: int = field(default=500, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate (linear warm-up, constant)"})
    warmup_steps: int = field(default=20, metadata={"help": "warm-up steps"})
    eval_examples: int = field(default=150, metadata={"help": "held-out examples answered at the end"})


QUICK = {"num_examples": 64, "num_sequence_examples": 32, "steps": 3, "batch_size": 8, "warmup_steps": 1,
         "eval_examples": 6}


def training_batch(processor, items) -> dict[str, torch.Tensor]:
    """Processor inputs for ``items`` with the answer as target: ``labels`` = input ids, -100 outside the answer
    (prompt, image tokens and padding)."""
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "right"
    prompts = [processor.apply_chat_template(item.messages, add_generation_prompt=True) for item in items]
    full = [processor.apply_chat_template(item.messages + [
        {"role": "assistant", "content": [{"type": "text", "text": item.answer}]}]) for item in items]
    images = [image for item in items for image in item.images]
    inputs = processor(images=images, text=full, padding=True, return_tensors="pt", add_special_tokens=False)
    prompt_lengths = processor(images=images, text=prompts, padding=True, return_tensors="pt",
                               add_special_tokens=False)["attention_mask"].sum(1)
    labels = inputs["input_ids"].clone()
    positions = torch.arange(labels.shape[1])[None, :]
    labels[(positions < prompt_lengths[:, None]) | (inputs["attention_mask"] == 0)] = -100
    return {**inputs, "labels": labels}


def train(model, processor, config: TrainConfig, device: torch.device) -> float:
    """Supervised fine-tuning on the answers; returns seconds per step."""
    data = examples(config.num_examples, seed=config.seed + 1) + examples(
        config.num_sequence_examples, seed=config.seed + 3, num_images=SEQUENCE_LENGTHS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)))
    g = torch.Generator().manual_seed(config.seed + 2)
    model.train()
    started = time.perf_counter()
    for step in range(1, config.steps + 1):
        idx = torch.randint(len(data), (config.batch_size,), generator=g).tolist()
        batch = training_batch(processor, [data[i] for i in idx])
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step == 1 or step % max(1, config.steps // 10) == 0 or step == config.steps:
            print(f"[sft] step {step}/{config.steps} loss {loss.item():.4f} "
                  f"({(time.perf_counter() - started) / step:.3f} s/step)", flush=True)
    model.eval()
    return (time.perf_counter() - started) / config.steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for save_pretrained (model + processor)")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_config_flags(parser, TrainConfig, QUICK)
    args = parser.parse_args(argv)
    config = config_from_args(parser, args, TrainConfig, QUICK)
    began = time.perf_counter()
    device = torch.device(args.device)
    model, processor = tiny_llava(hidden_size=config.hidden_size, seed=config.seed, words=WORDS)
    timings = {"sft_s_per_step": train(model.to(device), processor, config, device)}
    held_out = examples(config.eval_examples, seed=10_000 + config.seed)
    held_out_sequences = examples(config.eval_examples, seed=10_001 + config.seed, num_images=SEQUENCE_LENGTHS)
    t0 = time.perf_counter()
    answers = generate_answers(model, processor, held_out)
    sequence_answers = generate_answers(model, processor, held_out_sequences)
    timings["eval_s"] = time.perf_counter() - t0
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    timings["total_s"] = time.perf_counter() - began
    metrics = {"accuracy": accuracy(held_out, answers),
               "sequence_accuracy": accuracy(held_out_sequences, sequence_answers), "held_out_examples": len(held_out),
               "parameters": sum(p.numel() for p in model.parameters()), "timings": timings,
               "samples": [{"question": e.question, "truth": e.answer, "answer": a}
                           for e, a in zip(held_out[:6], answers)]}
    (args.out / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: metrics[k] for k in ("accuracy", "sequence_accuracy", "parameters", "timings")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
