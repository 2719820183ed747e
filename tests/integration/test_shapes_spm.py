"""``builtin:shapes-spm``, the shapes world's step-aware preference model (SPO's SPM, arXiv 2406.04314), made by
``scripts/train_shapes_spm.py``: it loads strictly through ``load_scorer("step-aware")``, judges at a timestep, reads
the shapes world at t = 0, and its shipped held-out figures beat the plain ``shapes`` reward at large t."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from reward_models import load_scorer
from reward_models.step_aware import EVAL_TIMESTEPS, StepAwareScorer
from visalign.errors import NotFoundError
from visalign.models.builtin import SHIPPED_MODELS, resolve_model
from visalign.shapes.render import render_batch
from visalign.shapes.world import OPTIONS, describe, sample_spec


@pytest.fixture(scope="module")
def folder() -> Path:
    try:
        return Path(resolve_model("builtin:shapes-spm"))
    except NotFoundError as error:  # made by a ~20 min run of scripts/train_shapes_spm.py
        pytest.skip(f"builtin:shapes-spm not trained yet: {error}")


@pytest.fixture(scope="module")
def spm(folder) -> StepAwareScorer:
    return load_scorer("step-aware", model=str(folder))


def test_shipped_beside_its_script_seed_and_metrics(folder):
    assert SHIPPED_MODELS["shapes-spm"].startswith("scripts/train_shapes_spm.py")
    for name in ("train_config.json", "metrics.json", "train.log", "step_aware.safetensors", "model.safetensors"):
        assert (folder / name).is_file(), name
    assert "seed" in json.loads((folder / "train_config.json").read_text())
    assert sum(p.stat().st_size for p in folder.iterdir()) < 8 * 2**20  # a few MB, safetensors only
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))


def test_loads_strictly_and_scores_at_a_timestep(spm):
    """The trained step modules are no longer the identity: the same images score differently at t = 0 and 951."""
    specs = [sample_spec(random.Random(i)) for i in range(4)]
    images = render_batch(specs, list(range(4)))
    prompts = [describe(s) for s in specs]
    at_0 = spm.score(images, prompts, timesteps=0).scores
    at_951 = spm.score(images, prompts, timesteps=951).scores
    per_image = spm.score(images, prompts, timesteps=[0, 251, 701, 951]).scores
    assert at_0.shape == (4,) and torch.isfinite(at_0).all() and torch.isfinite(at_951).all()
    assert not torch.allclose(at_0, at_951)
    assert torch.allclose(per_image[0], at_0[0], atol=1e-4) and torch.allclose(per_image[3], at_951[3], atol=1e-4)


def test_prefers_the_right_scene_on_clean_renders(spm):
    """At t = 0 the SPM prefers a render of the prompt to one with its colour or shape changed (fresh seeds)."""
    rng = random.Random(4242)
    right, wrong, prompts = [], [], []
    for i in range(48):
        spec = sample_spec(rng)
        attribute = ("colour", "shape")[i % 2]
        other = rng.choice([v for v in OPTIONS[attribute] if v != getattr(spec, attribute)])
        right.append(spec)
        wrong.append(replace(spec, **{attribute: other}))
        prompts.append(describe(spec))
    seeds = [50_000 + i for i in range(48)]
    p = spm.preference(prompts, render_batch(right, seeds), render_batch(wrong, seeds), timesteps=0).probs
    assert (p > 0.5).float().mean().item() >= 0.8


def test_beats_the_plain_shapes_reward_at_large_t_on_held_out_pairs(folder):
    """metrics.json: accuracy on held-out shapes-sd pairs (seeds not trained or tuned on), the SPM vs the plain
    ``shapes`` reward judging the same noisy predicted x0 (``eval_baseline_accuracy``)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    accuracy = metrics["accuracy"]
    assert set(accuracy) == {f"t={t}" for t in EVAL_TIMESTEPS}
    assert metrics["held_out"]["pairs"] >= 150
    for t in (701, 951):
        assert accuracy[f"t={t}"]["spm"] > accuracy[f"t={t}"]["shapes_baseline"], (t, accuracy[f"t={t}"])
