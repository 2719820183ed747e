"""Training SPO's step-aware preference model (``method: spm``) on tiny SD/SDXL and a tiny CLIP: the x0 it judges, the
accuracy at SPO's timesteps, resume, the saved folder, the recipes, and config errors before any model loads."""

from __future__ import annotations

import datasets
import pytest
import torch

from reward_models import load_scorer
from reward_models.step_aware import EVAL_TIMESTEPS
from tests.helpers.diffusion import CAPTIONS, pairs, sd15, sdxl, write_pairs  # noqa: F401 (fixtures)
from tests.helpers.runs import Killed, assert_same_weights, killed_after, metric_lines
from visalign.cli.train import main as train_main
from visalign.config_io import read_yaml_mapping
from visalign.data.diffusion import load_preference_pairs
from visalign.data.sources import load_source
from visalign.likelihood.diffusion import pair_noise_seed
from visalign.models.diffusion import decode_latents, encode_images
from visalign.testing.clip import save_tiny_clip
from visalign.trainers.spm import EVAL_NOISE_KEY, SPMConfig, SPMTrainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    """A tiny PickScore-shaped CLIP folder (model + tokenizer)."""
    return str(save_tiny_clip(tmp_path_factory.mktemp("clip")))


def _config(out, model, clip, data, **overrides) -> SPMConfig:
    values = dict(model=model, spm_init=clip, dataset=data, output_dir=str(out), max_steps=2, per_device_batch_size=2,
                  learning_rate=1e-3, logging_steps=1, save_steps=1, resolution=32, report_to="none")
    return SPMConfig(**{**values, **overrides})


def test_both_images_of_a_pair_are_judged_at_one_t_and_eps_as_a_direct_computation(tmp_path, sd15, clip, pairs):
    trainer = SPMTrainer(_config(tmp_path / "run", sd15, clip, pairs, timestep_min=100, timestep_max=900))
    batch = trainer.collator([trainer.train_dataset[i] for i in (2, 3)])
    pixels, noised = trainer.predicted_x0(batch, 7)
    assert torch.equal(noised.timesteps[:2], noised.timesteps[2:]) and torch.equal(noised.noise[:2], noised.noise[2:])
    assert not torch.equal(noised.noise[0], noised.noise[1])  # independent across pairs

    comp, scheduler = trainer.components, trainer.components.scheduler
    latents = encode_images(comp.vae, batch["pixel_values"], sample=False)
    for i, index in enumerate((2, 3)):
        generator = torch.Generator().manual_seed(pair_noise_seed(trainer.args.seed, 7, index))
        t = torch.randint(100, 900, (1,), generator=generator)
        eps = torch.randn(latents[:1].shape, generator=generator)
        assert int(noised.timesteps[i]) == int(t)
        abar = scheduler.alphas_cumprod[t].float()
        for row in (i, 2 + i):  # the chosen image, then the rejected one
            x_t = abar.sqrt() * latents[row:row + 1] + (1 - abar).sqrt() * eps
            text = comp.adapter.encode_prompts(comp.text_encoders, comp.tokenizers, ["", CAPTIONS[index]])
            with torch.no_grad():
                out = comp.unet(torch.cat([x_t, x_t]), t.repeat(2), encoder_hidden_states=text.hidden_states).sample
            eps_hat = out[0] + 5.0 * (out[1] - out[0])
            x0 = (x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
            expected = (decode_latents(comp.vae, x0).clamp(-1, 1) + 1) / 2
            torch.testing.assert_close(pixels[row:row + 1], expected, atol=1e-4, rtol=1e-4)


def test_spm_trains_logs_accuracy_at_spo_timesteps_resumes_exactly_and_saves_a_loadable_scorer(tmp_path, sd15, clip,
                                                                                               pairs):
    whole = SPMTrainer(_config(tmp_path / "whole", sd15, clip, pairs, eval_dataset=pairs))
    before = {n: p.detach().clone() for n, p in whole.model.named_parameters()}
    result = whole.train()
    assert any(not torch.equal(p, before[n]) for n, p in whole.model.named_parameters())
    logged = metric_lines(tmp_path / "whole" / "metrics.jsonl")
    assert all("accuracy" in row and "loss" in row for row in logged[:2])
    for t in EVAL_TIMESTEPS:
        assert 0.0 <= result[f"eval_accuracy/t={t}"] <= 1.0 and f"eval_loss/t={t}" in logged[-1]

    run = tmp_path / "run"
    with pytest.raises(Killed):
        killed_after(SPMTrainer, 1)(_config(run, sd15, clip, pairs, eval_dataset=pairs)).train()
    resumed = SPMTrainer(_config(run, sd15, clip, pairs, eval_dataset=pairs, resume_from="latest"))
    resumed.train()
    assert resumed.resumed_from.name == "checkpoint-1"
    assert_same_weights(resumed, whole)
    assert metric_lines(run / "metrics.jsonl") == logged

    saved = load_scorer("step-aware", model=str(tmp_path / "whole"))
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = whole.spm.score_tensor(pixels, CAPTIONS[:3], timesteps=[0, 501, 951]).scores
        got = saved.score_tensor(pixels, CAPTIONS[:3], timesteps=[0, 501, 951]).scores
    torch.testing.assert_close(got, expected)
    assert read_yaml_mapping(tmp_path / "whole" / "config.yaml")["method"] == "spm"
    assert "load_scorer(\"step-aware\"" in (tmp_path / "whole" / "README.md").read_text()


def test_pickapic_ties_train_towards_one_half_and_weigh_nothing_in_the_accuracy(tmp_path, sd15, clip, pairs):
    folder = load_preference_pairs(pairs)
    table = datasets.Dataset.from_dict({
        "jpg_0": [f"{pairs}/{folder.images[i]['chosen']}" for i in range(4)],
        "jpg_1": [f"{pairs}/{folder.images[i]['rejected']}" for i in range(4)],
        "label_0": [1.0, 0.5, 0.0, 0.5], "caption": CAPTIONS})
    table.to_json(tmp_path / "pickapic.jsonl")
    trainer = SPMTrainer(_config(tmp_path / "run", sd15, clip, str(tmp_path / "pickapic.jsonl")))
    batch = trainer.collator([trainer.train_dataset[i] for i in range(4)])
    assert batch["label_0"].tolist() == [1.0, 0.5, 1.0, 0.5]  # pair 2 swapped: its jpg_1 is the chosen image
    assert batch["weights"].tolist() == [1.0] * 4  # one pair per prompt
    trainer._evaluating = True
    assert trainer.num_examples(batch) == 2


def test_evaluation_averages_its_noise_draws_each_keyed_apart(tmp_path, sd15, clip, pairs):
    """With ``eval_noise_draws`` 3 the loss and each accuracy (the SPM's and the baseline's) are the means of the three
    draws under keys ``EVAL_NOISE_KEY - d``, and draw 0 is the single-draw evaluation's noise."""
    trainer = SPMTrainer(_config(tmp_path / "run", sd15, clip, pairs, eval_noise_draws=3,
                                 eval_baseline_scorer="shapes", eval_timesteps=[951]))
    trainer.baseline_scorer = load_scorer("pickscore", model=clip)  # judges the test captions, unlike shapes
    batch = trainer.collator([trainer.train_dataset[i] for i in range(4)])
    batch["label_0"] = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    trainer._evaluating = True
    _, metrics = trainer._evaluation_loss(batch)
    losses, spm, baseline, noises = [], [], [], []
    for draw in range(3):
        pixels, noised = trainer.predicted_x0(batch, EVAL_NOISE_KEY - draw, 951)
        loss, accuracy = trainer.spm_loss(batch, pixels, noised.timesteps, decided_only=True)
        losses.append(loss.item())
        spm.append(accuracy.item())
        p0 = trainer.baseline_scorer.preference(batch["captions_chosen"], *pixels.chunk(2)).probs
        baseline.append(torch.where(batch["label_0"] > 0.5, p0 > 0.5, p0 < 0.5).float().mean().item())
        noises.append(noised.noise)
    assert not torch.equal(noises[0], noises[1]) and not torch.equal(noises[1], noises[2])
    assert len(set(losses)) == 3 and metrics["loss/t=951"] == pytest.approx(sum(losses) / 3)
    assert metrics["accuracy/t=951"] == pytest.approx(sum(spm) / 3)
    assert metrics["baseline_accuracy/t=951"] == pytest.approx(sum(baseline) / 3)
    single = SPMTrainer(_config(tmp_path / "single", sd15, clip, pairs, eval_timesteps=[951]))
    torch.testing.assert_close(single.predicted_x0(batch, EVAL_NOISE_KEY, 951)[1].noise, noises[0])


@pytest.mark.parametrize("recipe", ["spm-sd15", "spm-sdxl", "spm-shapes"])
def test_recipes_run_two_steps_on_tiny_components(recipe, tmp_path, sd15, sdxl, clip, capsys):
    """The recipes' settings flow into the run; the model (a tiny one of the recipe's family), the CLIP, the pickscore
    label scorer (the tiny CLIP) and sizes are overridden for a CPU."""
    from visalign.recipes import recipe_file

    with recipe_file(recipe) as path:
        settings = read_yaml_mapping(path)
    prompts = load_source("builtin:shapes-prompts")["prompt"][:4]
    data = write_pairs(tmp_path / "pairs", prompts)
    model = {"spm-sd15": sd15, "spm-sdxl": sdxl, "spm-shapes": "builtin:shapes-sd"}[recipe]
    out = tmp_path / "run"
    argv = ["--config", recipe, "--model", model, "--spm_init", clip, "--dataset", data, "--eval_dataset", data,
            "--max_steps", "2", "--per_device_batch_size", "2", "--resolution", "32", "--mixed_precision", "no",
            "--report_to", "none", "--output_dir", str(out)]
    if recipe == "spm-sdxl":
        argv += ["--vae", "none", "--label_scorer_model", clip]
    assert train_main(argv) == 0
    printed = capsys.readouterr().out
    resolved = read_yaml_mapping(out / "config.yaml")
    for key in ("learning_rate", "weight_decay", "guidance_scale", "label_scorer", "tie_margin", "eval_timesteps"):
        assert resolved[key] == settings.get(key, resolved[key]), key
    assert "eval_accuracy/t=951:" in printed
    assert ("eval_baseline_accuracy/t=951:" in printed) == (recipe == "spm-shapes")  # the shapes reward on the x0
    assert load_scorer("step-aware", model=str(out)).info.name == "step-aware"


@pytest.mark.parametrize("overrides, message", [
    (dict(guidance_scale=-1.0), "SPMConfig.guidance_scale must be >= 0"),
    (dict(timestep_min=1000), r"SPMConfig.timestep_min must be in \[0, timestep_max 1000\)"),
    (dict(tie_margin=0.1), "SPMConfig.tie_margin must be 0 without label_scorer"),
    (dict(label_scorer="pickscroe"), "SPMConfig.label_scorer must be one of"),
    (dict(eval_baseline_scorer="shape"), "SPMConfig.eval_baseline_scorer must be one of"),
    (dict(eval_timesteps=[]), "SPMConfig.eval_timesteps must be a non-empty list"),
    (dict(eval_noise_draws=0), r"SPMConfig.eval_noise_draws must be in \[1, 1000\]"),
    (dict(use_lora=True), "SPMConfig.use_lora must be false"),
])
def test_bad_keys_fail_before_any_model_loads(overrides, message):
    with pytest.raises(ValueError, match=message):
        SPMConfig(model="does-not-exist", spm_init="nor-this", dataset="nor-that", **overrides)


def test_cli_names_an_unknown_key_and_a_missing_spm_init_before_loading(tmp_path, capsys):
    assert train_main(["--config", "spm-sd15", "--guidance_scael", "3", "--print-config"]) == 2
    assert "did you mean --guidance_scale?" in capsys.readouterr().err
    with pytest.raises(ValueError, match="SPMConfig.spm_init must be set"):
        SPMTrainer(SPMConfig(model="does-not-exist", dataset="nor-that", output_dir=str(tmp_path / "o")))


def test_the_full_timestep_range_draws_what_diffusion_dpo_draws():
    """``TimestepRangeNoise`` over [0, 1000) is ``RandomNoise`` (the diffusion trainer's), draw for draw."""
    from diffusers import DDPMScheduler

    from visalign.likelihood.noise import RandomNoise
    from visalign.trainers.spm import TimestepRangeNoise

    scheduler, latents = DDPMScheduler(), torch.randn(2, 4, 8, 8)
    ours = TimestepRangeNoise()(latents, scheduler=scheduler, generator=torch.Generator().manual_seed(3))
    theirs = RandomNoise()(latents, scheduler=scheduler, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.noisy_latents, theirs.noisy_latents)
    narrow = TimestepRangeNoise(900, 901)(latents, scheduler=scheduler, generator=torch.Generator().manual_seed(3))
    assert narrow.timesteps.tolist() == [900, 900]
