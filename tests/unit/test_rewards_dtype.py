"""``dtype="auto"`` (half precision where the device computes it natively) and half-precision CLIP scoring with
float32 final products, on a tiny CLIP saved to disk."""

from __future__ import annotations

import pytest
import torch

import reward_models.base as base
from reward_models import load_scorer, resolve_dtype
from visalign.testing.clip import save_tiny_clip


@pytest.fixture(scope="module")
def clip224(tmp_path_factory):
    return str(save_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=224, patch_size=32, hidden_size=64,
                              num_heads=4))


@pytest.mark.parametrize("features, expected", [
    ({"avx512_bf16": True}, torch.bfloat16),
    ({"amx_bf16": True, "avx512_bf16": False}, torch.bfloat16),
    ({"bf16": True}, torch.bfloat16),  # Arm
    ({"avx2": True, "avx512_bf16": False}, torch.float32),
])
def test_auto_on_cpu_is_bf16_only_with_native_bf16(monkeypatch, features, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: features)
    assert resolve_dtype("auto", "cpu") == expected
    assert resolve_dtype("AUTO", torch.device("cpu")) == expected


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_is_bf16_else_fp16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert base.auto_dtype("cuda:1") == expected


def test_auto_needs_a_device_and_names_stay_checked():
    with pytest.raises(ValueError, match="'auto' depends on the device"):
        resolve_dtype("auto")
    with pytest.raises(ValueError, match="choose 'auto' or one of"):
        resolve_dtype("float8")
    assert resolve_dtype(None, "cpu") == torch.float32 and resolve_dtype("bf16", "cuda") == torch.bfloat16


def test_bf16_towers_keep_float32_scores_close_to_float32(clip224):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 96, 128), generator=g, dtype=torch.uint8)
    prompts = ["a red circle", "a blue square", "a red circle", "a cat"]
    full = load_scorer("pickscore", model=clip224, dtype="float32").score(images, prompts)
    half = load_scorer("pickscore", model=clip224, dtype="bfloat16").score(images, prompts)
    assert half.scores.dtype == torch.float32 and half.details["cosine"].dtype == torch.float32
    assert half.provenance["pickscore"].dtype == "torch.bfloat16"
    assert full.provenance["pickscore"].dtype == "torch.float32"
    difference = (half.details["cosine"] - full.details["cosine"]).abs().max()
    assert 0 < difference < 5e-3  # bf16 rounding shows, within the tolerance documented in docs/rewards.md


def test_auto_resolves_in_the_scorer_and_is_recorded(clip224, monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False})
    assert load_scorer("pickscore", model=clip224, dtype="auto").provenance.dtype == "torch.float32"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert load_scorer("clip_score", model=clip224, dtype="auto").provenance.dtype == "torch.bfloat16"
