"""ImageReward on a tiny random model of the real architecture, saved as ``ImageReward.pt`` + ``med_config.json`` +
a local BERT tokenizer and loaded through the scorer's real loading path (reward-scorers.md §5.8)."""

import json

import pytest
import torch
from transformers import BertTokenizer, BlipVisionConfig, BlipVisionModel

from reward_models import load_scorer
from reward_models._blip import BlipViTConfig, ImageRewardModel, text_config_from_med
from reward_models.image_reward import IMAGEREWARD_MEAN, IMAGEREWARD_STD, POSITION_IDS_KEY, ImageReward
from tests.contract.scorer_contract import PROMPTS, ScorerContract, make_images

VISION = BlipViTConfig(image_size=32, patch_size=16, width=24, depth=2, heads=2)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square", "cat", "on", "tree"]
MED = {"vocab_size": len(WORDS) + 2, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
       "intermediate_size": 37, "hidden_act": "gelu", "max_position_embeddings": 40, "layer_norm_eps": 1e-12,
       "pad_token_id": 0, "encoder_width": 768, "add_cross_attention": True, "type_vocab_size": 2}


def tiny_network(seed: int = 0) -> ImageRewardModel:
    torch.manual_seed(seed)
    net = ImageRewardModel(VISION, text_config_from_med(MED, VISION.width, "tiny"))
    # BERT's N(0, 0.02) and the head's N(0, 1/769) inits make every reward ~equal; use unit-scale weights so
    # scores differ between images and prompts
    for module in net.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=module.in_features ** -0.5)
            torch.nn.init.normal_(module.bias, std=0.1)
        elif isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight)
    return net.eval()


def save_checkpoint(folder, net: ImageRewardModel, **extra) -> None:
    """Write the released layout: ``ImageReward.pt`` (with BLIP's persistent position-id buffer), med_config."""
    state = {**net.state_dict(), POSITION_IDS_KEY: torch.arange(MED["max_position_embeddings"])[None], **extra}
    torch.save(state, folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(MED))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagereward")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizer(str(folder / "tokenizer" / "vocab.txt")).save_pretrained(folder / "tokenizer")
    save_checkpoint(folder, tiny_network())
    return folder


@pytest.fixture(scope="module")
def scorer(model_dir):
    return load_scorer("reward_models.image_reward:ImageReward", model=str(model_dir),
                       tokenizer=model_dir / "tokenizer", vision=VISION)


class TestImageRewardContract(ScorerContract):
    pass


def test_registered_under_imagereward(model_dir):
    scorer = load_scorer("imagereward", model=str(model_dir), tokenizer=model_dir / "tokenizer", vision=VISION)
    assert isinstance(scorer, ImageReward) and scorer.info.name == "imagereward"


def test_score_is_the_normalised_mlp_of_the_cls_state(scorer):
    """Recompute the formula from the model's own modules: tokens -> ViT tokens -> cross-attention BERT [CLS] ->
    the head as one affine map (its five linears multiplied out) -> (raw - mean) / std."""
    images = make_images(2, seed=2)
    prompts = ["a red circle", "a blue square on a tree"]
    tok = scorer.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tok["input_ids"].shape == (2, 35)
    pixels = torch.stack([scorer.transform(img) for img in images])
    net = scorer.net
    with torch.no_grad():
        tokens = net.blip.visual_encoder(pixels)
        assert tokens.shape == (2, 1 + (32 // 16) ** 2, VISION.width)
        cls = net.blip.text_encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                                    encoder_hidden_states=tokens).last_hidden_state[:, 0]
        weight, bias = torch.eye(32), torch.zeros(32)
        for layer in net.mlp.layers:
            if isinstance(layer, torch.nn.Linear):
                weight, bias = layer.weight @ weight, layer.weight @ bias + layer.bias
        raw = (cls @ weight.T + bias).squeeze(-1)
    result = scorer.score(images, prompts)
    torch.testing.assert_close(result.details["raw"], raw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.scores, (raw - IMAGEREWARD_MEAN) / IMAGEREWARD_STD, rtol=1e-5, atol=1e-5)
    assert result.scores.std() > 0.01


def test_preference_is_sigmoid_of_raw_reward_difference(scorer):
    a, b = make_images(2, seed=3), make_images(2, seed=4)
    ra, rb = scorer.score(a, "a cat").details["raw"], scorer.score(b, "a cat").details["raw"]
    torch.testing.assert_close(scorer.preference("a cat", a, b).probs, torch.sigmoid(ra - rb))


def test_prompts_are_truncated_to_35_tokens(scorer):
    images = make_images(1)
    head = " ".join(["red"] * 33)  # [CLS] + 33 words + [SEP] = 35
    a = scorer.score(images, head + " circle").scores
    b = scorer.score(images, head + " square cat").scores
    assert torch.equal(a, b)
    assert not torch.equal(a, scorer.score(images, " ".join(["red"] * 32) + " circle").scores)


def test_padding_tokens_are_masked(scorer):
    pixels = torch.stack([scorer.transform(img) for img in make_images(1)])
    tok = scorer.tokenizer(["a red circle"], padding="max_length", max_length=35, return_tensors="pt")
    other = tok["input_ids"].clone()
    other[tok["attention_mask"] == 0] = 7  # any token id where the mask is 0
    with torch.no_grad():
        torch.testing.assert_close(scorer.net(pixels, other, tok["attention_mask"]),
                                   scorer.net(pixels, tok["input_ids"], tok["attention_mask"]))


def test_vit_matches_transformers_blip_vision_port():
    """Our timm-named ViT equals transformers' BlipVisionModel under the key mapping of reward-scorers.md §5.8."""
    ours = tiny_network().blip.visual_encoder
    config = BlipVisionConfig(hidden_size=VISION.width, intermediate_size=4 * VISION.width,
                              num_hidden_layers=VISION.depth, num_attention_heads=VISION.heads,
                              image_size=VISION.image_size, patch_size=VISION.patch_size, layer_norm_eps=1e-6)
    theirs = BlipVisionModel(config).eval()
    renames = [("patch_embed.proj", "embeddings.patch_embedding"), ("blocks.", "encoder.layers."),
               ("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.qkv", "self_attn.qkv"),
               ("attn.proj", "self_attn.projection")]
    state = {}
    for key, value in ours.state_dict().items():
        if key == "cls_token":
            key = "embeddings.class_embedding"
        elif key == "pos_embed":
            key = "embeddings.position_embedding"
        elif key.startswith("norm."):
            key = key.replace("norm.", "post_layernorm.")
        for old, new in renames:
            key = key.replace(old, new)
        state[key] = value
    theirs.load_state_dict(state, strict=True)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels), theirs(pixel_values=pixels).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)


def test_safetensors_file_loads_too(model_dir, tmp_path):
    from safetensors.torch import save_file

    net = tiny_network()
    save_file(net.state_dict(), tmp_path / "ImageReward.safetensors")
    loaded = ImageReward(tmp_path / "ImageReward.safetensors", tokenizer=model_dir / "tokenizer",
                         med_config=model_dir / "med_config.json", vision=VISION)
    reference = ImageReward(model_dir, tokenizer=model_dir / "tokenizer", vision=VISION)
    torch.testing.assert_close(loaded.score(make_images(2), "a cat").scores,
                               reference.score(make_images(2), "a cat").scores, rtol=0, atol=0)


def _write(folder, state, med=MED):
    torch.save(state, folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(med))


@pytest.mark.parametrize("corrupt, match", [
    (lambda s: {k: v for k, v in s.items() if not k.startswith("mlp.")}, r"missing keys: mlp\.layers"),
    (lambda s: {**s, "blip.itm_head.weight": torch.zeros(2, 32)}, "unexpected keys: blip.itm_head.weight"),
    (lambda s: {**s, "mlp.layers.0.weight": torch.zeros(1024, 16)}, "shape mismatches: mlp.layers.0.weight"),
    (lambda s: {**s, POSITION_IDS_KEY: torch.zeros(1, 40, dtype=torch.long)}, "position_ids is not 0..39"),
])
def test_wrong_checkpoint_fails_loudly(model_dir, tmp_path, corrupt, match):
    _write(tmp_path, corrupt(tiny_network().state_dict()))
    with pytest.raises(ValueError, match=match) as err:
        ImageReward(tmp_path, tokenizer=model_dir / "tokenizer", vision=VISION)
    assert "ImageReward.pt" in str(err.value)


def test_wrong_architecture_or_files_fail_loudly(model_dir, tmp_path):
    _write(tmp_path, tiny_network().state_dict())
    bigger = BlipViTConfig(image_size=32, patch_size=16, width=24, depth=3, heads=2)
    with pytest.raises(ValueError, match=r"missing keys: blip\.visual_encoder\.blocks\.2"):
        ImageReward(tmp_path, tokenizer=model_dir / "tokenizer", vision=bigger)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "ImageReward.pt")  # a pickled module, not a state dict
    with pytest.raises(ValueError, match="weights_only=True"):
        ImageReward(tmp_path, tokenizer=model_dir / "tokenizer", vision=VISION)
    _write(tmp_path, tiny_network().state_dict(), med={k: v for k, v in MED.items() if k != "hidden_size"})
    with pytest.raises(KeyError, match="med_config.json: med config lacks hidden_size"):
        ImageReward(tmp_path, tokenizer=model_dir / "tokenizer", vision=VISION)
    (tmp_path / "med_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="med_config.json not found"):
        ImageReward(tmp_path, tokenizer=model_dir / "tokenizer", vision=VISION)


def test_tokenizer_larger_than_the_embedding_is_rejected(model_dir, tmp_path):
    _write(tmp_path, {**tiny_network().state_dict()})
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(WORDS + ["dog", "sun", "sky"]) + "\n")
    with pytest.raises(ValueError, match="18 tokens .* embeds only 15"):
        ImageReward(tmp_path, tokenizer=tmp_path / "tok", vision=VISION)


def test_half_precision_backbone_keeps_a_float32_head(model_dir):
    half = ImageReward(model_dir, tokenizer=model_dir / "tokenizer", vision=VISION, dtype="bf16")
    assert half.net.blip.visual_encoder.pos_embed.dtype == torch.bfloat16
    assert half.net.mlp.layers[0].weight.dtype == torch.float32
    full = ImageReward(model_dir, tokenizer=model_dir / "tokenizer", vision=VISION)
    result = half.score(make_images(), PROMPTS)
    assert result.scores.dtype == torch.float32 and result.provenance["imagereward"].dtype == "torch.bfloat16"
    torch.testing.assert_close(result.scores, full.score(make_images(), PROMPTS).scores, rtol=0.1, atol=0.1)
