"""PickScore, HPS, CLIP score and LAION aesthetic on tiny random models saved to disk and loaded through each
scorer's real loading path: the contract, each score against its formula computed from the model's own
embeddings (transformers' own logits / open_clip's own forward), and loud failures on wrong checkpoints."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scorer_contract import PROMPTS, ScorerContract, make_images, to_pil
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from transformers import AutoTokenizer, CLIPModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from reward_models import load_scorer
from reward_models.aesthetic import AestheticHead
from visalign.testing.clip import register_tiny_open_clip, save_tiny_clip, save_tiny_open_clip, tiny_open_clip


@pytest.fixture(scope="module")
def clip224(tmp_path_factory):
    """A tiny transformers CLIP at the real 224-px input size (large patches keep it fast)."""
    return save_tiny_clip(tmp_path_factory.mktemp("clip224"), image_size=224, patch_size=32)


@pytest.fixture(scope="module")
def clip32(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip32"), image_size=32, patch_size=8, hidden_act="quick_gelu")


@pytest.fixture(scope="module")
def open_clip_arch(tmp_path_factory):
    return register_tiny_open_clip(tmp_path_factory.mktemp("open_clip_configs"))


@pytest.fixture(scope="module")
def hps_dir(tmp_path_factory, open_clip_arch):
    """HPS layout: a torch file with the open_clip state dict under ``state_dict``."""
    folder = tmp_path_factory.mktemp("hps")
    torch.save({"state_dict": tiny_open_clip(seed=3).state_dict()}, folder / "HPS_v2.1_compressed.pt")
    return folder


@pytest.fixture(scope="module")
def aesthetic_head_file(tmp_path_factory):
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("aesthetic") / "head.pth"
    torch.save(AestheticHead(16).state_dict(), path)
    return path


def pil_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """transformers' PIL-backed CLIP image processor, the reference for CLIP-style preprocessing."""
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                      image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD))
    return processor(images=to_pil(images), return_tensors="pt")["pixel_values"]


def hf_cosines(folder, images, texts, size):
    model = CLIPModel.from_pretrained(folder).eval()
    tokens = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=pil_pixels(images, size))
    scale = model.logit_scale.detach().exp()
    return out.logits_per_image.diagonal() / scale, scale


# ---- contract on every scorer ---------------------------------------------------------------------------------
class TestPickScoreContract(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, clip224):
        return load_scorer("pickscore", model=str(clip224))


class TestHPSContract(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, hps_dir, open_clip_arch):
        return load_scorer("hps", model=str(hps_dir), version="v2.1", arch=open_clip_arch)


class TestCLIPScoreContract(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, clip32):
        return load_scorer("clip_score", model=str(clip32))


class TestCLIPScoreOpenClipContract(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, tmp_path_factory, open_clip_arch):
        folder = save_tiny_open_clip(tmp_path_factory.mktemp("oc"))
        return load_scorer("clip_score", model=str(folder), backend="open_clip", arch=open_clip_arch, weight=100,
                           clamp="after_mean", prefix="")


class TestAestheticContract(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, clip32, aesthetic_head_file):
        return load_scorer("aesthetic", model=str(clip32), head=str(aesthetic_head_file))


# ---- formulas ---------------------------------------------------------------------------------------------------
def test_pickscore_is_exp_logit_scale_times_cosine_of_the_models_own_logits(clip224):
    images = make_images()
    cos, scale = hf_cosines(clip224, images, PROMPTS, 224)
    result = load_scorer("pickscore", model=str(clip224)).score(images, PROMPTS)
    torch.testing.assert_close(result.details["cosine"], cos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.scores, scale * cos, rtol=1e-5, atol=1e-5)
    assert math.isclose(float(scale), 100.0, rel_tol=1e-5)


def test_hps_is_cosine_of_open_clip_features_after_resize_longest_and_pad(hps_dir, open_clip_arch):
    images = make_images()  # 40x56 -> 23x32, then 4 rows of zeros above and 5 below
    resized = TF.resize(images.float() / 255, [23, 32], interpolation=InterpolationMode.BICUBIC, antialias=True)
    padded = F.pad(resized, (0, 0, 4, 5), value=0.0)
    pixels = TF.normalize(padded, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    net = open_clip.create_model(open_clip_arch, pretrained=None, output_dict=True)
    net.load_state_dict(torch.load(hps_dir / "HPS_v2.1_compressed.pt", weights_only=True)["state_dict"])
    with torch.no_grad():
        out = net.eval()(pixels, open_clip.get_tokenizer(open_clip_arch)(PROMPTS))
    expected = (out["image_features"] * out["text_features"]).sum(-1)
    scorer = load_scorer("hps", model=str(hps_dir / "HPS_v2.1_compressed.pt"), version="v2.1", arch=open_clip_arch)
    result = scorer.score(images, PROMPTS)
    torch.testing.assert_close(result.scores, expected, rtol=1e-5, atol=1e-6)
    assert result.provenance["hps"].variant == "HPS v2.1"
    # pairwise probability uses HPS's training logits exp(logit_scale) * cos
    p = scorer.preference(PROMPTS[0], images[:1], images[1:2]).probs
    s = scorer.score(images[:2], PROMPTS[0]).scores
    torch.testing.assert_close(p, torch.sigmoid(out["logit_scale"] * (s[:1] - s[1:])), rtol=1e-5, atol=1e-6)


def test_hps_version_is_explicit_and_selects_the_file(hps_dir, open_clip_arch):
    with pytest.raises(ValueError, match="v2.0"):
        load_scorer("hps", model=str(hps_dir), version="2.1", arch=open_clip_arch)
    with pytest.raises(FileNotFoundError, match="HPS_v2_compressed.pt"):
        load_scorer("hps", model=str(hps_dir), version="v2.0", arch=open_clip_arch)


def test_clip_score_hessel_variant_prefixes_weights_and_clamps_per_sample(clip32):
    images = make_images()
    cos, _ = hf_cosines(clip32, images, ["A photo depicts " + p for p in PROMPTS], 32)
    scorer = load_scorer("clip_score", model=str(clip32))
    result = scorer.score(images, PROMPTS)
    torch.testing.assert_close(result.details["cosine"], cos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.scores, 2.5 * cos.clamp_min(0), rtol=1e-5, atol=1e-6)
    assert result.provenance["clip_score"].variant.startswith("w=2.5, clamp=per_sample, prefix='A photo depicts '")


def test_clip_score_torchmetrics_variant_clamps_after_the_mean(clip32):
    images = make_images()
    cos, _ = hf_cosines(clip32, images, PROMPTS, 32)
    scorer = load_scorer("clip_score", model=str(clip32), weight=100, clamp="after_mean", prefix="")
    result = scorer.score(images, PROMPTS)
    torch.testing.assert_close(result.scores, 100 * cos, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(scorer.aggregate(result.scores), (100 * cos).mean().clamp_min(0), rtol=1e-5, atol=1e-4)
    negative = torch.tensor([-3.0, 1.0])
    assert float(scorer.aggregate(negative)) == 0.0
    per_sample = load_scorer("clip_score", model=str(clip32), weight=100, clamp="per_sample", prefix="")
    assert float(per_sample.aggregate(torch.tensor([0.0, 4.0]))) == 2.0
    with pytest.raises(ValueError, match="weight"):
        load_scorer("clip_score", model=str(clip32), weight=25)
    with pytest.raises(ValueError, match="clamp"):
        load_scorer("clip_score", model=str(clip32), clamp="mean")


def test_clip_score_open_clip_backend_is_open_clip_cosine(tmp_path, open_clip_arch):
    folder = save_tiny_open_clip(tmp_path / "oc", seed=7)
    images = make_images()
    net = open_clip.create_model(open_clip_arch, pretrained=None, output_dict=True)
    net.load_state_dict(load_file(folder / "open_clip_model.safetensors"))
    with torch.no_grad():
        out = net.eval()(pil_pixels(images, 32), open_clip.get_tokenizer(open_clip_arch)(PROMPTS))
    expected = (out["image_features"] * out["text_features"]).sum(-1)
    scorer = load_scorer("clip_score", model=str(folder), backend="open_clip", arch=open_clip_arch, weight=1,
                         clamp="none", prefix="")
    torch.testing.assert_close(scorer.score(images, PROMPTS).scores, expected, rtol=1e-5, atol=1e-6)


def test_aesthetic_is_the_head_on_the_normalised_image_embedding(clip32, aesthetic_head_file):
    images = make_images()
    model = CLIPModel.from_pretrained(clip32).eval()
    with torch.no_grad():
        e = model.get_image_features(pixel_values=pil_pixels(images, 32)).pooler_output.double()
    x = e / e.norm(dim=-1, keepdim=True)
    state = torch.load(aesthetic_head_file, weights_only=True)
    for i in (0, 2, 4, 6, 7):  # no activations between the Linear layers
        x = x @ state[f"layers.{i}.weight"].double().T + state[f"layers.{i}.bias"].double()
    scorer = load_scorer("aesthetic", model=str(clip32), head=str(aesthetic_head_file))
    result = scorer.score(images, ["ignored"] * 4)
    torch.testing.assert_close(result.scores.double(), x.squeeze(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.details["embedding_norm"].double(), e.norm(dim=-1), rtol=1e-5, atol=1e-5)
    assert result.provenance["aesthetic"].variant == "custom head"


# ---- wrong checkpoints fail loudly ------------------------------------------------------------------------------
def test_hps_rejects_missing_unexpected_and_pickled_weights(tmp_path, open_clip_arch):
    state = tiny_open_clip().state_dict()
    missing = dict(state)
    missing.pop("visual.proj")
    torch.save({"state_dict": missing}, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing.pt.*missing keys: visual.proj"):
        load_scorer("hps", model=str(tmp_path / "missing.pt"), arch=open_clip_arch)
    save_file({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.safetensors")
    with pytest.raises(ValueError, match="unexpected keys: extra.weight"):
        load_scorer("hps", model=str(tmp_path / "extra.safetensors"), arch=open_clip_arch)
    torch.save(tiny_open_clip(), tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_scorer("hps", model=str(tmp_path / "pickled.pt"), arch=open_clip_arch)


def test_pickscore_rejects_a_checkpoint_with_missing_keys(tmp_path):
    folder = save_tiny_clip(tmp_path / "clip")
    state = load_file(folder / "model.safetensors")
    state.pop("visual_projection.weight")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing keys: visual_projection.weight"):
        load_scorer("pickscore", model=str(folder))


def test_aesthetic_rejects_a_head_of_another_layout_or_width(tmp_path, clip32):
    relu_layout = {f"layers.{i}.{p}": torch.zeros(1) for i in (0, 3, 6, 9, 11) for p in ("weight", "bias")}
    torch.save(relu_layout, tmp_path / "relu.pth")
    with pytest.raises(ValueError, match="missing keys: layers.2.bias"):
        load_scorer("aesthetic", model=str(clip32), head=str(tmp_path / "relu.pth"))
    torch.save(AestheticHead(8).state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match=r"shape mismatches: layers.0.weight \(1024, 8\) vs \(1024, 16\)"):
        load_scorer("aesthetic", model=str(clip32), head=str(tmp_path / "narrow.pth"))
    with pytest.raises(ValueError, match="needs head=PATH"):
        load_scorer("aesthetic", model=str(clip32))
