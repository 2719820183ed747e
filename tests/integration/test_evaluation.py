"""Generation determinism and resume, and `visalign eval` end to end on a tiny SD pipeline and a tiny PickScore,
its HTML report checked in headless Chromium."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig
from PIL import Image

from visalign.cli import eval as eval_cli
from visalign.cli.main import main as visalign_main
from visalign.evaluation.generate import (
    MANIFEST,
    GenerationSettings,
    _warn_emulated_dtype,
    generate_images,
    load_pipeline,
    load_prompts,
    read_manifest,
    sample_seed,
)
from visalign.evaluation.report import GRID_PROMPT_WIDTH
from visalign.evaluation.winrate import head_to_head
from visalign.models.diffusion import SD
from visalign.models.diffusion_io import save_diffusion_lora
from visalign.testing.clip import save_tiny_clip
from visalign.testing.diffusion import save_tiny_sd
from tests.helpers.browser import broken_images, browser, console_errors, open_file, screenshot  # noqa: F401

PROMPTS = ["a red circle", "a blue square", "a green triangle"]
FAST = GenerationSettings(num_inference_steps=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny SD pipeline folder, a diffusers LoRA folder for it (random non-zero B) and a tiny PickScore folder."""
    root = tmp_path_factory.mktemp("models")
    base = save_tiny_sd(root / "sd")
    pipe = DiffusionPipeline.from_pretrained(base)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g))
    save_diffusion_lora(root / "lora", pipe.unet, SD)
    clip = save_tiny_clip(root / "pickscore", image_size=32, patch_size=8)
    return {"base": str(base), "lora": str(root / "lora"), "pickscore": str(clip)}


@pytest.fixture(scope="module")
def pipeline(models):
    return load_pipeline(models["base"])


def test_load_pipeline_with_a_lora_shows_no_noise(models, capfd):
    # No nested per-text-encoder "Loading weights" bars, no diffusers "No LoRA keys associated to CLIPTextModel"
    # for a UNet-only LoRA; transformers' bars are back on afterwards.
    from transformers.utils import logging as hf_logging

    capfd.readouterr()
    pipe = load_pipeline(models["base"], lora=models["lora"])
    err = capfd.readouterr().err
    assert "Loading pipeline components" in err  # diffusers' own bar stays
    assert "Loading weights" not in err and "No LoRA keys" not in err, err[-800:]
    assert hf_logging.is_progress_bar_enabled() and pipe.get_list_adapters() == {"unet": ["default_0"]}


@pytest.mark.parametrize("features, dtype, expected, warned", [
    ({"avx2": True}, "auto", torch.float32, False),  # auto: float32 on a CPU without native bf16
    ({"avx512_bf16": True}, "auto", torch.bfloat16, False),
    ({"avx2": True}, "bfloat16", torch.bfloat16, True),  # kept as asked, with a warning: emulated bf16 is slow
    ({"amx_bf16": True}, "bfloat16", torch.bfloat16, False),
])
def test_load_pipeline_picks_auto_dtype_from_the_cpu_and_warns_on_emulated_bf16(models, monkeypatch, caplog, features,
                                                                               dtype, expected, warned):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: features)
    _warn_emulated_dtype.cache_clear()  # warned once per process: an earlier load in this worker may have warned
    with caplog.at_level("WARNING", logger="visalign.evaluation.generate"):
        pipe = load_pipeline(models["base"], dtype=dtype)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == expected
    assert ("runs many times slower than float32" in caplog.text) == warned, caplog.text


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_seeds_are_fixed_per_prompt_and_index():
    assert sample_seed("a cat", 0) == sample_seed("a cat", 0)
    seeds = {sample_seed(p, k, base) for p in ("a cat", "a dog") for k in range(3) for base in (0, 1)}
    assert len(seeds) == 12 and all(0 <= s < 2**31 for s in seeds)


def test_same_seed_gives_the_same_image_in_any_batch(pipeline, tmp_path):
    one = generate_images(pipeline, PROMPTS, tmp_path / "one", num_seeds=2, settings=FAST, batch_size=4,
                          progress=False)
    two = generate_images(pipeline, PROMPTS, tmp_path / "two", num_seeds=2, settings=FAST, batch_size=1,
                          progress=False)
    assert [(s.prompt, s.index, s.seed) for s in one] == [(s.prompt, s.index, s.seed) for s in two]
    assert [(s.prompt_index, s.index) for s in one] == [(p, k) for p in range(3) for k in range(2)]
    first = [pixels(tmp_path / "one" / s.path) for s in one]
    for s, image in zip(two, first):
        assert np.abs(pixels(tmp_path / "two" / s.path) - image).max() <= 1  # batching: at most PNG rounding
    assert np.abs(first[0] - first[1]).max() > 0  # two seeds of one prompt differ
    assert one[0].settings["guidance_scale"] == 7.5  # SD default CFG is recorded (reference §16)
    again = generate_images(pipeline, PROMPTS[:1], tmp_path / "again", num_seeds=1, settings=FAST, progress=False)
    np.testing.assert_array_equal(pixels(tmp_path / "again" / again[0].path), first[0])


def test_resume_skips_existing_images_and_redoes_missing_or_changed_ones(pipeline, tmp_path):
    out = tmp_path / "gen"
    samples = generate_images(pipeline, PROMPTS, out, num_seeds=2, settings=FAST, progress=False)
    mtimes = {s.path: (out / s.path).stat().st_mtime_ns for s in samples}
    lines = lambda: len((out / MANIFEST).read_text().splitlines())  # noqa: E731
    assert lines() == 6

    assert generate_images(pipeline, PROMPTS, out, num_seeds=2, settings=FAST, progress=False) == samples
    assert lines() == 6 and all((out / p).stat().st_mtime_ns == t for p, t in mtimes.items())

    (out / samples[3].path).unlink()
    with open(out / MANIFEST, "a") as f:
        f.write('{"prompt": "a red ci')  # a run killed while writing a manifest line
    generate_images(pipeline, PROMPTS, out, num_seeds=2, settings=FAST, progress=False)
    assert lines() == 7 and (out / samples[3].path).is_file()  # the 6 valid entries + the redone image
    assert all((out / p).stat().st_mtime_ns == t for p, t in mtimes.items() if p != samples[3].path)

    changed = generate_images(pipeline, PROMPTS, out, num_seeds=2, progress=False,
                              settings=GenerationSettings(num_inference_steps=3))
    assert lines() == 12 and read_manifest(out)[changed[0].path].settings["num_inference_steps"] == 3
    assert not list(out.glob(".*.tmp"))


def test_prompt_and_manifest_errors_name_the_row(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"text": "a cat"}\n{"text": ""}\n')
    assert load_prompts(tmp_path / "p.jsonl", column="text", limit=1) == ["a cat"]
    with pytest.raises(ValueError, match="row 1: 'text' must be a non-empty string"):
        load_prompts(tmp_path / "p.jsonl", column="text")
    with pytest.raises(KeyError, match="no column 'prompt'"):
        load_prompts(tmp_path / "p.jsonl")
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / MANIFEST).write_text('{"prompt": "a cat"}\n')
    with pytest.raises(ValueError, match="manifest.jsonl line 1: not a manifest entry"):
        read_manifest(tmp_path / "gen")


def test_visalign_eval_end_to_end(models, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "eval"
    argv = ["eval", "--model-a", models["base"], "--lora-a", models["lora"], "--model-b", models["base"],
            "--prompts", str(prompts), "--scorer", f"pickscore={models['pickscore']}", "--seeds", "2",
            "--steps", "2", "--bootstrap-resamples", "500", "--out", str(out), "--no-progress"]
    assert visalign_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"models", "scorers", "bootstrap", "num_prompts", "seeds_per_prompt", "files"}
    assert (report["num_prompts"], report["seeds_per_prompt"]) == (3, 2)
    assert report["models"]["a"]["lora"] == models["lora"] and report["models"]["b"]["lora"] is None
    section = report["scorers"]["pickscore"]
    assert section["provenance"]["pickscore"]["model_id"] == models["pickscore"]
    assert "not rescaled" in section["scale"] and section["formula"] == "exp(logit_scale) * cos(t, v)"

    # the report's numbers are the head-to-head of the per-image scores it wrote
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert Counter(r["model"] for r in rows) == {"a": 6, "b": 6}
    scores = {m: np.array([r["score"] for r in rows if r["model"] == m]).reshape(3, 2) for m in "ab"}
    assert not np.allclose(scores["a"], scores["b"])  # the LoRA changed the images
    wins = sum(a > b for a, b in zip(scores["a"].ravel(), scores["b"].ravel()))
    assert section["win"] == wins / 6 and section["win"] + section["tie"] + section["loss"] == pytest.approx(1)
    expected = head_to_head(scores["a"], scores["b"], num_resamples=500)
    assert section["win_ci"] == list(expected.win_ci) and section["mean_diff"] == pytest.approx(expected.mean_diff)
    # each detail of the score is compared like the score: PickScore = exp(logit_scale) * cosine, so the cosine's
    # means and difference are the score's divided by one constant (up to float32 rounding of each score: a
    # difference of means carries it at ~1e-6 relative, so the tolerance is 1e-5)
    cosine = section["details"]["compared"]["cosine"]
    scale = section["mean_a"] / cosine["mean_a"]
    assert scale > 1 and section["mean_b"] / cosine["mean_b"] == pytest.approx(scale, rel=1e-5)
    assert cosine["mean_diff"] * scale == pytest.approx(section["mean_diff"], rel=1e-5)
    assert section["details"]["not_compared"] == []
    assert "## Score details" in (out / "report.md").read_text()

    # the grid: a header row naming the models, the prompts left of their rows, the 32-px images enlarged 4x
    grid = np.asarray(Image.open(out / "grid.png").convert("L"))
    cell, gap, header = 4 * 32, 4, 40
    assert grid.shape == (header + 3 * (cell + gap), GRID_PROMPT_WIDTH + 2 * (cell + gap))
    first = {m: next(r for r in rows if r["model"] == m and r["prompt_index"] == 0 and r["index"] == 0) for m in "ab"}
    for column, m in enumerate("ab"):
        enlarged = Image.open(out / first[m]["path"]).convert("L").resize((cell, cell), Image.Resampling.NEAREST)
        x = GRID_PROMPT_WIDTH + column * (cell + gap)
        assert np.array_equal(grid[header:header + cell, x:x + cell], np.asarray(enlarged))
        assert (grid[:header, x:x + cell] < 128).any()  # the column's name is written above it
    assert (grid[header:header + cell, :GRID_PROMPT_WIDTH] < 128).any()  # and the prompt beside its row
    markdown = (out / "report.md").read_text()
    assert "| pickscore |" in markdown and "grid.png" in markdown
    assert report["files"]["html"] == "report.html" and (out / "report.html").is_file()
    printed = capsys.readouterr().out
    assert "| pickscore |" in printed and f"open {out / 'report.html'} in a browser" in printed

    # a rerun reuses every image and reproduces the report
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("images/*/*.png")}
    assert len(mtimes) == 12
    assert visalign_main(argv) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert json.loads((out / "report.json").read_text()) == report


def test_visalign_eval_rejects_bad_input_before_loading(models, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    common = ["--model-a", models["base"], "--model-b", models["base"], "--prompts", str(prompts),
              "--out", str(tmp_path / "out")]
    assert eval_cli.main(common + ["--scorer", "pickscor"]) == 2
    assert "unknown scorer 'pickscor'" in capsys.readouterr().err
    assert eval_cli.main(common + ["--scorer", "pickscore", "--lora-a", str(tmp_path / "nope")]) == 2
    assert "--lora-a" in capsys.readouterr().err
    assert eval_cli.main(common + ["--scorer", "pickscore", "--tie-tolerance", "hps=0.1"]) == 2
    assert "names scorer 'hps', which is not a --scorer" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_visalign_eval_html_report_in_a_browser(models, tmp_path, browser):  # noqa: F811 (pytest fixture)
    hostile = '<script>window.pwned = 1</script> a cat & "dog"'
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([PROMPTS[0], hostile, "a green <b>triangle</b>"]) + "\n")
    out = tmp_path / "eval"
    assert visalign_main(["eval", "--model-a", models["base"], "--lora-a", models["lora"], "--model-b", models["base"],
                          "--prompts", str(prompts), "--scorer", f"pickscore={models['pickscore']}", "--seeds", "2",
                          "--steps", "2", "--bootstrap-resamples", "200", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    section = report["scorers"]["pickscore"]
    open_file(browser, out / "report.html")
    assert console_errors(browser) == [] and broken_images(browser) == []
    assert len(browser.find_elements("css selector", "#pairs img")) == 12

    # every number in the summary is report.json's, shown at the table's precision
    numbers = browser.execute_script(
        "return Array.from(document.querySelectorAll('#summary .num'), e => [e.dataset.scorer, e.dataset.field, "
        "Number(e.dataset.value), e.textContent]);")
    assert len(numbers) == 17  # means, medians, 3 rates and the difference with their intervals, tie tolerance
    for scorer, field, value, text in numbers:
        name, _, index = field.partition(".")
        expected = report["scorers"][scorer][name] if not index else report["scorers"][scorer][name][int(index)]
        assert value == expected, field
        shown = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
        assert shown == pytest.approx(expected, rel=1e-3, abs=5e-4), (field, text)
    # and so is every number of the score details (the cosine behind PickScore)
    details = browser.execute_script(
        "return Array.from(document.querySelectorAll('#details .num'), e => [e.dataset.scorer, e.dataset.field, "
        "Number(e.dataset.value)]);")
    assert len(details) == 5  # the cosine's two means, its difference and the difference's interval
    for scorer, field, value in details:
        expected = report["scorers"][scorer]
        for part in field.split("."):
            expected = expected[int(part)] if part.isdigit() else expected[part]
        assert value == expected, field
    assert browser.find_element("id", "provenance").text.count(section["scale"]) == 1
    assert browser.find_elements("css selector", "svg.histogram rect")

    # per-image scores are scores.jsonl's; the hostile prompt is shown as text and its script never ran
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('#pairs tbody tr'), r => [r.querySelector('.prompt').innerText, "
        "r.querySelector('img').getAttribute('src'), Array.from(r.querySelectorAll('.score'), "
        "s => [s.dataset.model, Number(s.dataset.value)])]);")
    expected_rows = {(r["prompt"], r["path"]): r["score"] for r in rows if r["model"] == "a"}
    assert {(prompt, src): dict(scores)["a"] for prompt, src, scores in shown} == expected_rows
    assert sum(prompt == hostile for prompt, _, _ in shown) == 2
    assert browser.execute_script("return window.pwned") is None

    # default order: largest |A - B| first; the select re-sorts (A's biggest losses first)
    def margins():
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('#pairs tbody tr'), r => Number(r.dataset.m0));")

    assert [abs(m) for m in margins()] == sorted((abs(m) for m in margins()), reverse=True)
    select = "const s = document.getElementById('sort'); s.value = arguments[0]; s.dispatchEvent(new Event('change'));"
    browser.execute_script(select, "asc:0")
    assert margins() == sorted(margins())
    assert console_errors(browser) == []
    browser.execute_script(select, "abs:0")
    # VISALIGN_SCREENSHOTS=docs/images keeps it for the docs
    screenshot(browser, Path(os.environ.get("VISALIGN_SCREENSHOTS", tmp_path)) / "eval-report.png")
