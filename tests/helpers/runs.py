"""Killing a training run at a chosen step and reading what it left, for the resume tests of every trainer."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class Killed(Exception):
    """Stands for a SIGKILL of the run."""


def killed_after(trainer_cls: type, step: int) -> type:
    """A subclass of ``trainer_cls`` that dies (like a killed job) right after optimizer step ``step`` and its
    checkpoint."""

    class KilledAfter(trainer_cls):
        def on_step_end(self, at: int) -> None:
            super().on_step_end(at)
            if at == step:
                raise Killed

    return KilledAfter


def trainable_weights(trainer) -> dict[str, torch.Tensor]:
    """Copies of the policy's trainable parameters (a LoRA's weights)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def metric_lines(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_same_weights(trainer, expected) -> None:
    """Every trainable weight of ``trainer`` equals ``expected``'s (a trainer), bit for bit."""
    reference = trainable_weights(expected)
    for name, value in trainable_weights(trainer).items():
        assert torch.equal(value, reference[name]), name
