"""scripts/train_shapes_models.py --arch sdxl, shrunk below --quick, runs in-process: the saved folder loads with
StableDiffusionXLPipeline, reuses the --vae-from VAE unchanged, and bad arguments fail naming the argument."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline
from safetensors.torch import load_file

from tests.helpers.scripts import ROOT, load_script

SHAPES_SD_VAE = ROOT / "visalign" / "assets" / "shapes-sd" / "vae"
TINY = ["--quick", "--num-images", "64", "--unet-steps", "3", "--eval-prompts", "2", "--eval-steps", "2"]


train_shapes_models = load_script(ROOT / "scripts" / "train_shapes_models.py", "train_shapes_models")


@pytest.mark.skipif(not (SHAPES_SD_VAE / "config.json").is_file(), reason=f"no trained VAE at {SHAPES_SD_VAE}")
def test_sdxl_arch_saves_an_sdxl_pipeline_around_the_reused_vae(tmp_path):
    out = tmp_path / "sdxl"
    assert train_shapes_models.main(["--arch", "sdxl", "--vae-from", str(SHAPES_SD_VAE), "--out", str(out), *TINY]) == 0

    pipe = StableDiffusionXLPipeline.from_pretrained(out)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.config.force_zeros_for_empty_prompt is False  # caption dropout trained the empty prompt
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.unet.config.projection_class_embeddings_input_dim == (
        6 * pipe.unet.config.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim)
    assert pipe.unet.config.cross_attention_dim == (
        pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size)

    source = load_file(SHAPES_SD_VAE / "diffusion_pytorch_model.safetensors")
    saved = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    assert source.keys() == saved.keys() and all(torch.equal(source[k], saved[k]) for k in source)
    assert pipe.vae.config.scaling_factor == AutoencoderKL.load_config(SHAPES_SD_VAE)["scaling_factor"]

    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "train_config.json").read_text())
    assert metrics["arch"] == config["arch"] == "sdxl" and config["vae_from"] == str(SHAPES_SD_VAE)
    assert "vae_s_per_step" not in metrics["timings"] and metrics["prompts"] == 2
    assert 0.0 <= metrics["mean_reward"] <= 1.0 and (out / "samples.png").is_file()


def test_bad_arguments_fail_naming_them(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_shapes_models.main(["--arch", "sd3", "--out", str(tmp_path)])
    assert "arch must be one of ['sd', 'sdxl']" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="--vae-from .*missing"):
        train_shapes_models.build_vae(train_shapes_models.TrainConfig(vae_from=str(tmp_path / "missing")))


def test_noisy_captions_name_another_value_at_the_given_rate_and_leave_the_scenes_alone():
    from visalign.shapes.world import ATTRIBUTES, parse_prompt

    config = train_shapes_models.TrainConfig(num_images=400)
    clean = train_shapes_models.render_dataset(config)
    noisy = train_shapes_models.render_dataset(train_shapes_models.TrainConfig(num_images=400, caption_noise=0.25))
    assert torch.equal(clean[0], noisy[0])  # the same scenes, only their captions differ
    named = changed = 0
    for before, after in zip(clean[1], noisy[1]):
        asked, said = parse_prompt(before), parse_prompt(after)
        for attribute in ATTRIBUTES:
            assert (getattr(asked, attribute) is None) == (getattr(said, attribute) is None)  # the same attributes
            named += getattr(asked, attribute) is not None
            changed += getattr(asked, attribute) != getattr(said, attribute)
    assert 0.2 < changed / named < 0.3, changed / named  # 1,565 named attributes: sd of the rate 0.011


def test_the_saved_denoiser_is_the_moving_average_when_asked(tmp_path):
    """With ema_decay the saved weights are the average, not the last step's: a 3-step run saves other weights."""
    runs = {}
    for decay in ("0", "0.5"):
        out = tmp_path / decay
        args = ["--vae-from", str(SHAPES_SD_VAE), "--out", str(out), *TINY, "--ema-decay", decay]
        assert train_shapes_models.main(args) == 0
        runs[decay] = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert runs["0"].keys() == runs["0.5"].keys()
    assert not all(torch.equal(runs["0"][k], runs["0.5"][k]) for k in runs["0"])
    with pytest.raises(ValueError, match="ema_decay must be in"):
        train_shapes_models.TrainConfig(ema_decay=1.0)
