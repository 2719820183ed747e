"""Parity with TRL 1.16's ``DPOTrainer`` on the same tiny LLaVA and conversational vision data (reference §C.11):
same step-0 loss and same parameters after one optimizer step (AdamW, constant lr, clipping 1.0, frozen-copy
reference; TRL gets ``ref_model=deepcopy(model)`` because an in-memory model has no hub name to re-load). The tiny
LLaVA speaks llava-1.5-hf's format (its chat template, a tokenizer that adds BOS), and visalign runs with
``training_format: false``, TRL's format: the chat template's text with no BOS or EOS added."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from PIL import Image

from visalign.testing.vlm import tiny_llava
from visalign.trainers.vlm import VLMDPOConfig, VLMDPOTrainer

trl = pytest.importorskip("trl")

LR = 1e-2
COLOURS = {"red": (220, 38, 38), "green": (34, 160, 60), "blue": (37, 70, 220), "yellow": (240, 200, 30)}


def _data() -> Dataset:
    pairs = (("red", "blue"), ("green", "yellow"), ("blue", "red"), ("yellow", "green"))
    return Dataset.from_dict({
        "images": [[Image.new("RGB", (40, 32), COLOURS[c])] for c, _ in pairs],
        "prompt": [[{"role": "user", "content": "what colour is the square ?"}]] * 4,
        "chosen": [[{"role": "assistant", "content": f"the square is {c} ."}] for c, _ in pairs],
        "rejected": [[{"role": "assistant", "content": f"it is {w} . a {w} square"}] for _, w in pairs],
    })


def test_one_step_matches_trl(tmp_path):
    model, processor = tiny_llava(seed=5, hf_format=True)
    data = _data()
    trl_model = copy.deepcopy(model)
    trl_args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_steps=1, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", max_grad_norm=1.0, weight_decay=0.0,
        bf16=False, use_cpu=True, gradient_checkpointing=False, report_to="none", logging_steps=1, save_strategy="no",
        beta=0.1, max_length=None, seed=0,
    )
    trl_trainer = trl.DPOTrainer(model=trl_model, ref_model=copy.deepcopy(trl_model), args=trl_args,
                                 train_dataset=data, processing_class=copy.deepcopy(processor))
    batch = next(iter(trl_trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = trl_trainer.compute_loss(trl_trainer.model, batch).item()
    trl_trainer.train()

    args = VLMDPOConfig(
        output_dir=str(tmp_path / "ours"), per_device_batch_size=4, max_steps=1, learning_rate=LR,
        lr_scheduler="constant", max_grad_norm=1.0, beta=0.1, reference="frozen_copy", save_steps=0,
        freeze_vision_tower=False, training_format=False,
    )
    ours = VLMDPOTrainer(model=copy.deepcopy(model), args=args, train_dataset=data,
                         processor=copy.deepcopy(processor))
    result = ours.train()

    assert result["train_loss"] == pytest.approx(trl_loss, abs=1e-5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    after_trl = dict(trl_trainer.accelerator.unwrap_model(trl_trainer.model).named_parameters())
    after_ours = dict(ours.accelerator.unwrap_model(ours.model).named_parameters())
    assert after_ours.keys() == after_trl.keys() == before.keys()
    moved = max((after_ours[n] - before[n]).abs().max().item() for n in before)
    assert moved > 1e-3
    for name in before:
        torch.testing.assert_close(after_ours[name].detach(), after_trl[name].detach(), atol=1e-5, rtol=0, msg=name)
