"""The loss table, weighted combinations, rewards/metrics conventions, dtypes and every configuration error."""

import math

import pytest
import torch

from visalign.losses import (
    LOSSES,
    PairLogLik,
    check_family,
    needs_reference,
    plan_losses,
    preference_loss,
    runnable_losses,
)

# β = 0.5: lc = policy − ref = [0.8, −1.0], lr = [−0.8, −0.5], βΔ = [0.8, −0.25];
# no counts (each 1) → NLL(chosen) = −(1 − 2)/2 = 0.5
POLICY = PairLogLik(torch.tensor([1.0, -2.0]), torch.tensor([-0.5, -2.0]))
REF = PairLogLik(torch.tensor([0.2, -1.0]), torch.tensor([0.3, -1.5]))


def logsig(x):
    return -math.log1p(math.exp(-x))


def test_reference_free_flags():
    assert {n for n, s in LOSSES.items() if s.reference_free} == {"sft", "simpo", "cpo", "orpo", "mapo"}
    assert {n for n, s in LOSSES.items() if not s.paired} == {"kto"}
    assert needs_reference(["sigmoid", "sft"]) and needs_reference("kto")
    assert not needs_reference(["simpo", "sft"]) and not needs_reference("mapo")


def test_families_run_the_losses_their_likelihood_and_data_allow():
    paired = [n for n, s in LOSSES.items() if s.paired]
    generic = [n for n in paired if n not in ("mapo", "spo")]
    assert runnable_losses(likelihood="diffusion") == [n for n in paired if n != "spo"]  # MaPO included
    assert runnable_losses(likelihood="tokens") == generic  # MaPO reads MSEs, SPO clips transition ratios
    assert runnable_losses(likelihood="transition") == generic + ["spo"]
    assert runnable_losses(likelihood="tokens", unpaired=True) == ["kto"]
    assert runnable_losses(likelihood="diffusion", unpaired=True) == []
    check_family(["sigmoid", "sft"], likelihood="diffusion")
    with pytest.raises(ValueError, match=r"loss 'kto' needs unpaired data, but this family trains on pairs; it runs: "
                                         r"sigmoid, cdpo"):
        check_family("kto", likelihood="diffusion")
    with pytest.raises(ValueError, match=r"loss 'sigmoid' needs preference pairs, .* unpaired data; it runs: kto$"):
        check_family("sigmoid", likelihood="tokens", unpaired=True)
    with pytest.raises(ValueError, match=r"loss 'spo' is defined on the transition likelihood only, not on diffusion"):
        check_family("spo", likelihood="diffusion")


def test_every_spec_has_one_line_doc_and_valid_defaults():
    for name, spec in LOSSES.items():
        assert spec.doc and "\n" not in spec.doc, name
        assert spec.resolve(name, {}) == spec.hparams  # the defaults pass their own checks
        assert set(spec.checks) <= set(spec.hparams), name


def test_f_divergence_support_is_trls_set():
    # TRL 1.16 DPOTrainer: f-DPO only with sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop, sft;
    # cdpo is TRL ≤ 0.28's smoothed sigmoid, which allowed it too
    assert {n for n, s in LOSSES.items() if s.f_divergence} == {
        "sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft", "cdpo"
    }


def test_mpo_weighted_combination_equals_weighted_sum():
    # MPO: 0.8·sigmoid + 0.2·bco_pair + 1.0·sft, per pair
    #   sigmoid  = −logσ(βΔ)            = [−logσ(0.8), −logσ(−0.25)]
    #   bco_pair = −logσ(β·lc) − logσ(−β·lr) = [−logσ(0.4) − logσ(0.4), −logσ(−0.5) − logσ(0.25)]
    #   sft      = NLL = 0.5
    sigmoid = [-logsig(0.8), -logsig(-0.25)]
    bco = [-2 * logsig(0.4), -logsig(-0.5) - logsig(0.25)]
    expected = [0.8 * s + 0.2 * b + 0.5 for s, b in zip(sigmoid, bco)]
    out = preference_loss(["sigmoid", "bco_pair", "sft"], POLICY, REF, beta=0.5, loss_weights=[0.8, 0.2, 1.0])
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert out.loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    assert out.metrics["loss/sigmoid"] == pytest.approx(sum(sigmoid) / 2, rel=1e-6)
    assert out.metrics["loss/sft"] == pytest.approx(0.5)
    assert out.metrics["nll_loss"] == pytest.approx(0.5)


def test_default_weights_are_one():
    both = preference_loss(["sigmoid", "hinge"], POLICY, REF, beta=0.5)
    each = [preference_loss(n, POLICY, REF, beta=0.5).losses for n in ("sigmoid", "hinge")]
    assert torch.allclose(both.losses, each[0] + each[1])


def test_trl_reward_metrics_with_reference():
    # rewards = β·(policy − ref): chosen [0.4, −0.5], rejected [−0.4, −0.25]; accuracies strict: [True, False]
    out = preference_loss("sigmoid", POLICY, REF, beta=0.5)
    assert out.chosen_rewards.tolist() == pytest.approx([0.4, -0.5])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.4, -0.25])
    assert out.metrics["rewards/chosen"] == pytest.approx(-0.05)
    assert out.metrics["rewards/rejected"] == pytest.approx(-0.325)
    assert out.metrics["rewards/margins"] == pytest.approx(0.275)
    assert out.metrics["rewards/accuracies"] == 0.5
    assert out.metrics["logps/chosen"] == pytest.approx(-0.5)
    assert out.metrics["logps/rejected"] == pytest.approx(-1.25)
    assert all(isinstance(v, float) for v in out.metrics.values())


def test_reward_fallbacks_without_reference():
    # sft defines no reward of its own → β·policy; simpo before sft → β·mean-token logp (counts None → 1)
    sft = preference_loss("sft", POLICY, None, beta=0.5)
    assert sft.chosen_rewards.tolist() == pytest.approx([0.5, -1.0])
    combo = preference_loss(["sft", "simpo"], POLICY, None, beta=2.0)
    assert combo.chosen_rewards.tolist() == pytest.approx([2.0, -4.0])
    # a reference, when given, defines the rewards even for reference-free losses
    with_ref = preference_loss(["sigmoid", "simpo"], POLICY, REF, beta=0.5)
    assert with_ref.chosen_rewards.tolist() == pytest.approx([0.4, -0.5])


def test_ties_are_not_accurate():
    tie = PairLogLik(torch.tensor([-1.0]), torch.tensor([-1.0]))
    assert preference_loss("simpo", tie, None, beta=2.0).metrics["rewards/accuracies"] == 0.0


def test_rewards_detached_and_losses_carry_gradient():
    policy = PairLogLik(POLICY.chosen.clone().requires_grad_(), POLICY.rejected.clone().requires_grad_())
    for name in ("sigmoid", "mapo", "orpo"):
        ref = REF if not LOSSES[name].reference_free else None
        p = policy if name != "orpo" else PairLogLik(-policy.chosen.abs() - 0.1, -policy.rejected.abs() - 0.1)
        out = preference_loss(name, p, ref, beta=0.5)
        assert out.losses.requires_grad
        assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_low_precision_inputs_give_fp32_maths():
    half = PairLogLik(POLICY.chosen.bfloat16(), POLICY.rejected.bfloat16())
    out = preference_loss("sigmoid", half, REF, beta=0.5)
    assert out.losses.dtype == torch.float32 and out.chosen_rewards.dtype == torch.float32
    exact = preference_loss("sigmoid", PairLogLik(half.chosen.float(), half.rejected.float()), REF, beta=0.5)
    assert torch.equal(out.losses, exact.losses)


def test_plan_resolves_defaults_and_overrides():
    plans = plan_losses(["robust", "aot"], beta=0.1, loss_weights=[1.0, 0.5], label_smoothing=0.2)
    assert [(p.name, p.weight) for p in plans] == [("robust", 1.0), ("aot", 0.5)]
    assert plans[0].hparams == {"label_smoothing": 0.2, "f_divergence_type": "reverse_kl",
                                "f_alpha_divergence_coef": 0.5}
    assert plans[1].hparams == {"label_smoothing": 0.2}


ERRORS = [
    (dict(loss_type="sigmod"), "unknown loss 'sigmod'"),
    (dict(loss_type=[]), "loss_type is empty"),
    (dict(loss_type=["sigmoid", "sigmoid"]), "loss 'sigmoid' is listed twice"),
    (dict(loss_type="kto"), "loss 'kto' is unpaired.*kto_loss"),
    (dict(loss_type="ipo", beta=0.0), "loss 'ipo': beta must be > 0"),
    (dict(loss_type="ipo", beta=-1.0), "beta must be > 0"),
    (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0]), "loss_weights has 1 entries.*2 losses"),
    (dict(loss_type="sigmoid", label_smoothing=0.1), "hparam 'label_smoothing' is not read by any selected loss"),
    (dict(loss_type="sigmoid", simpo_gama=0.5), "hparam 'simpo_gama' is not read.*no loss reads it"),
    (dict(loss_type="robust", label_smoothing=0.5), "loss 'robust': hparam 'label_smoothing' must be a number in"),
    (dict(loss_type="robust", label_smoothing=-0.1), "loss 'robust': hparam 'label_smoothing'"),
    (dict(loss_type="exo_pair", label_smoothing=0.0), "loss 'exo_pair': hparam 'label_smoothing' must be .*\\(0, 1\\)"),
    (dict(loss_type="discopop", discopop_tau=0.0), "loss 'discopop': hparam 'discopop_tau' must be a number > 0"),
    (dict(loss_type="mapo", mapo_snr="0.5"), "loss 'mapo': hparam 'mapo_snr'"),
    (dict(loss_type="cpo", cpo_alpha=-1.0), "loss 'cpo': hparam 'cpo_alpha' must be a number >= 0"),
    (dict(loss_type="sigmoid", f_divergence_type="kl"), "loss 'sigmoid': hparam 'f_divergence_type' must be one of"),
    (dict(loss_type=["sigmoid", "bco_pair"], f_divergence_type="forward_kl"),
     "loss 'bco_pair' does not support f_divergence_type='forward_kl'"),
]


@pytest.mark.parametrize("kwargs, match", ERRORS, ids=[m for _, m in ERRORS])
def test_bad_configuration_raises_naming_loss_and_key(kwargs, match):
    kwargs = {"beta": 0.1, **kwargs}
    loss_type = kwargs.pop("loss_type")
    with pytest.raises(ValueError, match=match):
        preference_loss(loss_type, POLICY, REF, **kwargs)
    with pytest.raises(ValueError, match=match):  # the same check, tensor-free, for config validation
        plan_losses(loss_type, **kwargs)


def test_missing_reference_raises_naming_loss():
    with pytest.raises(ValueError, match="loss 'sigmoid' needs a reference: ref is None"):
        preference_loss(["sft", "sigmoid"], POLICY, None, beta=0.1)


def test_shape_mismatches_raise():
    with pytest.raises(ValueError, match="ref.chosen \\(3,\\) and policy.chosen \\(2,\\)"):
        preference_loss("sigmoid", POLICY, PairLogLik(torch.zeros(3), torch.zeros(3)), beta=0.1)
    with pytest.raises(ValueError, match="PairLogLik.chosen and .rejected must be 1-D"):
        PairLogLik(torch.zeros(2), torch.zeros(3))
