"""SPO's step-aware preference model (``reward_models.step_aware``) on a tiny PickScore-style CLIP built in code and
loaded with the real ``from_pretrained``: identity at initialisation, timestep dependence, strict and atomic saving,
precision, gradients, and the SPM loss against hand-derived values."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from reward_models import list_scorers, load_scorer
from reward_models import step_aware
from reward_models.step_aware import (
    EVAL_TIMESTEPS,
    STEP_CONFIG,
    STEP_WEIGHTS,
    StepAwareScorer,
    step_aware_preference_loss,
    timestep_frequencies,
)
from tests.contract.scorer_contract import PROMPTS, make_images
from tests.contract.test_step_aware_scorer import save_trained_spm
from visalign.testing.clip import save_tiny_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory, clip):
    return save_trained_spm(tmp_path_factory.mktemp("spm") / "spm", clip)


def pixels(n: int = 4, seed: int = 1) -> torch.Tensor:
    return make_images(n, seed=seed).float() / 255


# ---- the model ------------------------------------------------------------------------------------------------
def test_registered():
    assert "step-aware" in list_scorers()


def test_timestep_features_are_dits_cos_then_sin():
    f = timestep_frequencies(torch.tensor([0.0, 7.0]))
    assert f.shape == (2, 256)
    torch.testing.assert_close(f[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    i = torch.tensor([0, 1, 127])
    args = 7.0 * torch.exp(-math.log(10_000) * i / 128)
    torch.testing.assert_close(f[1, i], torch.cos(args))
    torch.testing.assert_close(f[1, 128 + i], torch.sin(args))


def test_untrained_spm_scores_exactly_as_its_clip_at_every_timestep(clip):
    pick = load_scorer("pickscore", model=str(clip))
    spm = load_scorer("step-aware", model=str(clip), init_from_clip=True)
    images, x = make_images(), pixels()
    expected, expected_tensor = pick.score(images, PROMPTS).scores, pick.score_tensor(x, PROMPTS).scores
    for t in (*EVAL_TIMESTEPS, 999, [0, 251, 701, 999]):
        assert torch.equal(spm.score(images, PROMPTS, timesteps=t).scores, expected), t
        assert torch.equal(spm.score_tensor(x, PROMPTS, timesteps=t).scores, expected_tensor), t
    assert spm.provenance.weights_sha256 == pick.provenance.weights_sha256
    assert spm.provenance.variant.startswith("untrained")


def test_trained_spm_depends_on_the_timestep_per_image(spm_folder):
    spm = load_scorer("step-aware", model=str(spm_folder))
    images = make_images()
    at = {t: spm.score(images, PROMPTS, timesteps=t).scores for t in (0, 501, 951)}
    assert not torch.allclose(at[0], at[501]) and not torch.allclose(at[501], at[951])
    assert torch.equal(spm.score(images, PROMPTS).scores, at[0])  # no timesteps: t = 0
    mixed = torch.tensor([0, 501, 951, 501])
    expected = torch.stack([at[int(t)][i] for i, t in enumerate(mixed)])
    for batch_size in (1, 3, 4):  # timesteps follow their images across batches
        result = spm.score(images, PROMPTS, timesteps=mixed, batch_size=batch_size)
        torch.testing.assert_close(result.scores, expected, rtol=1e-5, atol=1e-5)
        assert result.details["timestep"].tolist() == mixed.float().tolist()
    pair = spm.preference(PROMPTS[:2], images[:2], images[2:], timesteps=501).probs
    rejected = spm.score(images[2:], PROMPTS[:2], timesteps=501).scores
    torch.testing.assert_close(pair, torch.sigmoid(at[501][:2] - rejected))


def test_timesteps_are_checked(spm_folder):
    spm = load_scorer("step-aware", model=str(spm_folder))
    with pytest.raises(ValueError, match="for 4 images"):
        spm.score(make_images(), PROMPTS, timesteps=[0, 1, 2])
    with pytest.raises(ValueError, match=">= 0"):
        spm.score_tensor(pixels(), PROMPTS, timesteps=-1)


# ---- saving and loading ---------------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(spm_folder, tmp_path):
    spm = load_scorer("step-aware", model=str(spm_folder))
    again = load_scorer("step-aware", model=str(spm.save_pretrained(tmp_path / "again")))
    for (name, a), (_, b) in zip(spm.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    images = make_images()
    assert torch.equal(again.score(images, PROMPTS, timesteps=701).scores,
                       spm.score(images, PROMPTS, timesteps=701).scores)
    assert json.loads((tmp_path / "again" / STEP_CONFIG).read_text())["num_layers"] == 2
    # the CLIP part alone is a PickScore-style folder
    assert torch.equal(load_scorer("pickscore", model=str(spm_folder)).score(images, PROMPTS).scores,
                       load_scorer("step-aware", model=str(spm_folder), init_from_clip=True).score(images, PROMPTS)
                       .scores)


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def test_loading_is_strict_and_names_the_key(spm_folder, tmp_path):
    folder = _copy(spm_folder, tmp_path)
    state = load_file(folder / STEP_WEIGHTS)
    save_file({**state, "extra.weight": torch.zeros(1)}, folder / STEP_WEIGHTS)
    with pytest.raises(ValueError, match="unexpected keys: extra.weight"):
        load_scorer("step-aware", model=str(folder))
    state.pop("pooled.bias")
    save_file(state, folder / STEP_WEIGHTS)
    with pytest.raises(ValueError, match="missing keys: pooled.bias"):
        load_scorer("step-aware", model=str(folder))
    config = json.loads((folder / STEP_CONFIG).read_text())
    (folder / STEP_CONFIG).write_text(json.dumps({**config, "hidden_size": 32}))
    with pytest.raises(ValueError, match="hidden_size 32 does not fit"):
        load_scorer("step-aware", model=str(folder))
    (folder / STEP_CONFIG).write_text(json.dumps({**config, "unknown": 1}))
    with pytest.raises(ValueError, match="unknown"):
        load_scorer("step-aware", model=str(folder))
    clip_state = load_file(folder / "model.safetensors")
    clip_state.pop("visual_projection.weight")
    save_file(clip_state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing keys: visual_projection.weight"):
        load_scorer("step-aware", model=str(folder))


def test_a_plain_clip_needs_init_from_clip(clip):
    with pytest.raises(FileNotFoundError, match=f"{STEP_CONFIG}.*init_from_clip=True"):
        load_scorer("step-aware", model=str(clip))


def test_save_is_atomic(spm_folder, clip, tmp_path, monkeypatch):
    target = _copy(spm_folder, tmp_path)
    before = load_file(target / STEP_WEIGHTS)
    untrained = StepAwareScorer(str(clip), init_from_clip=True)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(step_aware, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        untrained.save_pretrained(target)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temporary folder left behind
    assert all(torch.equal(v, load_file(target / STEP_WEIGHTS)[k]) for k, v in before.items())
    untrained.save_pretrained(target)  # replaces the existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
    assert not load_file(target / STEP_WEIGHTS)["pooled.weight"].any()


# ---- precision and gradients ------------------------------------------------------------------------------------
def test_bf16_model_gives_float32_scores(clip, spm_folder):
    images = make_images()
    untrained = load_scorer("step-aware", model=str(clip), init_from_clip=True, dtype="bf16")
    pick = load_scorer("pickscore", model=str(clip), dtype="bf16")
    assert untrained.model.step.pooled.weight.dtype == torch.bfloat16
    result = untrained.score(images, PROMPTS, timesteps=501)
    assert result.scores.dtype == torch.float32 and result.provenance["step-aware"].dtype == "torch.bfloat16"
    assert torch.equal(result.scores, pick.score(images, PROMPTS).scores)
    fp32 = load_scorer("step-aware", model=str(spm_folder)).score(images, PROMPTS, timesteps=501).scores
    bf16 = load_scorer("step-aware", model=str(spm_folder), dtype="bf16").score(images, PROMPTS, timesteps=501)
    assert bf16.scores.dtype == torch.float32
    torch.testing.assert_close(bf16.scores, fp32, rtol=0, atol=0.5)


def test_the_loss_trains_the_step_modules(clip):
    spm = StepAwareScorer(str(clip), init_from_clip=True)
    spm.model.requires_grad_(True).train()
    t = torch.tensor([251, 951])
    s0 = spm.score_tensor(pixels(2, seed=1), PROMPTS[:2], timesteps=t).scores
    s1 = spm.score_tensor(pixels(2, seed=2), PROMPTS[:2], timesteps=t).scores
    loss, _ = step_aware_preference_loss(s0, s1, torch.tensor([1.0, 0.5]), torch.tensor([0.5, 1.0]))
    loss.backward()
    step = spm.model.step
    for name, param in [("layers.0", step.layers[0].weight), ("layers.1", step.layers[1].weight),
                        ("pooled", step.pooled.weight)]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert spm.model.clip.visual_projection.weight.grad.abs().sum() > 0


# ---- the loss (hand-derived) --------------------------------------------------------------------------------
def _loss(s0, s1, label, weights=None):
    w = None if weights is None else torch.tensor(weights)
    return step_aware_preference_loss(torch.tensor(s0), torch.tensor(s1), torch.tensor(label), w)


def test_loss_is_the_kl_to_the_target():
    # a tie fitted exactly costs 0 (CE log 2 minus the target entropy log 2)
    assert float(_loss([21.0], [21.0], [0.5])[0]) == 0.0
    # tie at a gap d: ½·softplus(d) + ½·softplus(−d) − log 2; d = 2 -> 1.126928 − 0.693147
    torch.testing.assert_close(_loss([22.0], [20.0], [0.5])[0], torch.tensor(0.433781), rtol=0, atol=1e-6)
    # a confident correct pair: log(1 + e^−20) ≈ 2.06e−9 (0 in float32)
    assert 0 <= float(_loss([30.0], [10.0], [1.0])[0]) < 1e-8
    assert 0 <= float(_loss([10.0], [30.0], [0.0])[0]) < 1e-8
    # undecided scores on a decided pair: log 2; a confident wrong pair: log(1 + e^3)
    torch.testing.assert_close(_loss([5.0], [5.0], [1.0])[0], torch.tensor(math.log(2)))
    torch.testing.assert_close(_loss([17.0], [20.0], [1.0])[0], torch.tensor(math.log1p(math.exp(3))))


def test_loss_weights_are_normalised():
    l0, l1 = math.log(2), math.log1p(math.exp(3))
    loss, _ = _loss([5.0, 17.0], [5.0, 20.0], [1.0, 1.0], [1.0, 3.0])
    torch.testing.assert_close(loss, torch.tensor((l0 + 3 * l1) / 4))
    torch.testing.assert_close(_loss([5.0, 17.0], [5.0, 20.0], [1.0, 1.0], [0.25, 0.75])[0], loss)
    torch.testing.assert_close(_loss([5.0, 17.0], [5.0, 20.0], [1.0, 1.0])[0], torch.tensor((l0 + l1) / 2))


def test_accuracy_counts_decided_pairs_and_score_ties_are_wrong():
    # correct, wrong, (tie label: excluded), score tie on a decided pair: wrong
    _, accuracy = _loss([3.0, 3.0, 1.0, 2.0], [1.0, 1.0, 2.0, 2.0], [1.0, 0.0, 0.5, 1.0])
    torch.testing.assert_close(accuracy, torch.tensor(1 / 3))
    assert math.isnan(float(_loss([1.0], [2.0], [0.5])[1]))
