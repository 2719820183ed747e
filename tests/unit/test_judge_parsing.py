"""Parsers of VLM-judge answers on canned outputs (reward-scorers.md §8.2), malformed ones included."""

import math

import pytest

from reward_models.judge_parsing import (
    parse_dimension_scores,
    parse_final_score,
    parse_pairwise_split,
    parse_pairwise_verdict,
    parse_think_verdict,
)


def assert_failed(judgement, reason):
    assert not judgement.ok and math.isnan(judgement.value)
    assert reason in judgement.error


@pytest.mark.parametrize("text, value", [
    ("Image 1 is better.", 1.0),
    ("Image 2 is better.", 0.0),
    ("Both images are equally good.", 0.5),
    ("After comparing both, **Image 2 is better** overall.", 0.0),
    ("image 1 IS better", 1.0),
    ("Image 1 is better than Image 2.", 1.0),  # LLaVA judges
    ("Image 2 is better than Image 1.", 0.0),
    ("Image 1 is better. Image 1 is better.", 1.0),  # repeated, consistent
])
def test_pairwise_verdict(text, value):
    j = parse_pairwise_verdict(text)
    assert j.ok and j.value == value and j.error == ""


@pytest.mark.parametrize("text, subject, value", [
    ("Video 2 is better.", "Video", 0.0),
    ("Both videos are equally good.", "Video", 0.5),
    ("Answer 1 is better", "Answer", 1.0),
])
def test_pairwise_verdict_other_subjects(text, subject, value):
    assert parse_pairwise_verdict(text, subject).value == value


@pytest.mark.parametrize("text, reason", [
    ("", "no image verdict"),
    ("Final", "no image verdict"),  # quantised models emitting one word (UnifiedReward#6)
    ("Image 1 is not better than image 2", "no image verdict"),
    ("Image 1 is better in alignment, but Image 2 is better overall.", "contradictory"),
    ("Video 1 is better.", "no image verdict"),
])
def test_pairwise_verdict_failures(text, reason):
    assert_failed(parse_pairwise_verdict(text), reason)


@pytest.mark.parametrize("text, value", [
    ("red ball (object): 1\nFinal Score: 4", 4.0),
    ("Final Score: 3.5", 3.5),
    ("**Final Score:** 5", 5.0),
    ("final score:2", 2.0),
    ("Final Score: 4/5", 4.0),
    ("Final Score: 1.", 1.0),
])
def test_final_score(text, value):
    j = parse_final_score(text)
    assert j.ok and j.value == value


@pytest.mark.parametrize("text, value", [("Final Score: 1e3", 1000.0), ("Final Score: 5,000", 5000.0),
                                         ("Final Score: 2.5E1", 25.0), ("Final Score: 1,234.5", 1234.5)])
def test_final_score_reads_whole_numbers(text, value):
    assert parse_final_score(text, low=0, high=1e4).value == value
    assert_failed(parse_final_score(text), "outside [1.0, 5.0]")  # not read as its first digit, which is in range


@pytest.mark.parametrize("text", ["Final Score: 3/10", "Final Score: 3 / 10"])
def test_score_on_another_scale_is_refused(text):
    assert_failed(parse_final_score(text), "3/10 is not on the expected scale (out of 5)")
    assert parse_final_score(text, low=0, high=10).value == 3.0
    assert_failed(parse_dimension_scores(text.replace("Final", "Alignment"), dimensions=("Alignment",)),
                  "Alignment score 3/10 is not on the expected scale")


def test_final_score_range_is_configurable():
    assert parse_final_score("Final Score: 87", low=0, high=100).value == 87.0
    assert parse_final_score("Final Score: 87/100", low=0, high=100).value == 87.0
    assert parse_final_score("Final Score: 8", low=1, high=10).value == 8.0


@pytest.mark.parametrize("text, reason", [
    ("The image is great.", "no final score"),
    ("Final", "no final score"),
    ("Final Score:", "no final score"),
    ("Final Score: nan", "outside"),
    ("Final Score: 7", "outside [1.0, 5.0]"),
    ("Final Score: 0", "outside"),
    ("Final Score: 2 ... Final Score: 4", "contradictory final scores: 2.0, 4.0"),
])
def test_final_score_failures(text, reason):
    assert_failed(parse_final_score(text), reason)


def test_dimension_scores_v2_pointwise():
    text = "Alignment Score (1-5): 2.6947\nCoherence Score (1-5): 2.3715\nStyle Score (1-5): 2.8025"
    j = parse_dimension_scores(text)
    assert j.ok
    assert dict(j.fields) == {"Alignment": 2.6947, "Coherence": 2.3715, "Style": 2.8025}
    assert j.value == pytest.approx((2.6947 + 2.3715 + 2.8025) / 3)


def test_dimension_scores_video_dimensions():
    text = "Alignment Score (1-5): 4\nPhysics Score (1-5): 3\nStyle Score (1-5): 5"
    j = parse_dimension_scores(text, dimensions=("Alignment", "Physics", "Style"))
    assert j.ok and j.value == 4.0


def test_dimension_scores_missing_and_nan_are_flagged_per_dimension():
    text = "Alignment Score (1-5): 4\nStyle Score (1-5): nan"  # UnifiedReward#82 emits 'nan' for Style
    j = parse_dimension_scores(text)
    assert_failed(j, "no Coherence score found")
    assert "Style score nan outside" in j.error
    assert j.fields["Alignment"] == 4.0
    assert math.isnan(j.fields["Coherence"]) and math.isnan(j.fields["Style"])


def test_pairwise_split_v2():
    text = ("Alignment Score:\n Image 1: 0.7\n Image 2: 0.3\n"
            "Coherence Score:\n Image 1: 0.5\n Image 2: 0.5\n"
            "Style Score:\n Image 1: 0.2\n Image 2: 0.8")
    j = parse_pairwise_split(text)
    assert j.ok
    assert j.fields == pytest.approx({"Alignment": 0.7, "Coherence": 0.5, "Style": 0.2})
    assert j.value == pytest.approx((0.7 + 0.5 + 0.2) / 3)


def test_pairwise_split_is_antisymmetric_under_swap():
    forward = "Alignment Score: Image 1: 0.62, Image 2: 0.4"  # sums to 1.02: within tolerance
    swapped = "Alignment Score: Image 1: 0.4, Image 2: 0.62"
    a = parse_pairwise_split(forward, dimensions=("Alignment",)).value
    b = parse_pairwise_split(swapped, dimensions=("Alignment",)).value
    assert a == pytest.approx(0.62 / 1.02) and a + b == pytest.approx(1.0)


@pytest.mark.parametrize("text, reason", [
    ("Alignment Score:\n Image 1: 0.9\n Image 2: 0.6", "do not sum to 1"),
    ("Alignment Score:\n Image 1: 1.5\n Image 2: -0.5", "outside [0, 1]"),
    ("Alignment Score:\n Image 1: nan\n Image 2: nan", "outside [0, 1]"),
    ("Alignment Score:\n Image 1: 0.5", "no Alignment score block"),
])
def test_pairwise_split_failures(text, reason):
    assert_failed(parse_pairwise_split(text, dimensions=("Alignment",)), reason)


def test_think_verdict_reads_the_answer_block_not_the_reasoning():
    text = ("<think>Image 1 is better in color, yet Image 2 is better aligned. Total score: 31 vs 35.</think>\n"
            "<answer>Image 2 is better</answer>")
    j = parse_think_verdict(text)
    assert j.ok and j.value == 0.0


def test_think_verdict_fallbacks_and_failures():
    assert parse_think_verdict("<think>long reasoning</think> Image 1 is better").value == 1.0
    assert parse_think_verdict("<answer>a</answer> <answer>Image 1 is better</answer>").value == 1.0  # last block
    assert_failed(parse_think_verdict("<think>Image 1 is better in style and"), "unterminated")
    assert_failed(parse_think_verdict("<think>x</think><answer>I cannot decide</answer>"), "no image verdict")
