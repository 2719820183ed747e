"""``builtin:shapes-prompts``: prompts of the shapes world for sampling, training and evaluation.

Each prompt names size, colour, shape and background ("a small red circle on a white background"), the template the
shipped ``builtin:shapes-sd`` model is evaluated with (``scripts/train_shapes_models.py``). The ``train`` split draws
scenes from seed 1 and ``test`` from seed 10,000 (the training script's held-out prompts), 256 prompts each. The world
has only 2·6·5·3 = 180 such prompts, so the splits share prompts; what is held out at evaluation are the seeds.
"""

from __future__ import annotations

import random

import datasets

from visalign.shapes.world import describe, sample_scene

MENTIONED = ("size", "colour", "shape", "background")
SPLIT_SEEDS = {"train": 1, "test": 10_000}
NUM_PROMPTS = 256


def shapes_prompts(split: str = "train") -> datasets.Dataset:
    """``NUM_PROMPTS`` prompts (column ``prompt``) of split ``train`` or ``test`` (module docstring)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"builtin:shapes-prompts has splits {sorted(SPLIT_SEEDS)}; got {split!r}")
    rng = random.Random(SPLIT_SEEDS[split])
    prompts = [describe(sample_scene(rng, mention_probability=1.0)[0], MENTIONED) for _ in range(NUM_PROMPTS)]
    return datasets.Dataset.from_dict({"prompt": prompts})
