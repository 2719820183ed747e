"""SPO's clipped-ratio loss (``loss_type: spo``) against hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch

from visalign.losses import PairLogLik, preference_loss


def _pair(chosen, rejected, *, grad=False):
    return PairLogLik(torch.tensor(chosen, requires_grad=grad), torch.tensor(rejected, requires_grad=grad))


def test_inside_the_clip_range_spo_is_the_dpo_sigmoid():
    policy, ref = _pair([0.03, -0.02], [0.01, 0.05]), _pair([0.0, 0.0], [0.0, 0.0])
    spo = preference_loss("spo", policy, ref, beta=10.0)
    dpo = preference_loss("sigmoid", policy, ref, beta=10.0)
    torch.testing.assert_close(spo.losses, dpo.losses)
    assert spo.metrics["spo/clip_fraction"] == 0.0


def test_a_ratio_outside_one_plus_minus_eps_is_clamped_and_passes_no_gradient():
    # chosen log-ratio 0.2 > log 1.1 (clamped to log 1.1); rejected -0.05 inside [log 0.9, log 1.1]
    policy, ref = _pair([0.2], [-0.05], grad=True), _pair([0.0], [0.0])
    out = preference_loss("spo", policy, ref, beta=10.0)
    expected = -math.log(1.0 / (1.0 + math.exp(-10.0 * (math.log(1.1) + 0.05))))
    assert out.losses.item() == pytest.approx(expected, rel=1e-6)
    out.losses.sum().backward()
    assert policy.chosen.grad.item() == 0.0 and policy.rejected.grad.item() != 0.0
    assert out.metrics["spo/clip_fraction"] == pytest.approx(0.5)
    assert out.metrics["spo/ratio_chosen"] == pytest.approx(math.exp(0.2), rel=1e-6)


def test_the_clip_is_an_hparam_in_the_open_unit_interval():
    policy, ref = _pair([0.2], [-0.05]), _pair([0.0], [0.0])
    wide = preference_loss("spo", policy, ref, beta=10.0, spo_ratio_clip=0.5)  # 0.2 < log 1.5: nothing clamped
    torch.testing.assert_close(wide.losses, preference_loss("sigmoid", policy, ref, beta=10.0).losses)
    with pytest.raises(ValueError, match="loss 'spo': hparam 'spo_ratio_clip' must be a number in \\(0, 1\\)"):
        preference_loss("spo", policy, ref, beta=10.0, spo_ratio_clip=1.5)
    with pytest.raises(ValueError, match="loss 'spo' needs a reference"):
        preference_loss("spo", policy, None, beta=10.0)
