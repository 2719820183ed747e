"""The scorer contract on SPO's step-aware preference model (``step-aware``): a tiny PickScore-style CLIP built in code,
turned into an SPM with nonzero (as if trained) step modules, saved, and loaded back through ``load_scorer``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reward_models import load_scorer
from reward_models.step_aware import StepAwareScorer
from tests.contract.scorer_contract import ScorerContract
from visalign.testing.clip import save_tiny_clip


def perturb_step_modules(scorer: StepAwareScorer, seed: int = 1, std: float = 0.2) -> StepAwareScorer:
    """Give every modulation weight a seeded random value, so the score depends on the timestep."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for linear in (*scorer.model.step.layers, scorer.model.step.pooled):
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * std)
    return scorer


def save_trained_spm(folder: Path, clip_folder: Path, seed: int = 1) -> Path:
    """An SPM initialised from ``clip_folder``, with perturbed step modules, saved to ``folder``."""
    spm = StepAwareScorer(str(clip_folder), init_from_clip=True)
    return perturb_step_modules(spm, seed).save_pretrained(folder)


class TestStepAwareContract(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, tmp_path_factory):
        clip = save_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=32, patch_size=8)
        return load_scorer("step-aware", model=str(save_trained_spm(tmp_path_factory.mktemp("spm") / "spm", clip)))
