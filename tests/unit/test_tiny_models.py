"""Tiny model builders (``visalign.testing``): each saves, reloads through the real loading path and runs.

"Identical" after reload means bit-equal weights and outputs equal to float32 rounding: safetensors loads weights
into differently aligned memory, which can change the SIMD summation order (differences ~1e-7).
"""

import dataclasses

import numpy as np
import open_clip
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import (
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from visalign.testing import (
    SMALL_SDXL,
    TINY_SD,
    DiffusionShape,
    clip_style_tokenizer,
    register_tiny_open_clip,
    save_tiny_clip,
    save_tiny_llava,
    save_tiny_llava_next,
    save_tiny_open_clip,
    save_tiny_qwen2_vl,
    save_tiny_sd,
    save_tiny_sdxl,
    tiny_clip,
    tiny_llava,
    tiny_llava_next,
    tiny_open_clip,
    tiny_qwen2_vl,
    tiny_sd_pipeline,
    tiny_sdxl_components,
    tiny_sdxl_pipeline,
)
from visalign.testing.clip import clip_text_config

TIGHT = {"atol": 1e-5, "rtol": 1e-5}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# ---------------------------------------------------------------- diffusion

SD_CASES = {
    "sd15": (lambda: tiny_sd_pipeline(), lambda p: save_tiny_sd(p), "epsilon"),
    "sd2": (lambda: tiny_sd_pipeline(variant="sd2"), lambda p: save_tiny_sd(p, variant="sd2"), "v_prediction"),
    "sdxl": (tiny_sdxl_pipeline, save_tiny_sdxl, "epsilon"),
}


@pytest.fixture(scope="module", params=sorted(SD_CASES))
def saved_pipeline(request, tmp_path_factory):
    build, save, prediction_type = SD_CASES[request.param]
    path = save(tmp_path_factory.mktemp(request.param))
    return request.param, build(), path, prediction_type


def test_pipeline_reloads_with_same_weights_and_images(saved_pipeline):
    name, pipe, path, _ = saved_pipeline
    reloaded = DiffusionPipeline.from_pretrained(path)
    assert type(reloaded) is type(pipe)
    for key, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            assert_same_weights(component, reloaded.components[key])
            assert n_params(component) < 30_000, key

    def generate(p):
        out = p("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
        return out.images

    images = generate(pipe)
    assert images.shape == (1, 3, TINY_SD.image_size, TINY_SD.image_size)
    assert torch.isfinite(images).all()
    torch.testing.assert_close(generate(reloaded), images, **TIGHT)


def test_pipeline_components_load_from_subfolders(saved_pipeline):
    name, pipe, path, prediction_type = saved_pipeline
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    assert_same_weights(unet, pipe.unet)
    assert_same_weights(AutoencoderKL.from_pretrained(path, subfolder="vae"), pipe.vae)
    assert_same_weights(CLIPTextModel.from_pretrained(path, subfolder="text_encoder"), pipe.text_encoder)
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
    assert tokenizer("a red circle").input_ids == pipe.tokenizer("a red circle").input_ids
    assert tokenizer.model_max_length == 77
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    assert scheduler.config.steps_offset == 1
    assert scheduler.config.prediction_type == prediction_type
    # SD's latent geometry: image / 2**(VAE blocks - 1) = 32 / 2 = 16 on the UNet side.
    assert unet.config.sample_size == 16 and unet.config.in_channels == pipe.vae.config.latent_channels
    if name == "sdxl":
        encoder_2 = CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2")
        assert_same_weights(encoder_2, pipe.text_encoder_2)
        # SDXL: 6 micro-conditioning ids x addition_time_embed_dim + the pooled (projected) text embedding.
        assert unet.config.projection_class_embeddings_input_dim == 6 * 8 + encoder_2.config.projection_dim
        assert unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size + encoder_2.config.hidden_size


def test_clip_style_tokenizer_frames_text_like_clip():
    tok = clip_style_tokenizer()
    ids = tok("A red circle.").input_ids
    assert ids == [tok.bos_token_id, *tok.convert_tokens_to_ids(["a", "red", "circle", "."]), tok.eos_token_id]
    long = tok(" ".join(["red"] * 100), truncation=True, max_length=77, padding="max_length").input_ids
    assert len(long) == 77 and long[-1] == tok.eos_token_id  # truncation keeps the closing </s>


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_clip_text_encoder_pools_at_eos_whatever_the_padding(hidden_act):
    tok = clip_style_tokenizer()
    encoder = CLIPTextModel(clip_text_config(tok, hidden_act=hidden_act)).eval()
    padded = tok(["a red circle", "a big blue square on the left"], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        out = encoder(**padded)
    # </s> sits after <s> + the words: index 4 and 8.
    eos_positions = [4, 8]
    assert (padded.input_ids[torch.arange(2), eos_positions] == tok.eos_token_id).all()
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[torch.arange(2), eos_positions])
    unpadded = tok(["a red circle"], return_tensors="pt")
    with torch.no_grad():
        alone = encoder(**unpadded).pooler_output
    torch.testing.assert_close(alone, out.pooler_output[:1], **TIGHT)


def test_sdxl_pooled_prompt_embedding_is_text_encoder_2_projection_at_eos():
    pipe = tiny_sdxl_pipeline()
    prompt_embeds, _, pooled, _ = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False)
    ids = pipe.tokenizer_2("a red circle", padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        out = pipe.text_encoder_2(ids, output_hidden_states=True)
        expected_pooled = pipe.text_encoder_2.text_projection(out.last_hidden_state[:, 4])
    torch.testing.assert_close(pooled, expected_pooled, **TIGHT)
    assert prompt_embeds.shape == (1, 77, pipe.unet.config.cross_attention_dim)


def test_small_sdxl_shape_builds_and_runs_one_unet_forward():
    components = tiny_sdxl_components(shape=SMALL_SDXL)
    unet, vae = components["unet"], components["vae"]
    assert SMALL_SDXL.latent_size == 256 // 8 == unet.config.sample_size
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 256, 256)).latent_dist.mean
        assert latents.shape == (1, 4, 32, 32)
        out = unet(
            latents,
            10,
            torch.zeros(1, 77, unet.config.cross_attention_dim),
            added_cond_kwargs={"text_embeds": torch.zeros(1, SMALL_SDXL.pooled_dim), "time_ids": torch.zeros(1, 6)},
        ).sample
    assert out.shape == latents.shape


def test_diffusion_shape_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="image_size=30"):
        DiffusionShape(image_size=30)
    with pytest.raises(ValueError, match=r"vae_channels: \[6\]"):
        dataclasses.replace(TINY_SD, vae_channels=(4, 6), norm_num_groups=4)


# ---------------------------------------------------------------- CLIP


def test_tiny_clip_reloads_and_scores_identically(tmp_path):
    model, _ = tiny_clip()
    path = save_tiny_clip(tmp_path)
    reloaded, processor = AutoModel.from_pretrained(path), AutoProcessor.from_pretrained(path)
    assert isinstance(reloaded, CLIPModel)
    assert_same_weights(model, reloaded)
    assert n_params(model) < 30_000
    inputs = processor(
        text=["a red circle", "a blue square on a white background"],
        images=[random_image(48, 80, 0), random_image(64, 64, 1)],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
        torch.testing.assert_close(reloaded(**inputs).logits_per_image, logits, **TIGHT)
        # logits = exp(logit_scale) * cos, with logit_scale initialised at ln 100.
        image = torch.nn.functional.normalize(model.get_image_features(pixel_values=inputs.pixel_values).pooler_output)
        text = model.get_text_features(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).pooler_output
    torch.testing.assert_close(logits, 100.0 * image @ torch.nn.functional.normalize(text).T, **TIGHT)


def test_clip_processor_resizes_shortest_edge_then_centre_crops():
    _, processor = tiny_clip()
    stripes = np.zeros((64, 128, 3), dtype=np.uint8)  # H 64, W 128: red | green | blue columns of 32, 64, 32
    stripes[:, :32, 0] = 255
    stripes[:, 32:96, 1] = 255
    stripes[:, 96:, 2] = 255
    pixels = processor(images=Image.fromarray(stripes), return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 32, 32)
    # Shortest edge 64 -> 32 gives 64 x 32 (red 16 | green 32 | blue 16); the 32-px centre crop is the green band,
    # bicubic-blurred only at its two edge columns.
    mean, std = torch.tensor(OPENAI_CLIP_MEAN), torch.tensor(OPENAI_CLIP_STD)
    green = ((torch.tensor([0.0, 1.0, 0.0]) - mean) / std)[:, None, None]
    torch.testing.assert_close(pixels[0, :, :, 2:-2], green.expand(3, 32, 28), atol=2e-2, rtol=0)


def test_tiny_clip_at_224_px_uses_real_preprocessing_size():
    model, processor = tiny_clip(image_size=224, patch_size=14)
    inputs = processor(text=["a cat"], images=random_image(300, 400), return_tensors="pt")
    assert inputs.pixel_values.shape == (1, 3, 224, 224)
    with torch.no_grad():
        assert model(**inputs).logits_per_image.shape == (1, 1)


def test_tiny_open_clip_reloads_from_local_dir_and_registered_name(tmp_path):
    model = tiny_open_clip()
    path = save_tiny_open_clip(tmp_path / "model")
    from_dir, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}")
    name = register_tiny_open_clip(tmp_path / "configs")
    from_name, _, _ = open_clip.create_model_and_transforms(
        name, pretrained=str(path / "open_clip_model.safetensors")
    )
    tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
    assert n_params(model) < 1_000_000  # mostly the 49408 x 16 BPE embedding table
    images = torch.stack([preprocess(random_image(40, 60, seed)) for seed in range(2)])
    tokens = tokenizer(["a red circle", "a photo of a cat"])
    assert images.shape == (2, 3, 32, 32) and tokens.shape == (2, 77)
    with torch.no_grad():
        image_features, text_features = model.encode_image(images), model.encode_text(tokens)
        for loaded in (from_dir.eval(), from_name.eval()):
            assert_same_weights(model, loaded)
            torch.testing.assert_close(loaded.encode_image(images), image_features, **TIGHT)
            torch.testing.assert_close(loaded.encode_text(tokens), text_features, **TIGHT)
    assert from_dir.logit_scale.exp().item() == pytest.approx(100.0)


# ---------------------------------------------------------------- VLMs

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the circle ?"}]}]

VLM_CASES = {
    # (builder, saver, image size (H, W), expected image tokens per image, expected prompt)
    # LLaVA: (30 / 6)^2 patches + 1 CLS - 1 dropped by the "default" strategy = 25.
    "llava": (tiny_llava, save_tiny_llava, (30, 30), 25, "user : <image> what colour is the circle ? assistant : "),
    # LLaVA-NeXT, 60x60 image: best pinpoint 60x60 = 2x2 tiles of 5x5 patches -> 10x10 features, nothing to unpad,
    # + 10 row newlines + 25 base features = 135.
    "llava_next": (
        tiny_llava_next,
        save_tiny_llava_next,
        (60, 60),
        135,
        "user : <image> what colour is the circle ? assistant : ",
    ),
    # Qwen2-VL, 56x56 image: 4x4 patches of 14 px, merged 2x2 -> 4 tokens.
    "qwen2_vl": (
        tiny_qwen2_vl,
        save_tiny_qwen2_vl,
        (56, 56),
        4,
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what colour is the circle ?<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
}


@pytest.mark.parametrize("name", sorted(VLM_CASES))
def test_vlm_reloads_through_auto_classes_and_runs_with_an_image(name, tmp_path):
    build, save, (height, width), n_image_tokens, expected_prompt = VLM_CASES[name]
    model, _ = build()
    path = save(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert type(reloaded) is type(model)
    assert_same_weights(model, reloaded)
    assert n_params(model) < 100_000

    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert prompt == expected_prompt
    inputs = processor(images=[random_image(height, width)], text=[prompt], return_tensors="pt")
    image_token_id = model.config.image_token_id
    assert (inputs.input_ids == image_token_id).sum().item() == n_image_tokens
    if name == "qwen2_vl":
        assert inputs.pixel_values.shape == (16, 3 * 2 * 14 * 14)
        assert inputs.image_grid_thw.tolist() == [[1, 4, 4]]
    if name == "llava_next":
        assert inputs.pixel_values.shape == (1, 5, 3, 30, 30)  # base image + 2x2 tiles
    with torch.no_grad():
        logits = model(**inputs).logits
        torch.testing.assert_close(reloaded(**inputs).logits, logits, **TIGHT)
    assert logits.shape == (1, inputs.input_ids.shape[1], len(processor.tokenizer))
