"""The scorer API with a pure-torch scorer: batching, prompts encoded once, results, registry, WeightedSum,
weight-file helpers."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

import reward_models.registry as registry
from reward_models import Normalization, Provenance, Scorer, ScorerInfo, WeightedSum, list_scorers, load_scorer, register_scorer
from reward_models.inputs import to_float
from reward_models.weights import files_sha256, read_state_dict


class MeanColour:
    """Per-image channel means: ``[3]``; batched path ``[B,3]``."""

    variant = batch_variant = "mean-colour"

    def __call__(self, image):
        return to_float(image).mean(dim=(1, 2))

    def batch(self, pixels):
        return pixels.mean(dim=(2, 3))


class Brightness(Scorer):
    """score = sum of channel means + len(prompt) / 100."""

    info = ScorerInfo(name="brightness", formula="sum(mean rgb) + len(prompt)/100", raw_range=(0.0, 10.0),
                      differentiable=True)

    def __init__(self, offset: float = 0.0, **_: object):
        self.transform = MeanColour()
        self.provenance = Provenance("test/brightness", None, self.transform.variant, "torch.float32")
        self.offset = offset
        self.encoded: list[list[str]] = []

    def encode_prompts(self, prompts):
        self.encoded.append(list(prompts))
        return torch.tensor([len(p) / 100 for p in prompts])

    def forward(self, inputs, prompt_context, prompt_index):
        scores = inputs.sum(-1) + prompt_context[prompt_index] + self.offset
        return scores, {"red": inputs[:, 0]}


def make_brightness(**kwargs):
    return Brightness(**kwargs)


def images():
    x = torch.zeros(3, 3, 4, 4)
    x[0] = 1.0
    x[1, 0] = 0.5
    return x  # channel sums 3.0, 0.5, 0.0


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_scores_batches_and_encodes_each_prompt_once():
    scorer = Brightness()
    result = scorer.score(images(), ["ab", "abcd", "ab"], batch_size=1)
    torch.testing.assert_close(result.scores, torch.tensor([3.02, 0.54, 0.02]))
    torch.testing.assert_close(result.details["red"], torch.tensor([1.0, 0.5, 0.0]))
    assert scorer.encoded == [["ab", "abcd"]]
    assert result.records()[1] == pytest.approx({"score": 0.54, "red": 0.5})
    assert result.provenance == {"brightness": scorer.provenance}


def test_rank_and_preference_use_softmax_of_the_scores():
    scorer = Brightness()
    ranked = scorer.rank("", images())
    torch.testing.assert_close(ranked.probs, torch.softmax(torch.tensor([3.0, 0.5, 0.0]), 0))
    assert ranked.order.tolist() == [0, 1, 2]
    p = scorer.preference(["", ""], images()[:2], images()[1:])
    torch.testing.assert_close(p.probs, torch.sigmoid(torch.tensor([2.5, 0.5])))
    with pytest.raises(ValueError, match="as many 'a' as 'b'"):
        scorer.preference("", images()[:2], images()[:1])


def test_score_tensor_carries_gradients_and_score_does_not():
    x = images().requires_grad_()
    Brightness().score_tensor(x, "").scores.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 1 / 16))
    assert not Brightness().score(x, "").scores.requires_grad


def test_bad_images_are_named(tmp_path):
    scorer = Brightness()
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        scorer.score(torch.zeros(2, 4, 8, 8), "")
    with pytest.raises(TypeError, match="image 1: expected a path, PIL image or tensor, got int"):
        scorer.score([torch.zeros(3, 4, 4), 7], "")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        scorer.score([tmp_path / "broken.png"], "")


def test_weighted_sum_keeps_every_component(clean_registry):
    register_scorer("brightness-test", make_brightness)
    combo = WeightedSum({"brightness-test": 1.0, "shifted": 0.5},
                        scorers={"shifted": Brightness(offset=1.0)},
                        normalize={"shifted": Normalization("zscore", mean=1.0, std=2.0)})
    result = combo.score(images(), "")
    raw = torch.tensor([3.0, 0.5, 0.0])
    torch.testing.assert_close(result.details["brightness-test"], raw)
    torch.testing.assert_close(result.details["shifted/normalized"], raw / 2)
    torch.testing.assert_close(result.scores, raw + 0.5 * raw / 2)
    assert set(result.details) == {"brightness-test", "brightness-test/normalized", "brightness-test/red",
                                   "shifted", "shifted/normalized", "shifted/red"}
    assert set(result.provenance) == {"brightness-test", "shifted"}


def test_weighted_sum_groups_default_to_prompts():
    combo = WeightedSum({"b": 1.0}, scorers={"b": Brightness()}, normalize={"b": Normalization("win_rate")})
    result = combo.score(images(), ["x", "y", "x"])
    torch.testing.assert_close(result.scores, torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(KeyError, match="have no weight"):
        WeightedSum({"b": 1.0}, scorers={"b": Brightness()}, normalize={"c": Normalization()})


def test_registry_validates_names_and_loads_paths(clean_registry):
    with pytest.raises(ValueError, match="lower-case"):
        register_scorer("PickScore2", make_brightness)
    with pytest.raises(KeyError, match="already registered"):
        register_scorer("pickscore", make_brightness)
    with pytest.raises(ValueError, match="pkg.module:Factory"):
        register_scorer("mine", "no_colon_here")
    register_scorer("mine", f"{__name__}:make_brightness")
    assert "mine" in list_scorers()
    assert load_scorer("mine", offset=2.0).offset == 2.0
    assert isinstance(load_scorer(f"{__name__}:Brightness"), Brightness)
    with pytest.raises(KeyError, match="unknown scorer 'nope'; available: aesthetic"):
        load_scorer("nope")
    with pytest.raises(TypeError, match="not a reward_models.Scorer"):
        load_scorer(f"{__name__}:images")
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        load_scorer(f"{__name__}:missing")


def test_importing_the_package_and_scorer_modules_stays_light():
    code = ("import sys, reward_models, reward_models.pickscore, reward_models.hps, reward_models.clip_score, "
            "reward_models.aesthetic; print(sorted(m for m in ('transformers', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_state_dict_reading_and_hashing(tmp_path):
    state = {"module.w": torch.ones(2), "module.b": torch.zeros(1)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    assert set(read_state_dict(tmp_path / "ckpt.pt")) == {"w", "b"}
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"first")
    b.write_bytes(b"second")
    assert files_sha256([a]) == hashlib.sha256(b"first").hexdigest()
    shards = f"a.bin:{hashlib.sha256(b'first').hexdigest()}\nb.bin:{hashlib.sha256(b'second').hexdigest()}\n"
    assert files_sha256([b, a]) == hashlib.sha256(shards.encode()).hexdigest()
    assert files_sha256([]) is None
