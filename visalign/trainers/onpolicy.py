"""On-policy Diffusion-DPO in one command: sample pairs from the model, label them with a scorer, train a LoRA with any
preference loss, then compare the trained model with the base on held-out prompts and seeds.

Three stages, all in ``output_dir``:

1. ``pairs/``: ``samples_per_prompt`` images of each of the first ``num_prompts`` prompts, scored by ``scorer``,
   best vs worst per prompt or every pair above ``min_gap`` (``pairing``;
   :func:`visalign.evaluation.pairs.generate_preference_pairs`);
2. training: :class:`~visalign.trainers.diffusion.DiffusionTrainer` on those pairs (every ``DiffusionConfig``
   option applies; the LoRA lands in ``output_dir`` in diffusers format; latents and text embeddings are cached in
   ``output_dir/cache`` unless ``cache_dir`` says otherwise);
3. ``eval/``: base and trained model render the first ``num_eval_prompts`` prompts of ``eval_prompts`` with
   ``eval_seeds`` seeds each (seeds from ``eval_seed``, never used for the pairs), both scored, compared with paired
   bootstrap intervals over prompts (:func:`visalign.evaluation.report.compare_models`): ``report.html``
   (open it in a browser: images side by side, sortable by score difference), ``report.md``, ``report.json``,
   ``scores.jsonl`` and ``grid.png`` (rows: prompts; columns: after, before).

``visalign train`` with no arguments runs this on the shipped shapes world (recipe ``quickstart``): the
``builtin:shapes-sd`` model, ``builtin:shapes-prompts`` and the programmatic ``shapes`` reward. Sampling and
evaluation use the same sampler settings (``sample_steps``, ``sample_guidance``, ``resolution``). LoRA only: a full
fine-tune would need its UNet swapped into a pipeline for stage 3.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from visalign.evaluation.pairs import check_pair_options
from visalign.models.card import write_card_results
from visalign.trainers._common import prepare_output_dir
from visalign.trainers.diffusion import DiffusionConfig, DiffusionTrainer

logger = logging.getLogger(__name__)

PAIRS_DIR = "pairs"
EVAL_DIR = "eval"
CACHE_DIR = "cache"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class OnPolicyConfig(DiffusionConfig):
    """Diffusion-DPO (or any core loss) on pairs sampled from the model being trained (module docstring)."""

    method: str = field(default="onpolicy-diffusion-dpo", metadata=_help("trainer family (`visalign train` picks it)"))
    use_lora: bool = field(default=True, metadata=_help("train a LoRA (required: the evaluation loads it)"))
    prompts: str = field(default="builtin:shapes-prompts",
                         metadata=_help("prompts to sample pairs for: .txt file or dataset spec"))
    prompts_split: str = field(default="train", metadata=_help("split of `prompts`"))
    prompt_column: str = field(default="prompt", metadata=_help("prompt column of a dataset spec"))
    num_prompts: int = field(default=128, metadata=_help("use the first N prompts for pairs"))
    samples_per_prompt: int = field(default=4, metadata=_help("images sampled per prompt (best vs worst form a pair)"))
    min_gap: float = field(default=0.0, metadata=_help("keep a pair only if its score gap is above this"))
    pairing: str = field(default="best_worst",
                         metadata=_help("best_worst (one pair per prompt) | all (every ordered pair above min_gap)"))
    scorer: str = field(default="shapes", metadata=_help("reward_models scorer labelling pairs and judging the result"))
    scorer_model: str | None = field(default=None, metadata=_help("hub id or folder of the scorer's weights"))
    scorer_args: list[str] = field(
        default_factory=list,
        metadata=_help("scorer options as KEY=VALUE (YAML values), e.g. 'weights={aesthetic: 1}'"))
    sample_steps: int = field(default=10, metadata=_help("sampler steps for pairs and evaluation"))
    sample_guidance: float | None = field(
        default=None, metadata=_help("CFG scale for pairs and evaluation; none = the pipeline's default"))
    sample_batch_size: int = field(default=64, metadata=_help("images per pipeline call"))
    sample_dtype: str = field(default="float32",
                              metadata=_help("pipeline dtype for pairs and evaluation: float32 | bfloat16 | float16"))
    eval_prompts: str = field(default="builtin:shapes-prompts", metadata=_help("held-out prompts of stage 3"))
    eval_prompts_split: str = field(default="test", metadata=_help("split of `eval_prompts`"))
    num_eval_prompts: int = field(default=32, metadata=_help("use the first N held-out prompts"))
    eval_seeds: int = field(default=4, metadata=_help("images per held-out prompt and model"))
    eval_seed: int = field(default=1000, metadata=_help("base seed of the held-out images (pairs use `seed`)"))
    bootstrap_resamples: int = field(default=2000, metadata=_help("bootstrap resamples of the intervals"))

    def __post_init__(self) -> None:
        super().__post_init__()
        c = type(self).__name__
        if not self.use_lora:
            raise ValueError(f"{c}.use_lora must be true (the evaluation loads the trained LoRA into the base)")
        for key in ("num_prompts", "num_eval_prompts", "eval_seeds", "sample_steps", "sample_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{c}.{key} must be >= 1; got {getattr(self, key)!r}")
        try:
            check_pair_options(self.samples_per_prompt, self.min_gap, self.pairing)
        except ValueError as err:
            raise ValueError(f"{c}.{err}") from None

    def scorer_spec(self):
        from visalign.evaluation.report import ScorerSpec
        from visalign.evaluation.scorer_specs import parse_scorer_args

        kwargs = parse_scorer_args(self.scorer_args)
        if self.scorer_model is not None:
            kwargs["model"] = self.scorer_model
        return ScorerSpec(self.scorer, self.scorer, kwargs)

    def generation_settings(self):
        from visalign.evaluation.generate import GenerationSettings

        return GenerationSettings(num_inference_steps=self.sample_steps, guidance_scale=self.sample_guidance,
                                  height=self.resolution, width=self.resolution)


def sample_pairs(config: OnPolicyConfig, device: str) -> dict[str, Any]:
    """Stage 1: the pair folder ``output_dir/pairs``; returns its summary."""
    from visalign.evaluation.generate import load_prompts
    from visalign.evaluation.pairs import generate_preference_pairs

    prompts = load_prompts(config.prompts, column=config.prompt_column, split=config.prompts_split,
                           limit=config.num_prompts)
    summary = generate_preference_pairs(
        config.model, prompts, config.scorer_spec().load(), Path(config.output_dir) / PAIRS_DIR,
        samples_per_prompt=config.samples_per_prompt, min_gap=config.min_gap, pairing=config.pairing,
        seed=config.seed,
        settings=config.generation_settings(), device=device, dtype=config.sample_dtype,
        batch_size=config.sample_batch_size)
    if summary["pairs"] == 0:
        raise ValueError(f"no preference pair from {len(prompts)} prompts: every score gap was <= min_gap "
                         f"{config.min_gap}")
    return summary


def evaluate_before_after(config: OnPolicyConfig, device: str) -> dict[str, Any]:
    """Stage 3: the trained LoRA (model A) against the base (model B) on held-out prompts and seeds."""
    from visalign.evaluation.generate import load_prompts
    from visalign.evaluation.report import ModelSpec, compare_models

    prompts = load_prompts(config.eval_prompts, column=config.prompt_column, split=config.eval_prompts_split,
                           limit=config.num_eval_prompts)
    return compare_models(
        ModelSpec(config.model, lora=config.output_dir), ModelSpec(config.model), prompts, [config.scorer_spec()],
        Path(config.output_dir) / EVAL_DIR, num_seeds=config.eval_seeds, base_seed=config.eval_seed,
        settings=config.generation_settings(), device=device, dtype=config.sample_dtype,
        batch_size=config.sample_batch_size, num_resamples=config.bootstrap_resamples, progress=True)


def summarise(section: dict[str, Any]) -> dict[str, float]:
    """The headline figures of one scorer's section of a ``compare_models`` report (A = after, B = before)."""
    return {"reward_before": section["mean_b"], "reward_after": section["mean_a"],
            "reward_gain": section["mean_diff"], "reward_gain_ci_low": section["mean_diff_ci"][0],
            "reward_gain_ci_high": section["mean_diff_ci"][1], "win_rate": section["win"],
            "win_rate_ci_low": section["win_ci"][0], "win_rate_ci_high": section["win_ci"][1],
            "tie_rate": section["tie"], "loss_rate": section["loss"]}


def run(config: OnPolicyConfig) -> dict[str, float]:
    """Sample pairs, train, evaluate (module docstring); prints the before/after figures and returns them with the
    training metrics."""
    prepare_output_dir(config)  # writable, and empty unless resuming or overwriting: before sampling
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seconds = {}
    started = time.perf_counter()
    print(f"[1/3] sampling {config.samples_per_prompt} images for each of {config.num_prompts} prompts from "
          f"{config.model}, scored by {config.scorer}", flush=True)
    pairs = sample_pairs(config, device)
    seconds["sample_s"], started = time.perf_counter() - started, time.perf_counter()
    print(f"      {pairs['pairs']} pairs ({config.pairing}; mean score gap {pairs['mean_gap']:.3f}; "
          f"{pairs['skipped_small_gap']} "
          f"prompt(s) without a gap above {config.min_gap}); {seconds['sample_s']:.0f} s", flush=True)
    print(f"[2/3] training {config.loss_type} (beta {config.beta}) with LoRA r{config.lora_r} for "
          f"{config.max_steps} steps", flush=True)
    output = Path(config.output_dir)
    # overwrite_output_dir: the folder was checked above and now holds this run's pairs
    training = dataclasses.replace(config, dataset=str(output / PAIRS_DIR), overwrite_output_dir=True,
                                   cache_dir=config.cache_dir or str(output / CACHE_DIR))
    train_metrics = DiffusionTrainer(training).train()
    seconds["train_s"], started = time.perf_counter() - started, time.perf_counter()
    print(f"      {seconds['train_s']:.0f} s", flush=True)
    print(f"[3/3] evaluating on {config.num_eval_prompts} held-out prompts x {config.eval_seeds} seeds", flush=True)
    report = evaluate_before_after(config, device)
    seconds["eval_s"] = time.perf_counter() - started
    figures = summarise(report["scorers"][config.scorer])
    write_card_results(config.output_dir, {**train_metrics, **figures})  # the card carries the evaluation too
    eval_dir = Path(config.output_dir) / EVAL_DIR
    print(f"\n{config.scorer} reward before -> after: {figures['reward_before']:.4f} -> {figures['reward_after']:.4f} "
          f"(gain {figures['reward_gain']:+.4f}, 95% CI [{figures['reward_gain_ci_low']:+.4f}, "
          f"{figures['reward_gain_ci_high']:+.4f}])\n"
          f"win rate of the trained model against the base: {figures['win_rate']:.1%} "
          f"[{figures['win_rate_ci_low']:.1%}, {figures['win_rate_ci_high']:.1%}], ties {figures['tie_rate']:.1%}, "
          f"losses {figures['loss_rate']:.1%}\n"
          f"time: sampling {seconds['sample_s']:.0f} s, training {seconds['train_s']:.0f} s, evaluation "
          f"{seconds['eval_s']:.0f} s\n"
          f"before/after images: {eval_dir / 'grid.png'} (columns: after, before); report: {eval_dir / 'report.html'}"
          f"\nLoRA: {config.output_dir} (pipe.load_lora_weights)", flush=True)
    return {**train_metrics, **figures, **seconds}
