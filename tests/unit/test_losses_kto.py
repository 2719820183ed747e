"""KTO against a hand derivation; z0 estimation, clamping and detaching; weights; errors."""

import inspect
import math

import pytest
import torch

from visalign.losses import LOSSES, UnpairedLogLik, kto_loss, kto_reference_point


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def batch(kl_policy=(-1.0, -1.2, -0.8), requires_grad=False):
    # logps policy [−1, −2, −0.5], ref [−1.5, −1, −0.5] → r = [0.5, −1, 0]; desirable [T, F, T]
    # kl: policy [−1, −1.2, −0.8] − ref [−1.4, −1, −1] = [0.4, −0.2, 0.2] → z0 = 0.4/3
    desirable = torch.tensor([True, False, True])
    policy = UnpairedLogLik(
        torch.tensor([-1.0, -2.0, -0.5], requires_grad=requires_grad), desirable,
        torch.tensor(kl_policy, requires_grad=requires_grad),
    )
    ref = UnpairedLogLik(torch.tensor([-1.5, -1.0, -0.5]), desirable, torch.tensor([-1.4, -1.0, -1.0]))
    return policy, ref


def test_kto_matches_hand_derivation():
    # β = 0.5, λ_D = 1, λ_U = 2: desirable 1 − σ(β(r − z0)), undesirable λ_U·(1 − σ(β(z0 − r)))
    z0 = 0.4 / 3
    expected = [1 - sig(0.5 * (0.5 - z0)), 2 * (1 - sig(0.5 * (z0 + 1.0))), 1 - sig(0.5 * (0.0 - z0))]
    policy, ref = batch()
    out = kto_loss(policy, ref, beta=0.5, undesirable_weight=2.0)
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert out.loss.item() == pytest.approx(sum(expected) / 3, rel=1e-6)
    # rewards β·r split by label; TRL's KTO metric names
    assert out.chosen_rewards.tolist() == pytest.approx([0.25, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.5])
    assert out.metrics["kl"] == pytest.approx(z0)
    assert out.metrics["rewards/chosen"] == pytest.approx(0.125)
    assert out.metrics["rewards/rejected"] == pytest.approx(-0.5)
    assert out.metrics["rewards/margins"] == pytest.approx(0.625)
    assert out.metrics["logps/chosen"] == pytest.approx(-0.75)
    assert out.metrics["logps/rejected"] == pytest.approx(-2.0)


def test_z0_is_clamped_at_zero():
    # kl policy − ref = [−0.6, −0.2, −0.2] → mean −1/3 → z0 = 0: desirable 1 − σ(β·r)
    policy, ref = batch(kl_policy=(-2.0, -1.2, -1.2))
    assert kto_reference_point(policy, ref).item() == pytest.approx(-1 / 3)
    out = kto_loss(policy, ref, beta=0.5)
    assert out.metrics["kl"] == 0.0
    assert out.losses[0].item() == pytest.approx(1 - sig(0.25))


def test_z0_is_detached():
    policy, ref = batch(requires_grad=True)
    out = kto_loss(policy, ref, beta=0.5)
    out.loss.backward()
    assert policy.kl_logps.grad is None
    # d/dr of mean(1 − σ(β(r − z0))) for sample 0 = −β·σ'(·)/3; no gradient reaches z0
    s = sig(0.5 * (0.5 - 0.4 / 3))
    assert policy.logps.grad[0].item() == pytest.approx(-0.5 * s * (1 - s) / 3, rel=1e-5)


def test_given_z0_is_used_detached_and_clamped():
    policy, ref = batch(requires_grad=True)
    z0 = torch.tensor(0.3, requires_grad=True)
    out = kto_loss(policy, ref, beta=0.5, z0=z0)
    assert out.metrics["kl"] == pytest.approx(0.3)
    assert out.losses[0].item() == pytest.approx(1 - sig(0.5 * (0.5 - 0.3)))
    out.loss.backward()
    assert z0.grad is None
    assert kto_loss(policy, ref, beta=0.5, z0=-1.0).metrics["kl"] == 0.0


def test_one_sided_batch_has_only_that_sides_metrics():
    desirable = torch.tensor([True, True])
    policy = UnpairedLogLik(torch.tensor([-1.0, -2.0]), desirable, torch.tensor([-1.0, -1.0]))
    ref = UnpairedLogLik(torch.tensor([-1.0, -2.0]), desirable, torch.tensor([-1.0, -1.0]))
    out = kto_loss(policy, ref, beta=0.1)
    assert "rewards/rejected" not in out.metrics and "rewards/margins" not in out.metrics
    assert out.rejected_rewards.numel() == 0
    assert out.loss.item() == pytest.approx(0.5)  # r = z0 = 0 → 1 − σ(0)


def test_registered_kto_defaults_match_kto_loss():
    spec = LOSSES["kto"]
    signature = inspect.signature(kto_loss).parameters
    assert {k: signature[k].default for k in spec.hparams} == spec.hparams
    assert not spec.paired and not spec.reference_free


def test_kto_errors():
    policy, ref = batch()
    with pytest.raises(ValueError, match="kto: beta must be > 0"):
        kto_loss(policy, ref, beta=0.0)
    with pytest.raises(ValueError, match="kto: undesirable_weight must be >= 0"):
        kto_loss(policy, ref, beta=0.1, undesirable_weight=-1.0)
    no_kl = UnpairedLogLik(policy.logps, policy.desirable)
    with pytest.raises(ValueError, match="kto: UnpairedLogLik.kl_logps is required"):
        kto_loss(no_kl, ref, beta=0.1)
    short = UnpairedLogLik(torch.zeros(2), torch.tensor([True, False]), torch.zeros(2))
    with pytest.raises(ValueError, match="kto: policy.logps \\(3,\\) and ref.logps \\(2,\\)"):
        kto_loss(policy, short, beta=0.1)
    with pytest.raises(ValueError, match="UnpairedLogLik.desirable must be a bool tensor"):
        UnpairedLogLik(torch.zeros(2), torch.tensor([1, 0]))
