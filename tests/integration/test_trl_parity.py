"""Parity with TRL 1.16's ``DPOTrainer``: same tiny Llama, same 4 pairs, one optimizer step each.

Both trainers see the whole data set as one batch of 4 (so shuffling cannot differ), AdamW (torch, ε = 1, see
``ADAM_EPS``), a constant learning rate without warmup, gradient clipping at 1.0 and dropout disabled. The step-0
loss and every trainable parameter after the update must agree to 1e-5. Reference: a frozen copy (TRL:
``ref_model=deepcopy(model)``) or, with LoRA, the frozen ``ref`` adapter TRL adds to a ``PeftModel`` it is given
(ours: ``reference="ref_adapter"``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from visalign.testing.causal_lm import tiny_llama
from visalign.testing.tokenizers import word_level_tokenizer
from visalign.trainers.text import DPOConfig, DPOTrainer

trl = pytest.importorskip("trl")

# Adam's first step is lr·g/(|g| + ε): with the default ε it is ~lr·sign(g), which turns float rounding of near-zero
# gradients (e.g. lm_head rows of tokens absent from the batch) into lr-sized differences. ε = 1 makes the step ~lr·g,
# so equal gradients <=> equal parameters; both trainers get the same ε.
LR, ADAM_EPS = 1.0, 1.0
# Completions carry their leading space: TRL (and visalign) tokenize prompt + completion as one string.
ROWS = {
    "prompt": ["the red circle is on the left . which shape is red ?", "the sky is blue . what colour is the sky ?",
               "the cat is black . what colour is the cat ?", "the green star is on the top . which shape is green ?"],
    "chosen": [" the circle .", " it is blue .", " it is black .", " the star ."],
    "rejected": [" the square . the square .", " it is red .", " white .", " the cross ."],
}
LOSSES = [
    ("sigmoid", None, {}),
    ("ipo", None, {}),
    ("hinge", None, {}),
    ("robust", None, {"label_smoothing": 0.1}),
    ("sigmoid_norm", None, {}),
    (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], {}),
]


def _peft(model):
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights="gaussian")
    torch.manual_seed(1)
    peft_model = get_peft_model(model, config)
    # Non-zero B so the policy differs from the base model and the ref adapter is a real, distinct reference.
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    return peft_model


def _trained(model, lora: bool) -> dict[str, torch.Tensor]:
    if lora:
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n and ".default." in n}
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("lora", [False, True], ids=["frozen_copy", "lora"])
@pytest.mark.parametrize("loss_type,loss_weights,hparams", LOSSES, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_one_step_matches_trl(tmp_path, lora, loss_type, loss_weights, hparams):
    tokenizer = word_level_tokenizer()
    base = tiny_llama(tokenizer, seed=3)
    model = _peft(base) if lora else base
    data = Dataset.from_dict(ROWS)

    trl_model = copy.deepcopy(model)
    trl_args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_steps=1, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", adam_epsilon=ADAM_EPS, max_grad_norm=1.0,
        weight_decay=0.0, bf16=False, use_cpu=True, gradient_checkpointing=False, report_to="none", logging_steps=1,
        save_strategy="no",
        loss_type=[loss_type] if isinstance(loss_type, str) else loss_type, loss_weights=loss_weights,
        beta=0.1, max_length=None, seed=0, **hparams,
    )
    trl_trainer = trl.DPOTrainer(
        model=trl_model, ref_model=None if lora else copy.deepcopy(trl_model), args=trl_args,
        train_dataset=data, processing_class=copy.deepcopy(tokenizer),
    )
    # Step-0 loss straight from TRL's compute_loss (its logged loss is rounded to 4 decimals).
    batch = next(iter(trl_trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = trl_trainer.compute_loss(trl_trainer.model, batch).item()
    trl_trainer.train()

    ours_model = copy.deepcopy(model)
    args = DPOConfig(
        output_dir=str(tmp_path / "ours"), per_device_batch_size=4, max_steps=1, learning_rate=LR,
        adam_epsilon=ADAM_EPS, lr_scheduler="constant", max_grad_norm=1.0, loss_type=loss_type,
        loss_weights=loss_weights, beta=0.1, max_length=None, reference="ref_adapter" if lora else "frozen_copy",
        save_steps=0, **hparams,
    )
    ours = DPOTrainer(model=ours_model, args=args, train_dataset=data, processing_class=copy.deepcopy(tokenizer))
    result = ours.train()

    assert result["train_loss"] == pytest.approx(trl_loss, abs=1e-5)
    before = _trained(model, lora)
    after_trl = _trained(trl_trainer.accelerator.unwrap_model(trl_trainer.model), lora)
    after_ours = _trained(ours.accelerator.unwrap_model(ours.model), lora)
    assert after_ours.keys() == after_trl.keys() == before.keys()
    moved = max((after_ours[n] - before[n]).abs().max().item() for n in before)
    assert moved > 1e-3  # the step did something, so agreement below is not vacuous
    for name in before:
        torch.testing.assert_close(after_ours[name], after_trl[name], atol=1e-5, rtol=0, msg=name)
