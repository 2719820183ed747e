"""SD/SDXL loading from saved tiny pipeline folders with ``subfolder=``, prompt encoding, SDXL time ids per image and
chunked VAE encoding (caption dropout is tested with the data, ``test_diffusion_data.py``)."""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from visalign.models.diffusion import (
    SD,
    SDXL,
    detect_family,
    encode_images,
    encode_prompts,
    load_diffusion_components,
    sdxl_time_ids,
    tokenize_prompts,
)
from visalign.testing.diffusion import TINY_SD, save_tiny_sd, save_tiny_sdxl

PROMPTS = ["a red cat on the left", "two blue squares", ""]


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("sd15") / "pipe")


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return save_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "pipe")


@pytest.fixture(scope="module")
def sd(sd_dir):
    return load_diffusion_components(sd_dir)


@pytest.fixture(scope="module")
def sdxl(sdxl_dir):
    return load_diffusion_components(sdxl_dir)


def test_detect_family_from_the_unet_config():
    assert detect_family({"addition_embed_type": "text_time"}) == SDXL
    assert detect_family({"addition_embed_type": None}) == SD
    assert detect_family({}) == SD


def test_sd_loads_from_subfolders_with_the_saved_weights(sd_dir, sd):
    assert sd.family == SD
    assert isinstance(sd.unet, UNet2DConditionModel) and isinstance(sd.vae, AutoencoderKL)
    assert [type(te) for te in sd.text_encoders] == [CLIPTextModel] and len(sd.tokenizers) == 1
    assert type(sd.scheduler).__name__ == "DDPMScheduler" and sd.scheduler.config.prediction_type == "epsilon"
    saved = load_file(sd_dir / "unet" / "diffusion_pytorch_model.safetensors")
    torch.testing.assert_close(sd.unet.conv_in.weight, saved["conv_in.weight"])
    assert all(not p.requires_grad for m in (sd.vae, *sd.text_encoders) for p in m.parameters())
    assert not sd.text_encoders[0].training


def test_sdxl_loads_two_encoders_and_tokenizers(sdxl):
    assert sdxl.family == SDXL
    assert [type(te) for te in sdxl.text_encoders] == [CLIPTextModel, CLIPTextModelWithProjection]
    assert len(sdxl.tokenizers) == 2


def test_dtypes_and_a_user_given_vae(sdxl_dir):
    parts = load_diffusion_components(sdxl_dir, weight_dtype=torch.bfloat16, unet_dtype=torch.float32)
    assert parts.unet.dtype == torch.float32
    assert all(te.dtype == torch.bfloat16 for te in parts.text_encoders)
    assert parts.vae.dtype == torch.float32  # the checkpoint's own VAE stays fp32 (stock SDXL VAE overflows in fp16)
    fixed = load_diffusion_components(
        sdxl_dir, weight_dtype=torch.bfloat16, vae=sdxl_dir, vae_subfolder="vae"
    )
    assert fixed.vae.dtype == torch.bfloat16  # a user-given fp16-safe VAE runs in the weight dtype


def test_missing_weight_keys_raise_naming_the_folder(tmp_path):
    path = save_tiny_sd(tmp_path / "pipe")
    weights = path / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    dropped = next(k for k in state if k.endswith("final_layer_norm.weight"))
    del state[dropped]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"CLIPTextModel from .*text_encoder.*missing_keys"):
        load_diffusion_components(path)


def test_sd_prompt_encoding_is_the_last_hidden_state(sd):
    emb = encode_prompts(sd.text_encoders, sd.tokenizers, PROMPTS)
    assert emb.hidden_states.shape == (3, 77, TINY_SD.text_hidden_size) and emb.pooled is None
    ids = tokenize_prompts(sd.tokenizers[0], PROMPTS)
    with torch.no_grad():
        expected = sd.text_encoders[0](ids).last_hidden_state
    torch.testing.assert_close(emb.hidden_states, expected)


def test_sdxl_prompt_encoding_concatenates_penultimate_states_and_pools_from_encoder_2(sdxl):
    emb = encode_prompts(sdxl.text_encoders, sdxl.tokenizers, PROMPTS)
    assert emb.hidden_states.shape == (3, 77, 2 * TINY_SD.text_hidden_size)
    assert emb.pooled.shape == (3, TINY_SD.pooled_dim)
    with torch.no_grad():
        outs = [te(tokenize_prompts(tok, PROMPTS), output_hidden_states=True)
                for te, tok in zip(sdxl.text_encoders, sdxl.tokenizers)]
    torch.testing.assert_close(emb.hidden_states, torch.cat([o.hidden_states[-2] for o in outs], dim=-1))
    torch.testing.assert_close(emb.pooled, outs[1].text_embeds)
    assert not torch.allclose(emb.hidden_states[..., :16], outs[0].last_hidden_state)  # penultimate, not last


def test_non_string_prompt_is_named():
    with pytest.raises(TypeError, match="prompt 1 must be a str; got NoneType"):
        tokenize_prompts(None, ["ok", None])


def test_sdxl_time_ids_carry_each_images_size_and_crop():
    ids = sdxl_time_ids([(512, 768), (1024, 1024), (600, 400)], [(0, 0), (16, 8), (3, 0)], (1024, 1024))
    expected = torch.tensor([
        [512.0, 768, 0, 0, 1024, 1024],
        [1024, 1024, 16, 8, 1024, 1024],
        [600, 400, 3, 0, 1024, 1024],
    ])
    assert torch.equal(ids, expected) and ids.dtype == torch.float32
    per_image_target = sdxl_time_ids(torch.tensor([[8, 8], [9, 9]]), [(0, 0), (1, 1)], [(4, 4), (5, 6)])
    assert per_image_target[:, 4:].tolist() == [[4, 4], [5, 6]]
    with pytest.raises(ValueError, match=r"crop_top_lefts must be 2 .* got shape \(1, 2\)"):
        sdxl_time_ids([(8, 8), (9, 9)], [(0, 0)], (4, 4))


def test_encode_images_scales_chunks_and_applies_the_shift(sd):
    pixels = torch.rand(5, 3, TINY_SD.image_size, TINY_SD.image_size) * 2 - 1
    latents = encode_images(sd.vae, pixels, batch_size=2, sample=False)
    with torch.no_grad():
        mean = sd.vae.encode(pixels).latent_dist.mean
    assert latents.dtype == torch.float32
    assert latents.shape == (5, TINY_SD.latent_channels, TINY_SD.latent_size, TINY_SD.latent_size)
    torch.testing.assert_close(latents, mean * sd.vae.config.scaling_factor, rtol=1e-5, atol=1e-5)

    shifted = AutoencoderKL.from_config(sd.vae.config, shift_factor=0.25)
    shifted.load_state_dict(sd.vae.state_dict())
    torch.testing.assert_close(
        encode_images(shifted, pixels, sample=False), (mean - 0.25) * sd.vae.config.scaling_factor,
        rtol=1e-5, atol=1e-5,
    )
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    torch.testing.assert_close(encode_images(sd.vae, pixels, generator=g1), encode_images(sd.vae, pixels, generator=g2))


def test_encode_images_rejects_bad_pixels(sd):
    with pytest.raises(ValueError, match=r"\[-1, 1\]; got range \[0, 255\]"):
        encode_images(sd.vae, torch.full((1, 3, 32, 32), 255.0).index_fill_(3, torch.tensor([0]), 0.0))
    with pytest.raises(FloatingPointError, match="fp16-safe"):
        encode_images(sd.vae, torch.full((1, 3, 32, 32), float("nan")))
