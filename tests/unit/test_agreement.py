"""The three agreement-with-humans protocols (reward-scorers.md §1.7) on hand-made data with hand-derived accuracies."""

import io
import json
import math

import pytest
import torch
from PIL import Image

from reward_models.agreement import (
    evaluate_agreement,
    pair_accuracy,
    pickapic_accuracy,
    ranking_accuracy,
    select_tie_threshold,
)
from reward_models.base import UNBOUNDED, Provenance, Scorer, ScorerInfo

# Two prompts; human ranks are "lower is better".
#   prompt A: ranks (1, 2, 3), scores (0.9, 0.5, 0.7): pairs (0,1) right, (0,2) right, (1,2) wrong.
#   prompt B: ranks (1, 1, 2), scores all 0.3: (0,1) is a human tie; (0,2), (1,2) are predicted ties.
SCORES = [[0.9, 0.5, 0.7], [0.3, 0.3, 0.3]]
RANKS = [[1, 2, 3], [1, 1, 2]]


def test_pair_accuracy_counts_pairs_globally_and_predicted_ties_as_wrong():
    result = pair_accuracy(SCORES, RANKS)
    # 5 pairs with different human ranks (3 in A, 2 in B); correct: 2 in A, 0 in B (ties are wrong)
    assert result.protocol == "imagereward"
    assert result.count == 5 and result.accuracy == pytest.approx(2 / 5)
    assert result.details["correct"] == 2


def test_ranking_accuracy_averages_per_prompt_and_ties_are_not_inversions():
    result = ranking_accuracy(SCORES, RANKS)
    # A: 1 inversion of C(3,2)=3 -> 2/3; B: no strictly opposite pair -> 1; mean over prompts = 5/6
    assert result.protocol == "hpdv2"
    assert result.count == 2 and result.accuracy == pytest.approx(5 / 6)


def test_nan_predictions_count_as_wrong_in_every_protocol():
    scores, ranks = [[math.nan, 0.1, 0.2]], [[1, 2, 3]]
    # pairs: (0,1) NaN, (0,2) NaN -> wrong; (1,2): rank 2 < 3 but 0.1 < 0.2 -> wrong / an inversion
    pairs = pair_accuracy(scores, ranks)
    assert pairs.accuracy == 0.0 and pairs.nan_predictions == 2
    ranking = ranking_accuracy(scores, ranks)
    assert ranking.accuracy == 0.0 and ranking.nan_predictions == 2
    pick = pickapic_accuracy([math.nan, 0.9], [0.5, 1.0], threshold=1.0)
    # NaN scores 0 even against a tie label; 0.9 with t=1 predicts a tie against label 1 -> 0.5
    assert pick.accuracy == pytest.approx(0.25) and pick.nan_predictions == 1


# Pick-a-Pic: p0 = P(first), labels = label_0. |p0 - p1| = 0.8, 0.2, 0.1, 0.8.
P0 = [0.9, 0.6, 0.45, 0.1]
LABELS = [1.0, 0.5, 0.5, 0.0]


def test_pickapic_accuracy_with_tie_threshold():
    # t = 0: predictions (first, first, second, second) vs (first, tie, tie, second): 1 + .5 + .5 + 1
    assert pickapic_accuracy(P0, LABELS, 0.0).accuracy == pytest.approx(3 / 4)
    # t = 0.3: (first, tie, tie, second): all right
    assert pickapic_accuracy(P0, LABELS, 0.3).accuracy == pytest.approx(1.0)
    # t = 1: all ties: .5 + 1 + 1 + .5
    result = pickapic_accuracy(P0, LABELS, 1.0)
    assert result.accuracy == pytest.approx(3 / 4) and result.details["tie_threshold"] == 1.0


def test_select_tie_threshold_takes_the_first_best_candidate():
    # t = 0.1 leaves example 2 (diff 0.1 + rounding) untied; t = 0.2 ties examples 1 and 2: first with accuracy 1
    assert select_tie_threshold(P0, LABELS) == 0.2


@pytest.mark.parametrize("call, match", [
    (lambda: pair_accuracy([[1.0, 2.0]], [[1, 2], [1, 2]]), "scores for 1 prompts but human ranks for 2"),
    (lambda: pair_accuracy([[1.0, 2.0]], [[1]]), "prompt 0: 2 scores but 1 human ranks"),
    (lambda: pair_accuracy([[1.0, 2.0]], [[1, 1]]), "no pair with different human ranks"),
    (lambda: ranking_accuracy([[1.0]], [[1]]), "prompt 0: ranking accuracy needs at least 2 images"),
    (lambda: pickapic_accuracy([0.5], [2.0], 0.0), "example 0: label_0 must be 1, 0 or 0.5"),
    (lambda: pickapic_accuracy([0.5, 0.5], [1.0], 0.0), "2 probabilities but 1 labels"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- runner -------------------------------------------------------------------------------------------------------

class MeanBrightness(Scorer):
    """A minimal real Scorer: the mean pixel value in [0, 1], whatever the prompt."""

    info = ScorerInfo(name="brightness", formula="mean(pixels)", raw_range=UNBOUNDED, differentiable=False)

    class _Mean:
        variant = batch_variant = "mean"

        def __call__(self, image):
            return image.float().mean() / 255.0

    def __init__(self):
        self.transform = self._Mean()
        self.provenance = Provenance("test", None, "mean", "torch.float32")

    def encode_prompts(self, prompts):
        return prompts

    def forward(self, inputs, prompt_context, prompt_index):
        return inputs, {}


def solid(value: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (value, value, value))


@pytest.fixture
def image_dir(tmp_path):
    for name, value in {"white": 255, "gray": 128, "black": 0}.items():
        solid(value).save(tmp_path / f"{name}.png")
    return tmp_path


def test_runner_imagereward_and_hpdv2_files(image_dir, tmp_path):
    # brightness scores: white 1 > gray ~0.5 > black 0
    rows = [
        {"id": "a", "prompt": "p", "generations": ["white.png", "gray.png", "black.png"], "ranking": [1, 3, 2]},
        {"id": "b", "prompt": "q", "generations": ["black.png", "white.png"], "ranking": [2, 1]},
    ]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    # pairs: a:(w,g) right, (w,b) right, (g,b) wrong; b:(b,w) right -> 3/4 globally; per prompt (2/3 + 1)/2
    result = evaluate_agreement(MeanBrightness(), tmp_path / "test.json", "imagereward", image_root=image_dir)
    assert result.protocol == "imagereward" and result.count == 4 and result.accuracy == pytest.approx(3 / 4)

    hpd = [{"prompt": r["prompt"], "image_path": r["generations"], "rank": r["ranking"]} for r in rows]
    (tmp_path / "hpd.jsonl").write_text("\n".join(json.dumps(r) for r in hpd))
    result = evaluate_agreement(MeanBrightness(), tmp_path / "hpd.jsonl", "hpdv2", image_root=image_dir)
    assert result.protocol == "hpdv2" and result.count == 2 and result.accuracy == pytest.approx(5 / 6)


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    solid(value).save(buf, format="PNG")
    return buf.getvalue()


def test_runner_pickapic_with_bytes_and_validation_threshold():
    white, gray, black = png_bytes(255), png_bytes(128), png_bytes(0)
    # preference = sigmoid(s_a - s_b): white vs black -> sigmoid(1), |p0 - p1| = 0.462
    test = [
        {"caption": "p", "jpg_0": white, "jpg_1": black, "label_0": 1.0},
        {"caption": "p", "jpg_0": gray, "jpg_1": gray, "label_0": 0.5},
        {"caption": "p", "jpg_0": black, "jpg_1": white, "label_0": 0.0},
    ]
    # t = 0: first, tie, second -> all right
    result = evaluate_agreement(MeanBrightness(), test, "pickapic")
    assert result.accuracy == pytest.approx(1.0) and result.details["tie_threshold"] == 0.0
    # validation labels white-vs-black a tie: the first threshold >= 0.462 wins (0.5); then every test pair is
    # predicted a tie: .5 + 1 + .5
    validation = [{"caption": "p", "jpg_0": white, "jpg_1": black, "label_0": 0.5}]
    result = evaluate_agreement(MeanBrightness(), test, "pickapic", validation=validation)
    assert result.details["tie_threshold"] == 0.5 and result.accuracy == pytest.approx(2 / 3)
    assert math.isclose(2 * torch.sigmoid(torch.tensor(1.0)).item() - 1, 0.462, abs_tol=1e-3)


def test_runner_names_missing_columns_and_files(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "p", "images": ["x.png"]}))
    with pytest.raises(KeyError, match=r"bad.jsonl, row 0: no column 'generations'"):
        evaluate_agreement(MeanBrightness(), tmp_path / "bad.jsonl", "imagereward")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        evaluate_agreement(MeanBrightness(), tmp_path / "missing.json", "hpdv2")
    with pytest.raises(ValueError, match="unknown agreement protocol"):
        evaluate_agreement(MeanBrightness(), [], "genai-bench")
