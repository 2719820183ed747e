"""Compare two text-to-image models: generate (or reuse) both models' images, score them, write the report.

:func:`compare_models` runs the protocol of reference ``diffusion-methods.md`` §16: the same prompts and seeds for
model A and model B (:mod:`visalign.evaluation.generate`), every scorer on both, and per scorer the mean and median
score of each model, strict win/tie/loss rates of A against B and the mean difference with paired bootstrap intervals
(:mod:`visalign.evaluation.winrate`). It writes into ``out_dir``:

- ``report.json``: models, generation settings, bootstrap settings and one section per scorer (the
  :class:`~visalign.evaluation.winrate.HeadToHead` fields, the scorer's formula, raw range and direction, its
  provenance and the scale convention: scores are the scorer's raw output, never rescaled, so PickScore is
  ``exp(logit_scale)·cos`` (≈ 20) and HPS a raw cosine (≈ 0.27) where papers print ``100·cos``; reward-scorers.md §1.6),
  and under ``details`` each per-sample detail the scorer reports (the ``shapes`` reward's components, a CLIP
  scorer's cosine) compared like the score: both means and the mean difference with its interval;
- ``report.md``: the same as tables;
- ``report.html``: the same in a self-contained page with score histograms and the images side by side, sortable
  by score difference (:mod:`visalign.evaluation.html_report`);
- ``scores.jsonl``: one row per (model, image, scorer);
- ``grid.png``: rows = prompts, columns = model A then model B (first seed of each prompt);
- ``images/a``, ``images/b``: the PNGs and their manifests.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import visalign
from visalign.evaluation.generate import GenerationSettings, Sample, generate_images, load_pipeline, score_samples
from visalign.evaluation.html_report import REPORT_HTML, write_html_report
from visalign.evaluation.winrate import HeadToHead, head_to_head

LABELS = ("a", "b")
REPORT_JSON, REPORT_MD, SCORES_JSONL, GRID_PNG, IMAGES_DIR = "report.json", "report.md", "scores.jsonl", "grid.png", \
    "images"


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: a diffusers pipeline (hub id or folder), optionally a diffusers LoRA folder, and the name
    the report's grid heads its column with (default: its label, the model and whether a LoRA is loaded)."""

    model: str
    lora: str | None = None
    name: str | None = None

    def display_name(self, label: str) -> str:
        return self.name or f"{label.upper()}: {self.model}{' + LoRA' if self.lora else ''}"


@dataclass(frozen=True)
class ScorerSpec:
    """A scorer to load with ``load_scorer(name, **kwargs)``, reported under ``key`` (unique within a report)."""

    key: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def load(self, device: str | torch.device | None = None):
        """The scorer, on ``device`` unless its ``kwargs`` name one (every scorer takes ``device=``)."""
        from reward_models import load_scorer

        placed = {} if device is None else {"device": str(device)}
        return load_scorer(self.name, **{**placed, **self.kwargs})


def scale_convention(info) -> str:
    """How to read a scorer's numbers in the report: its raw formula and range, not rescaled."""
    low, high = info.raw_range
    direction = "higher is better" if info.higher_is_better else "lower is better"
    return f"raw scorer output, not rescaled: {info.formula}, range [{low}, {high}], {direction}"


def scorer_section(scorer, provenance: Mapping[str, Any], result: HeadToHead) -> dict[str, Any]:
    """The report section of one scorer: what its numbers mean, where they came from and the head-to-head result."""
    info = scorer.info
    return {
        "scorer": info.name,
        "formula": info.formula,
        "raw_range": [_json_number(v) for v in info.raw_range],
        "scale": scale_convention(info),
        "provenance": {name: p.as_dict() for name, p in provenance.items()},
        **result.as_dict(),
    }


def detail_differences(details_a: Mapping[str, torch.Tensor], details_b: Mapping[str, torch.Tensor],
                       num_prompts: int, *, num_resamples: int, confidence: float, seed: int) -> dict[str, Any]:
    """Per-sample details both models' scores carry (e.g. the ``shapes`` reward's components), compared as the score
    is: mean of each model, mean difference A - B with its paired bootstrap interval over prompts. A detail with a
    non-finite value has no mean; it is listed under ``not_compared`` instead."""
    compared, not_compared = {}, []
    for key in [k for k in details_a if k in details_b]:
        a, b = (d[key].detach().double().cpu().numpy().reshape(num_prompts, -1) for d in (details_a, details_b))
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            not_compared.append(key)
            continue
        h = head_to_head(a, b, num_resamples=num_resamples, confidence=confidence, seed=seed)
        compared[key] = {"mean_a": h.mean_a, "mean_b": h.mean_b, "mean_diff": h.mean_diff,
                         "mean_diff_ci": h.mean_diff_ci}
    return {"compared": compared, "not_compared": not_compared}


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the models, then one row per scorer (values with their intervals), then scales and provenance."""
    level = f"{report['bootstrap']['confidence']:.0%}"
    lines = [f"# visalign eval: A vs B ({report['num_prompts']} prompts x {report['seeds_per_prompt']} seeds)", "",
             "| | model | LoRA | guidance | steps |", "| --- | --- | --- | --- | --- |"]
    for label in LABELS:
        m = report["models"][label]
        lora = f"`{m['lora']}`" if m["lora"] else "-"
        lines.append(f"| {label.upper()} | `{m['model']}` | {lora} | "
                     f"{m['settings']['guidance_scale']} | {m['settings']['num_inference_steps']} |")
    lines += ["", f"Win/tie/loss are strict rates of A against B over all (prompt, seed) comparisons; brackets are "
              f"{level} paired bootstrap intervals over prompts ({report['bootstrap']['num_resamples']} resamples, "
              f"seed {report['bootstrap']['seed']}).", "",
              "| scorer | mean A | mean B | median A | median B | A wins | ties | A loses | mean A - B | tie tol. |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, s in report["scorers"].items():
        lines.append(f"| {key} | {s['mean_a']:.4g} | {s['mean_b']:.4g} | {s['median_a']:.4g} | {s['median_b']:.4g} | "
                     f"{_rate(s['win'], s['win_ci'])} | {_rate(s['tie'], s['tie_ci'])} | "
                     f"{_rate(s['loss'], s['loss_ci'])} | {s['mean_diff']:.4g} "
                     f"[{s['mean_diff_ci'][0]:.4g}, {s['mean_diff_ci'][1]:.4g}] | {s['tie_tolerance']:g} |")
    detail_rows = [f"| {key} | {name} | {d['mean_a']:.4g} | {d['mean_b']:.4g} | {d['mean_diff']:+.4g} "
                   f"[{d['mean_diff_ci'][0]:+.4g}, {d['mean_diff_ci'][1]:+.4g}] |"
                   for key, s in report["scorers"].items() for name, d in s.get("details", {}).get("compared", {}).items()]
    if detail_rows:
        lines += ["", "## Score details", "", "What each score is made of (e.g. the components of a weighted reward), "
                  "compared the same way.", "", "| scorer | detail | mean A | mean B | mean A - B |",
                  "| --- | --- | --- | --- | --- |", *detail_rows]
    lines += ["", "## Scales and provenance", ""]
    for key, s in report["scorers"].items():
        lines.append(f"- **{key}**: {s['scale']}.")
        for name, p in s["provenance"].items():
            sha = (p["weights_sha256"] or "unknown")[:16]
            variant = f", variant {p['variant']}" if p["variant"] else ""
            lines.append(f"  - {name}: model `{p['model_id']}`, sha256 {sha}, {p['dtype']}, {p['preprocessing']}"
                         f"{variant}")
    lines += ["", f"![rows: prompts; columns: A, B]({GRID_PNG})", ""]
    return "\n".join(lines)


GRID_CELL = 128  #: smallest side of an image in ``grid.png``, px (smaller images are enlarged pixel for pixel)
GRID_PROMPT_WIDTH = 240  #: width of the prompt column of ``grid.png``, px


def comparison_grid(samples: Mapping[str, Sequence[Sample]], image_dirs: Mapping[str, Path], *,
                    max_prompts: int = 8, names: Mapping[str, str] | None = None) -> Image.Image:
    """Rows = the first ``max_prompts`` prompts (the first seed of each), written left of their row; one column per
    model in ``samples`` order, headed by its name (``names[label]``, default the label). Every image is resized to
    the first one's size, then enlarged by a whole factor (nearest neighbour) until its shorter side is at least
    :data:`GRID_CELL` px, so small images stay sharp and visible."""
    from PIL import ImageDraw, ImageFont

    labels, names = list(samples), dict(names or {})
    rows = []
    for p in range(max_prompts):
        row = [next((s for s in samples[label] if s.prompt_index == p and s.index == 0), None) for label in labels]
        if None in row:
            break
        rows.append((row[0].prompt, [Image.open(image_dirs[label] / s.path).convert("RGB")
                                     for label, s in zip(labels, row)]))
    if not rows:
        raise ValueError("comparison_grid: no prompt has an image from every model")
    size = rows[0][1][0].size
    factor = max(1, -(-GRID_CELL // min(size)))
    cell = (size[0] * factor, size[1] * factor)
    font = ImageFont.load_default(size=14)
    header, pad, gap = 40, 6, 4
    step = (cell[0] + gap, cell[1] + gap)
    grid = Image.new("RGB", (GRID_PROMPT_WIDTH + len(labels) * step[0], header + len(rows) * step[1]), "white")
    draw = ImageDraw.Draw(grid)
    for column, label in enumerate(labels):
        x = GRID_PROMPT_WIDTH + column * step[0] + pad
        draw.multiline_text((x, pad), _wrap(draw, names.get(label, label.upper()), font, cell[0] - 2 * pad, 2),
                            fill="black", font=font)
    for r, (prompt, images) in enumerate(rows):
        y = header + r * step[1]
        draw.multiline_text((pad, y + pad), _wrap(draw, prompt, font, GRID_PROMPT_WIDTH - 2 * pad, cell[1] // 18),
                            fill="black", font=font)
        for column, image in enumerate(images):
            grid.paste(image.resize(size).resize(cell, Image.Resampling.NEAREST),
                       (GRID_PROMPT_WIDTH + column * step[0], y))
    return grid


def _wrap(draw, text: str, font, width: int, max_lines: int) -> str:
    """``text`` broken into lines no wider than ``width`` px, at most ``max_lines`` (the last one ends in '...')."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " ..."
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` (strict JSON) and ``report.md`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / REPORT_JSON, out_dir / REPORT_MD
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return json_path, md_path


def compare_models(
    model_a: ModelSpec,
    model_b: ModelSpec,
    prompts: Sequence[str],
    scorers: Sequence[ScorerSpec],
    out_dir: str | Path,
    *,
    num_seeds: int = 1,
    base_seed: int = 0,
    settings: GenerationSettings = GenerationSettings(),
    device: str | torch.device = "cpu",
    dtype: str | None = None,
    batch_size: int = 4,
    score_batch_size: int = 16,
    tie_tolerance: float | Mapping[str, float] = 0.0,
    num_resamples: int = 10_000,
    confidence: float = 0.95,
    bootstrap_seed: int = 0,
    grid_prompts: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate (or reuse), score and compare model A against model B; write the report files (module docstring)
    and return the report. ``tie_tolerance``: one value for every scorer or ``{scorer key: value}`` (default 0)."""
    keys = [spec.key for spec in scorers]
    if not scorers or len(set(keys)) != len(keys):
        raise ValueError(f"compare_models needs at least one scorer and unique scorer keys; got {keys}")
    tolerances = tie_tolerance if isinstance(tie_tolerance, Mapping) else dict.fromkeys(keys, tie_tolerance)
    unknown = set(tolerances) - set(keys)
    if unknown:
        raise KeyError(f"tie tolerance given for unknown scorer(s) {sorted(unknown)}; scorers are {keys}")
    out_dir = Path(out_dir)
    dirs = {label: out_dir / IMAGES_DIR / label for label in LABELS}
    samples = {}
    for label, spec in zip(LABELS, (model_a, model_b)):
        pipeline = load_pipeline(spec.model, lora=spec.lora, device=device, dtype=dtype)
        samples[label] = generate_images(pipeline, prompts, dirs[label], num_seeds=num_seeds, base_seed=base_seed,
                                         settings=settings, model=spec.model, lora=spec.lora, batch_size=batch_size,
                                         progress=progress)
        del pipeline
        _free_accelerator_memory()
    sections, rows = {}, []
    for spec in scorers:
        scorer = spec.load(device)
        matrices, details = {}, {}
        for label in LABELS:
            matrices[label], result = score_samples(scorer, samples[label], dirs[label], batch_size=score_batch_size,
                                                    progress=progress)
            details[label] = result.details
            rows += [{"model": label, "prompt": s.prompt, "prompt_index": s.prompt_index, "index": s.index,
                      "seed": s.seed, "path": f"{IMAGES_DIR}/{label}/{s.path}", "scorer": spec.key, "score": score}
                     for s, score in zip(samples[label], matrices[label].ravel().tolist())]
        comparison = head_to_head(matrices["a"], matrices["b"], tie_tolerance=tolerances.get(spec.key, 0.0),
                                  higher_is_better=scorer.info.higher_is_better, num_resamples=num_resamples,
                                  confidence=confidence, seed=bootstrap_seed)
        sections[spec.key] = scorer_section(scorer, result.provenance, comparison)
        sections[spec.key]["details"] = detail_differences(
            details["a"], details["b"], len(prompts), num_resamples=num_resamples, confidence=confidence,
            seed=bootstrap_seed)
        del scorer
        _free_accelerator_memory()
    report = {
        "visalign_version": visalign.__version__,
        "num_prompts": len(prompts),
        "seeds_per_prompt": num_seeds,
        "base_seed": base_seed,
        "models": {label: {**asdict(spec), "settings": samples[label][0].settings, "images": f"{IMAGES_DIR}/{label}"}
                   for label, spec in zip(LABELS, (model_a, model_b))},
        "bootstrap": {"unit": "prompt", "num_resamples": num_resamples, "confidence": confidence,
                      "seed": bootstrap_seed},
        "scorers": sections,
        "files": {"scores": SCORES_JSONL, "grid": GRID_PNG, "markdown": REPORT_MD, "html": REPORT_HTML},
    }
    with open(out_dir / SCORES_JSONL, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    names = {label: spec.display_name(label) for label, spec in zip(LABELS, (model_a, model_b))}
    comparison_grid(samples, dirs, max_prompts=grid_prompts, names=names).save(out_dir / GRID_PNG)
    write_report(report, out_dir)
    write_html_report(report, rows, out_dir)
    return report


def _rate(value: float, ci: Sequence[float]) -> str:
    return f"{value:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]"


def _json_number(value: float) -> float | None:
    """``None`` for an unbounded end of a range (strict JSON has no infinity)."""
    return value if math.isfinite(value) else None


def _free_accelerator_memory() -> None:
    """Return a dropped pipeline's or scorer's accelerator memory before the next one loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
