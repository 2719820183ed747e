"""Every paired loss against a value derived by hand from its formula (Python ``math`` on scalars, not the library).

Shared reference-based batch (B = 2), β = 0.5:
    policy chosen  [ 1.0, -1.0]   policy rejected [-0.5, -2.0]
    ref    chosen  [ 0.2, -1.0]   ref    rejected [ 0.3, -1.5]
    lc = policy − ref (chosen)   = [0.8,  0.0]
    lr = policy − ref (rejected) = [-0.8, -0.5]
    Δ = lc − lr = [1.6, 0.5]  →  βΔ = [0.8, 0.25]
    counts: chosen [4, 2], rejected [2, 5]  →  Δ̄ = lc/|y_w| − lr/|y_l| = [0.2 + 0.4, 0 + 0.1] = [0.6, 0.1]
"""

import math

import pytest
import torch

from visalign.losses import PairLogLik, preference_loss
from visalign.losses.divergences import f_divergence_score
from visalign.losses.reference_free import log1mexp, mapo_link

BETA = 0.5
LC, LR = [0.8, 0.0], [-0.8, -0.5]
Z = [0.8, 0.25]  # βΔ


def logsig(x):
    return -math.log1p(math.exp(-x))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def pair(chosen, rejected, chosen_count=None, rejected_count=None, requires_grad=False):
    t = lambda v: None if v is None else torch.tensor(v, requires_grad=requires_grad)  # noqa: E731
    return PairLogLik(t(chosen), t(rejected), t(chosen_count), t(rejected_count))


def batch(requires_grad=False):
    policy = pair([1.0, -1.0], [-0.5, -2.0], [4.0, 2.0], [2.0, 5.0], requires_grad=requires_grad)
    ref = pair([0.2, -1.0], [0.3, -1.5], [4.0, 2.0], [2.0, 5.0])
    return policy, ref


def per_pair(loss_type, **hp):
    policy, ref = batch()
    out = preference_loss(loss_type, policy, ref, beta=BETA, **hp)
    return out.losses.tolist()


EXPECTED = {
    # DPO: −logσ(βΔ)
    "sigmoid": ({}, [-logsig(z) for z in Z]),
    # cDPO, ε = 0.1: −0.9·logσ(z) − 0.1·logσ(−z)
    "cdpo": ({"label_smoothing": 0.1}, [-0.9 * logsig(z) - 0.1 * logsig(-z) for z in Z]),
    # hinge: max(0, 1 − z) = [0.2, 0.75]
    "hinge": ({}, [0.2, 0.75]),
    # IPO: (Δ̄ − 1/(2β))² = (Δ̄ − 1)² = [0.16, 0.81]
    "ipo": ({}, [0.16, 0.81]),
    # rDPO, ε = 0.1: (−0.9·logσ(z) + 0.1·logσ(−z)) / 0.8
    "robust": ({"label_smoothing": 0.1}, [(-0.9 * logsig(z) + 0.1 * logsig(-z)) / 0.8 for z in Z]),
    # EXO, ε = 0.1: σ(z)(logσ(z) − log 0.9) + σ(−z)(logσ(−z) − log 0.1)
    "exo_pair": (
        {"label_smoothing": 0.1},
        [sig(z) * (logsig(z) - math.log(0.9)) + sig(-z) * (logsig(-z) - math.log(0.1)) for z in Z],
    ),
    # NCA: −logσ(β·lc) − ½logσ(−β·lc) − ½logσ(−β·lr) with β·lc = [0.4, 0], β·lr = [−0.4, −0.25]
    "nca_pair": ({}, [-logsig(0.4) - 0.5 * logsig(-0.4) - 0.5 * logsig(0.4),
                      -logsig(0.0) - 0.5 * logsig(0.0) - 0.5 * logsig(0.25)]),
    # BCO pair: −logσ(β·lc) − logσ(−β·lr)
    "bco_pair": ({}, [-logsig(0.4) - logsig(0.4), -logsig(0.0) - logsig(0.25)]),
    # SPPO hard, 1/(2β) = 1: (lc − 1)² + (lr + 1)² = [0.04 + 0.04, 1 + 0.25]
    "sppo_hard": ({}, [0.08, 1.25]),
    # AOT: policy margins [1.5, 1.0] sorted [1.0, 1.5]; ref margins [−0.1, 0.5] sorted [−0.1, 0.5];
    # differences [1.1, 1.0], times β = [0.55, 0.5]; ε = 0 → −logσ
    "aot": ({}, [-logsig(0.55), -logsig(0.5)]),
    # AOT unpaired: lc sorted [0, 0.8], lr sorted [−0.8, −0.5]; differences [0.8, 1.3], times β = [0.4, 0.65]
    "aot_unpaired": ({}, [-logsig(0.4), -logsig(0.65)]),
    # APO zero: (1 − σ(β·lc)) + σ(β·lr)
    "apo_zero": ({}, [1 - sig(0.4) + sig(-0.4), 1 - sig(0.0) + sig(-0.25)]),
    # APO down: σ(β·lc) + 1 − σ(β(lc − lr)) = σ(β·lc) + 1 − σ(z)
    "apo_down": ({}, [sig(0.4) + 1 - sig(0.8), sig(0.0) + 1 - sig(0.25)]),
    # DiscoPOP, τ = 0.05: m = σ(z/τ); (1 − m)(−logσ(z)) + m·e^{−z}
    "discopop": ({}, [(1 - sig(z / 0.05)) * -logsig(z) + sig(z / 0.05) * math.exp(-z) for z in Z]),
    # length-normalised DPO: −logσ(β·Δ̄) = −logσ([0.3, 0.05])
    "sigmoid_norm": ({}, [-logsig(0.3), -logsig(0.05)]),
    # SFT: −Σ chosen / Σ count = −(1.0 − 1.0)/6 = 0, broadcast
    "sft": ({}, [0.0, 0.0]),
}


@pytest.mark.parametrize("loss_type", sorted(EXPECTED))
def test_reference_loss_matches_hand_derivation(loss_type):
    hp, expected = EXPECTED[loss_type]
    assert per_pair(loss_type, **hp) == pytest.approx(expected, rel=1e-5, abs=1e-6)


# f-DPO scores for the sigmoid loss: Δ = f'(lc) − f'(lr), loss −logσ(βΔ).
F_PRIME = {
    "forward_kl": lambda l: 1 - math.exp(-l),
    "js_divergence": lambda l: math.log(2) + logsig(l),
    # α = 0.5: (e^{(α−1)l} − 1)/(α − 1) = −2(e^{−l/2} − 1)
    "alpha_divergence": lambda l: -2 * (math.exp(-0.5 * l) - 1),
}


@pytest.mark.parametrize("kind", sorted(F_PRIME))
def test_f_divergence_sigmoid_matches_hand_derivation(kind):
    fp = F_PRIME[kind]
    expected = [-logsig(BETA * (fp(c) - fp(r))) for c, r in zip(LC, LR)]
    assert per_pair("sigmoid", f_divergence_type=kind) == pytest.approx(expected, rel=1e-5)


def test_f_divergence_reverse_kl_and_alpha_one_are_identity():
    l = torch.tensor([-3.0, 0.0, 2.5])
    assert torch.equal(f_divergence_score(l, "reverse_kl", 0.5), l)
    assert torch.equal(f_divergence_score(l, "alpha_divergence", 1.0), l)


def test_f_divergence_alpha_clamps_exponent_to_stay_finite():
    # α = 3: exponent 2·l = 2000 is clamped at 80 → (e^80 − 1)/2, finite in fp32
    score = f_divergence_score(torch.tensor([1000.0]), "alpha_divergence", 3.0)
    assert torch.isfinite(score).all()
    assert score.item() == pytest.approx(math.expm1(80.0) / 2, rel=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_policy_equal_to_ref_gives_ln2_ipo_and_zero_rewards(beta):
    policy = pair([-3.0, -7.5, -1.0], [-2.0, -4.0, -9.0], [3.0, 5.0, 1.0], [2.0, 4.0, 6.0])
    sigmoid = preference_loss("sigmoid", policy, policy, beta=beta)
    assert sigmoid.loss.item() == pytest.approx(math.log(2), rel=1e-6)
    assert preference_loss("ipo", policy, policy, beta=beta).loss.item() == pytest.approx((1 / (2 * beta)) ** 2)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert sigmoid.metrics[key] == 0.0
    assert torch.equal(sigmoid.chosen_rewards, torch.zeros(3))


def test_sigmoid_decreases_when_chosen_logp_rises():
    policy, ref = batch(requires_grad=True)
    preference_loss("sigmoid", policy, ref, beta=BETA).loss.backward()
    # d/d chosen_i of mean(−logσ(βΔ_i)) = −β·σ(−βΔ_i)/B < 0, and the opposite for rejected
    expected = [-BETA * sig(-z) / 2 for z in Z]
    assert policy.chosen.grad.tolist() == pytest.approx(expected, rel=1e-5)
    assert policy.rejected.grad.tolist() == pytest.approx([-g for g in expected], rel=1e-5)
    bumped = pair([1.1, -0.9], [-0.5, -2.0])
    assert preference_loss("sigmoid", bumped, batch()[1], beta=BETA).loss < preference_loss(
        "sigmoid", *batch(), beta=BETA
    ).loss


# Reference-free batch: policy chosen [−2, −3] (counts [4, 2]), rejected [−4, −1] (counts [2, 5])
#   mean token logps ā_w = [−0.5, −1.5], ā_l = [−2.0, −0.2]; NLL(chosen) = −(−2 − 3)/(4 + 2) = 5/6
FREE = pair([-2.0, -3.0], [-4.0, -1.0], [4.0, 2.0], [2.0, 5.0])
A_W, A_L, NLL = [-0.5, -1.5], [-2.0, -0.2], 5 / 6


def test_sft_is_token_mean_nll_broadcast():
    out = preference_loss("sft", FREE, None, beta=0.1)
    assert out.losses.tolist() == pytest.approx([NLL, NLL])
    assert out.metrics["nll_loss"] == pytest.approx(NLL)


def test_simpo_matches_hand_derivation():
    # β = 2, γ = 0.5: z = β(ā_w − ā_l) − γ = [2·1.5 − 0.5, 2·(−1.3) − 0.5] = [2.5, −3.1]
    out = preference_loss("simpo", FREE, None, beta=2.0, simpo_gamma=0.5)
    assert out.losses.tolist() == pytest.approx([-logsig(2.5), -logsig(-3.1)], rel=1e-5)
    assert out.chosen_rewards.tolist() == pytest.approx([2 * a for a in A_W])
    assert out.rejected_rewards.tolist() == pytest.approx([2 * a for a in A_L])
    assert out.metrics["rewards/accuracies"] == 0.5
    # label smoothing ε = 0.2: −0.8·logσ(z) − 0.2·logσ(−z)
    smoothed = preference_loss("simpo", FREE, None, beta=2.0, label_smoothing=0.2)
    assert smoothed.losses.tolist() == pytest.approx(
        [-0.8 * logsig(z) - 0.2 * logsig(-z) for z in (2.5, -3.1)], rel=1e-5
    )


def test_cpo_matches_hand_derivation():
    # β = 0.5 on summed logps: z = [0.5·(−2 + 4), 0.5·(−3 + 1)] = [1, −1]; plus cpo_alpha·NLL with cpo_alpha = 2
    out = preference_loss("cpo", FREE, None, beta=0.5, cpo_alpha=2.0)
    assert out.losses.tolist() == pytest.approx([-logsig(1.0) + 2 * NLL, -logsig(-1.0) + 2 * NLL], rel=1e-5)
    assert out.chosen_rewards.tolist() == pytest.approx([-1.0, -1.5])
    assert out.metrics["nll_loss"] == pytest.approx(NLL)


def test_orpo_matches_hand_derivation():
    # log_odds = (ā_w − ā_l) − (log(1 − e^{ā_w}) − log(1 − e^{ā_l})); loss = NLL − β·logσ(log_odds), β = 0.1
    log_odds = [(w - l) - (math.log(1 - math.exp(w)) - math.log(1 - math.exp(l))) for w, l in zip(A_W, A_L)]
    out = preference_loss("orpo", FREE, None, beta=0.1)
    assert out.losses.tolist() == pytest.approx([NLL - 0.1 * logsig(o) for o in log_odds], rel=1e-5)
    assert out.metrics["log_odds_chosen"] == pytest.approx(sum(log_odds) / 2, rel=1e-5)
    assert out.metrics["log_odds_ratio"] == pytest.approx(sum(logsig(o) for o in log_odds) / 2, rel=1e-5)
    assert out.metrics["nll_loss"] == pytest.approx(NLL)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1 * a for a in A_W])


def test_log1mexp_is_accurate_at_both_ends():
    a = torch.tensor([-1e-6, -0.5, -0.7, -50.0])
    # log(1 − e^a): near 0 it is ≈ log(−a) (naive fp32 gives −inf at −1e-6 is avoided); far below it is ≈ −e^a
    expected = [math.log(-math.expm1(-1e-6)), math.log(-math.expm1(-0.5)), math.log1p(-math.exp(-0.7)),
                -math.exp(-50.0)]
    assert log1mexp(a).tolist() == pytest.approx(expected, rel=1e-5)
    a.requires_grad_(True)
    log1mexp(a).sum().backward()
    assert torch.isfinite(a.grad).all()


def f_link(x):
    return x / math.expm1(x)


def test_mapo_matches_hand_derivation():
    # loglik = −½·MSE; MSE_w = [0.1, 0.4], MSE_l = [0.3, 0.2]; s = 0.5 → x_w = [0.05, 0.2], x_l = [0.15, 0.1]
    # per pair: MSE_w − β·logσ(T·(f(x_w) − f(x_l))), β = 0.1, T = 1000
    policy = pair([-0.05, -0.2], [-0.15, -0.1])
    out = preference_loss("mapo", policy, None, beta=0.1)
    margins = [1000 * (f_link(w) - f_link(l)) for w, l in ((0.05, 0.15), (0.2, 0.1))]
    assert out.losses.tolist() == pytest.approx([0.1 - 0.1 * logsig(margins[0]), 0.4 - 0.1 * logsig(margins[1])],
                                                rel=1e-4)
    assert out.metrics["rewards/margins"] == pytest.approx(sum(margins) / 2, rel=1e-3)
    assert out.metrics["mapo/win_score"] == pytest.approx((f_link(0.05) + f_link(0.2)) / 2, rel=1e-6)
    assert out.metrics["mse/chosen"] == pytest.approx(0.25)
    # margin > 0 exactly for the pair whose winner has the lower MSE
    assert (out.chosen_rewards > out.rejected_rewards).tolist() == [True, False]


def test_mapo_margin_sign_follows_mse_order():
    mse_w, mse_l = torch.rand(64) * 2, torch.rand(64) * 2
    out = preference_loss("mapo", PairLogLik(-0.5 * mse_w, -0.5 * mse_l), None, beta=0.1)
    assert torch.equal(out.chosen_rewards > out.rejected_rewards, mse_w < mse_l)


def test_mapo_small_mse_is_reference_free_dpo_with_beta_250():
    # f(x) ≈ 1 − x/2 → T·margin ≈ −(T·s/2)(L_w − L_l) = −250·(L_w − L_l) = −250·(−2e-4) = 0.05
    out = preference_loss("mapo", pair([-0.5e-4], [-1.5e-4]), None, beta=0.1)
    assert out.metrics["rewards/margins"] == pytest.approx(0.05, rel=1e-2)


def test_mapo_link_is_stable_everywhere():
    x = torch.tensor([-30.0, -0.01, -1e-3, 0.0, 1e-3, 0.0099, 0.0101, 1.0, 100.0, 1e4], requires_grad=True)
    y = mapo_link(x)
    expected = [1.0 if v == 0 else f_link(v) if v < 700 else 0.0 for v in x.tolist()]
    assert y.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-30)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    # f'(x) = (eˣ − 1 − x·eˣ)/(eˣ − 1)², −1/2 at 0; it underflows to 0 far right (x = 1e4), else f decreases
    f_prime = [-0.5 if v == 0 else (math.expm1(v) - v * math.exp(v)) / math.expm1(v) ** 2 for v in x.tolist()[:8]]
    assert x.grad[:8].tolist() == pytest.approx(f_prime, rel=1e-4)
    assert (x.grad[:8] < 0).all() and x.grad[9].item() == 0.0
