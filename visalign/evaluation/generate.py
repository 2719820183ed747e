"""Generate images for a (prompt, seed) grid with any diffusers text-to-image pipeline, resumably.

Protocol (reference ``diffusion-methods.md`` §3.7, §16): every model being compared renders the same prompts from the
same seeds, with the safety checker off and, unless told otherwise, the pipeline's own default CFG scale (7.5 for
SD1.5/SD2.x, 5.0 for SDXL). Image ``k`` of a prompt is drawn from a CPU ``torch.Generator`` seeded with
:func:`sample_seed` ``(prompt, k, base_seed)``: the same for every model and device, different between prompts. Where
the DPO notebook reuses one seed for every prompt, we derive one per prompt so that samples of different prompts are
independent, as the bootstrap over prompts in :mod:`visalign.evaluation.winrate` assumes. Each image gets its own
generator, so a prompt's image does not depend on the batch it was drawn in.

Images are written as ``{prompt_index:05d}_{k:03d}.png`` beside ``manifest.jsonl`` (one :class:`Sample` per line,
appended as batches finish). A rerun reuses every image whose manifest entry matches (prompt, seed, model, LoRA and
settings) and whose file exists; images are written to a temporary name and renamed, so a killed run leaves no
half-written PNG behind.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm


logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
_MANIFEST_KEYS = ("prompt", "prompt_index", "index", "seed", "path", "model", "lora", "settings")


#: Samplers a run may pin by name (diffusers classes, built with ``from_config`` of the checkpoint's scheduler).
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpmsolver": "DPMSolverMultistepScheduler"}


@dataclass(frozen=True)
class GenerationSettings:
    """Sampler settings shared by every image of a run. ``None`` means the pipeline's own default: its ``__call__``
    default ``guidance_scale`` (7.5 SD1.5/SD2.x, 5.0 SDXL, as reference §16 uses) and its default resolution."""

    num_inference_steps: int = 50
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    #: A sampler in place of the checkpoint's own, built from its scheduler config (:data:`SCHEDULERS`): papers pin
    #: theirs (SPO evaluates with DDIM, CFG 5, 20 steps; RockeyCoss/SPO#12). ``None``: the checkpoint's.
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise ValueError(f"GenerationSettings.num_inference_steps must be >= 1; got {self.num_inference_steps}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"GenerationSettings.scheduler must be one of {', '.join(SCHEDULERS)} or none; got "
                             f"{self.scheduler!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value < 8:
                raise ValueError(f"GenerationSettings.{name} must be >= 8 pixels; got {value}")

    def resolved(self, pipeline) -> GenerationSettings:
        """These settings with ``guidance_scale`` filled in for ``pipeline`` (what the manifest records)."""
        if self.guidance_scale is not None:
            return self
        parameter = inspect.signature(pipeline.__call__).parameters.get("guidance_scale")
        if parameter is None or not isinstance(parameter.default, (int, float)):
            raise ValueError(f"{type(pipeline).__name__} has no default guidance_scale; set one explicitly")
        return GenerationSettings(**{**asdict(self), "guidance_scale": float(parameter.default)})


@dataclass(frozen=True)
class Sample:
    """One generated image: its prompt, seed, file (relative to the output folder), model, LoRA and settings."""

    prompt: str
    prompt_index: int
    index: int
    seed: int
    path: str
    model: str
    lora: str | None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def sample_seed(prompt: str, index: int, base_seed: int = 0) -> int:
    """The seed of image ``index`` of ``prompt``: the first 31 bits of ``sha256(f"{base_seed}|{index}|{prompt}")``."""
    digest = hashlib.sha256(f"{base_seed}|{index}|{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def load_prompts(spec: str | Path, *, column: str = "prompt", split: str = "train", limit: int | None = None
                 ) -> list[str]:
    """Prompts from a ``.txt`` file (one per non-empty line) or any ``load_source`` spec (jsonl/csv/parquet file,
    saved dataset, hub id such as ``nateraw/parti-prompts`` with ``column="Prompt"``); the first ``limit`` only."""
    path = Path(spec).expanduser()
    if path.suffix == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {path} does not exist")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    else:
        from visalign.data.sources import load_source

        dataset = load_source(str(spec), split=split)
        if column not in dataset.column_names:
            raise KeyError(f"prompts source {spec}: no column {column!r}; columns are {dataset.column_names}")
        prompts = dataset[column][:limit]
        bad = next((i for i, prompt in enumerate(prompts) if not isinstance(prompt, str) or not prompt.strip()), None)
        if bad is not None:
            raise ValueError(f"prompts source {spec} row {bad}: {column!r} must be a non-empty string, "
                             f"got {prompts[bad]!r}")
    if not prompts:
        raise ValueError(f"prompts source {spec} has no prompts")
    return prompts


def load_pipeline(model: str, *, lora: str | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype | str | None = None):
    """``DiffusionPipeline.from_pretrained(model)`` (hub id, folder or ``builtin:NAME``) on ``device`` in ``dtype``, the safety checker
    off, optionally with the diffusers LoRA in folder ``lora`` loaded by ``pipe.load_lora_weights``. ``dtype="auto"``
    is half precision where ``device`` computes it natively, else float32 (:func:`reward_models.base.auto_dtype`); a
    half precision the CPU has no native dot products for is kept, with a warning (:func:`warn_slow_cpu_dtype`)."""
    from diffusers import DiffusionPipeline

    from reward_models import resolve_dtype
    from visalign._quiet import dropped_messages, transformers_bars_off
    from visalign.models.builtin import resolve_model

    model = resolve_model(model)
    if lora is not None and not Path(lora).exists():
        raise FileNotFoundError(f"LoRA folder {lora} does not exist")
    dtype = resolve_dtype(dtype, device)
    warn_slow_cpu_dtype(dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if "safety_checker" in DiffusionPipeline.load_config(model):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    with transformers_bars_off():  # one "Loading pipeline components" bar, not one more per text encoder inside it
        pipeline = DiffusionPipeline.from_pretrained(model, **kwargs)
    if lora is not None:
        # A UNet-only LoRA (what visalign trains) makes diffusers warn, per text encoder, that it has no keys for it.
        with dropped_messages("diffusers.loaders.lora_base", "No LoRA keys associated to"):
            pipeline.load_lora_weights(lora)
    return pipeline.to(device)


def warn_slow_cpu_dtype(dtype: torch.dtype, device: str | torch.device) -> None:
    """Warn (once per dtype and process: the on-policy trainers load a pipeline every round) when ``dtype`` is a half
    precision that ``device``, a CPU, has no native dot products for. There torch emulates it: on an AVX2-only AMD EPYC
    (torch 2.14) shapes-sd sampled 0.3 images/s in bfloat16 against 5.5 in float32, and a 512x512 matmul took 163 ms
    against 4 ms. ``dtype="auto"`` picks float32 there."""
    from reward_models.base import auto_dtype

    if torch.device(device).type == "cpu" and dtype in (torch.bfloat16, torch.float16) and dtype != auto_dtype("cpu"):
        _warn_emulated_dtype(dtype)


@functools.cache
def _warn_emulated_dtype(dtype: torch.dtype) -> None:
    logger.warning("%s on this CPU (no native %s dot products) runs many times slower than float32; dtype 'auto' picks "
                   "float32 here", dtype, "bf16" if dtype == torch.bfloat16 else "fp16")


def read_manifest(out_dir: str | Path) -> dict[str, Sample]:
    """``{path: Sample}`` of ``out_dir/manifest.jsonl`` (the last entry of a path wins); ``{}`` when absent.
    An unterminated last line (a run killed while writing it) is ignored; any other bad line raises."""
    manifest = Path(out_dir) / MANIFEST
    if not manifest.is_file():
        return {}
    lines = manifest.read_text(encoding="utf-8").split("\n")
    if lines[-1].strip():
        logger.warning("%s: ignoring an unfinished last line (interrupted run): %.80s", manifest, lines[-1])
    samples: dict[str, Sample] = {}
    for line_no, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            sample = Sample(**{key: row[key] for key in _MANIFEST_KEYS})
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{manifest} line {line_no}: not a manifest entry with keys {_MANIFEST_KEYS} ({err!r})"
                             ) from None
        samples[sample.path] = sample
    return samples


@torch.no_grad()
def generate_images(
    pipeline,
    prompts: Sequence[str],
    out_dir: str | Path,
    *,
    num_seeds: int = 1,
    base_seed: int = 0,
    settings: GenerationSettings = GenerationSettings(),
    model: str | None = None,
    lora: str | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> list[Sample]:
    """Render ``num_seeds`` images of every prompt into ``out_dir`` (module docstring) and return their samples in
    (prompt, index) order, reused ones included. ``model``/``lora`` label the manifest (default: the pipeline's
    ``name_or_path``) and, with the settings, decide whether an existing image can be reused."""
    if not prompts:
        raise ValueError("generate_images needs at least one prompt")
    if num_seeds < 1 or batch_size < 1:
        raise ValueError(f"num_seeds and batch_size must be >= 1; got {num_seeds} and {batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.resolved(pipeline)
    model = model if model is not None else str(pipeline.name_or_path)
    wanted = [Sample(prompt, p, k, sample_seed(prompt, k, base_seed), f"{p:05d}_{k:03d}.png", model, lora,
                     asdict(settings))
              for p, prompt in enumerate(prompts) for k in range(num_seeds)]
    existing = read_manifest(out_dir)
    _rewrite_manifest(out_dir, existing.values())
    todo = [s for s in wanted if existing.get(s.path) != s or not (out_dir / s.path).is_file()]
    pipeline.set_progress_bar_config(disable=True)
    own_scheduler = pipeline.scheduler
    if settings.scheduler is not None:
        import diffusers

        pipeline.scheduler = getattr(diffusers, SCHEDULERS[settings.scheduler]).from_config(own_scheduler.config)
    try:
        _render_all(pipeline, todo, settings, out_dir, model=model, batch_size=batch_size, progress=progress)
    finally:
        pipeline.scheduler = own_scheduler
    return wanted


def _render_all(pipeline, todo: Sequence[Sample], settings: GenerationSettings, out_dir: Path, *, model: str,
                batch_size: int, progress: bool) -> None:
    """Render ``todo`` in batches, each image written atomically and appended to the manifest as it lands."""
    with open(out_dir / MANIFEST, "a", encoding="utf-8") as manifest, \
            tqdm(total=len(todo), disable=not progress, desc=f"generating ({Path(model).name})", unit="img") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            images = _render(pipeline, batch, settings)
            for sample, image in zip(batch, images):
                tmp = out_dir / f".{sample.path}.tmp"
                image.save(tmp, format="PNG")
                os.replace(tmp, out_dir / sample.path)
                manifest.write(sample.to_json() + "\n")
            manifest.flush()
            bar.update(len(batch))


def score_samples(scorer, samples: Sequence[Sample], image_dir: str | Path, *, batch_size: int = 16,
                  progress: bool = True) -> tuple[np.ndarray, Any]:
    """Scores of ``samples`` (images under ``image_dir``) against their prompts as float64 ``[prompts, seeds]``
    (samples in :func:`generate_images` order), and the :class:`~reward_models.ScoreResult` behind them."""
    num_prompts = len({s.prompt_index for s in samples})
    if not samples or len(samples) % num_prompts:
        raise ValueError(f"score_samples: {len(samples)} samples do not form a [prompts, seeds] grid")
    result = scorer.score([Path(image_dir) / s.path for s in samples], [s.prompt for s in samples],
                          batch_size=batch_size, progress=progress)
    return result.scores.double().cpu().numpy().reshape(num_prompts, -1), result


def _rewrite_manifest(out_dir: Path, samples) -> None:
    """Replace the manifest by ``samples`` (one line per path, no unfinished line), atomically."""
    tmp = out_dir / f".{MANIFEST}.tmp"
    tmp.write_text("".join(sample.to_json() + "\n" for sample in samples), encoding="utf-8")
    os.replace(tmp, out_dir / MANIFEST)


def _render(pipeline, batch: Sequence[Sample], settings: GenerationSettings) -> list:
    kwargs: dict[str, Any] = {"num_inference_steps": settings.num_inference_steps,
                              "guidance_scale": settings.guidance_scale, "output_type": "pil"}
    if settings.height is not None:
        kwargs["height"] = settings.height
    if settings.width is not None:
        kwargs["width"] = settings.width
    if settings.negative_prompt is not None:
        kwargs["negative_prompt"] = [settings.negative_prompt] * len(batch)
    generators = [torch.Generator().manual_seed(s.seed) for s in batch]
    return pipeline([s.prompt for s in batch], generator=generators, **kwargs).images
