"""Win/tie/loss rates and paired bootstrap intervals (visalign.evaluation.winrate) against hand-derived values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visalign.evaluation import winrate
from visalign.evaluation.winrate import bootstrap_means, head_to_head, outcomes, percentile_interval

# 4 prompts x 2 seeds. With tie tolerance 0.1, comparison by comparison (a - b):
#   p0: 1-0 = 1 win,     2-2.05 = -0.05 tie
#   p1: 3-3.5 = -.5 loss, 3-2 = 1 win
#   p2: 0.5-0.5 = 0 tie,  0.5-1 = -.5 loss
#   p3: 2-2 = 0 tie,      1-2 = -1 loss
A = [[1.0, 2.0], [3.0, 3.0], [0.5, 0.5], [2.0, 1.0]]
B = [[0.0, 2.05], [3.5, 2.0], [0.5, 1.0], [2.0, 2.0]]


def test_outcomes_are_strict_with_a_tie_band():
    assert outcomes(A, B, tie_tolerance=0.1).tolist() == [[1, 0], [-1, 1], [0, -1], [0, -1]]
    # without tolerance the 0.05 gap is a loss; equal scores stay ties
    assert outcomes(A, B).tolist() == [[1, -1], [-1, 1], [0, -1], [0, -1]]
    # lower-is-better scorers: who wins flips, ties do not
    assert outcomes(A, B, tie_tolerance=0.1, higher_is_better=False).tolist() == [[-1, 0], [1, -1], [0, 1], [0, 1]]


def test_head_to_head_point_estimates_by_hand():
    r = head_to_head(A, B, tie_tolerance=0.1, num_resamples=200)
    assert (r.num_prompts, r.samples_per_prompt) == (4, 2)
    assert (r.win, r.tie, r.loss) == (2 / 8, 3 / 8, 3 / 8)
    assert r.mean_a == pytest.approx(13 / 8) and r.mean_b == pytest.approx(13.05 / 8)
    assert r.mean_diff == pytest.approx(-0.05 / 8)
    assert r.median_a == 1.5  # sorted a: .5 .5 1 1 | 2 2 3 3
    assert r.median_b == 2.0  # sorted b: 0 .5 1 2 | 2 2 2.05 3.5
    for value, (low, high) in [(r.win, r.win_ci), (r.tie, r.tie_ci), (r.loss, r.loss_ci),
                               (r.mean_diff, r.mean_diff_ci)]:
        assert low <= value <= high
    flipped = head_to_head(A, B, tie_tolerance=0.1, higher_is_better=False, num_resamples=200)
    assert (flipped.win, flipped.tie, flipped.loss) == (3 / 8, 3 / 8, 2 / 8)
    assert flipped.mean_diff == r.mean_diff  # always raw a - b


def test_inputs_may_be_tensors_and_one_dimensional():
    r = head_to_head(torch.tensor([2.0, 1.0, 3.0]), np.array([1.0, 1.0, 1.0]), num_resamples=100)
    assert (r.samples_per_prompt, r.win, r.tie, r.loss) == (1, 2 / 3, 1 / 3, 0.0)


def test_unanimous_results_give_degenerate_intervals():
    r = head_to_head([[2.0, 3.0]] * 5, [[1.0, 1.0]] * 5, num_resamples=500)
    assert (r.win, r.win_ci, r.loss_ci, r.tie_ci) == (1.0, (1.0, 1.0), (0.0, 0.0), (0.0, 0.0))
    assert r.mean_diff_ci == pytest.approx((1.5, 1.5))


def test_bootstrap_of_two_prompts_follows_the_binomial():
    # one prompt won, one lost: a resample's win rate is 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4
    dist = bootstrap_means(np.array([[1.0], [0.0]]), num_resamples=20_000, seed=3)[:, 0]
    freq = [np.mean(dist == v) for v in (0.0, 0.5, 1.0)]
    assert freq == pytest.approx([0.25, 0.5, 0.25], abs=0.015)
    assert percentile_interval(dist[:, None], 0.95)[:, 0].tolist() == [0.0, 1.0]


def test_bootstrap_variance_of_a_mean_is_the_plug_in_variance_over_n():
    x = np.arange(5.0)[:, None]  # plug-in variance (1/n) sum (x - 2)^2 = 2, so Var*(mean) = 2 / 5
    dist = bootstrap_means(x, num_resamples=40_000, seed=0)
    assert dist.mean() == pytest.approx(2.0, abs=0.01)
    assert dist.var() == pytest.approx(0.4, rel=0.03)


def test_bootstrap_is_seeded_and_independent_of_chunking(monkeypatch):
    per_prompt = np.random.default_rng(1).normal(size=(7, 3))
    full = bootstrap_means(per_prompt, num_resamples=50, seed=11)
    np.testing.assert_array_equal(full, bootstrap_means(per_prompt, num_resamples=50, seed=11))
    assert not np.array_equal(full, bootstrap_means(per_prompt, num_resamples=50, seed=12))
    monkeypatch.setattr(winrate, "_CHUNK_ELEMENTS", 7 * 4)  # 4 resamples per chunk
    np.testing.assert_array_equal(full, bootstrap_means(per_prompt, num_resamples=50, seed=11))


def test_intervals_cover_the_true_values_about_95_percent_of_the_time():
    # a ~ N(0.3, 1), b ~ N(0, 1) independently: P(a > b) = Phi(0.3 / sqrt 2), E[a - b] = 0.3
    true_win = 0.5 * (1 + math.erf(0.3 / math.sqrt(2) / math.sqrt(2)))
    rng = np.random.default_rng(0)
    trials, covered_win, covered_diff = 200, 0, 0
    for trial in range(trials):
        a, b = rng.normal(0.3, 1.0, size=60), rng.normal(0.0, 1.0, size=60)
        r = head_to_head(a, b, num_resamples=1000, seed=trial)
        covered_win += r.win_ci[0] <= true_win <= r.win_ci[1]
        covered_diff += r.mean_diff_ci[0] <= 0.3 <= r.mean_diff_ci[1]
    assert 0.88 <= covered_win / trials <= 0.99
    assert 0.88 <= covered_diff / trials <= 0.99


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"same \[prompts, seeds\] shape"):
        head_to_head([[1.0, 2.0]], [[1.0]])
    with pytest.raises(ValueError, match="scores_b: non-finite score nan at prompt 1, seed 0"):
        head_to_head([1.0, 2.0], [1.0, float("nan")])
    with pytest.raises(ValueError, match="tie_tolerance must be >= 0"):
        outcomes([1.0], [1.0], tie_tolerance=-1)
    with pytest.raises(ValueError, match="confidence must be in"):
        head_to_head([1.0], [0.0], confidence=95)
    with pytest.raises(ValueError, match="expected scores of shape"):
        head_to_head([], [])
