"""On-policy Diffusion-DPO in one command: sample pairs from the model, label them with a scorer, train a LoRA with any
preference loss, then compare the trained model with the base on held-out prompts and seeds.

Three stages, all in ``output_dir``:

1. ``pairs/``: ``samples_per_prompt`` images of each of the first ``num_prompts`` prompts, sampled from the policy,
   scored by ``scorer``, best vs worst per prompt or every pair above ``min_gap`` (``pairing``;
   :func:`visalign.evaluation.pairs.generate_preference_pairs`);
2. training: :class:`OnPolicyTrainer`, a :class:`~visalign.trainers.diffusion.DiffusionTrainer` whose data source is
   an :class:`~visalign.trainers.data_source.OnlineSource` drawing those pairs (every ``DiffusionConfig`` option
   applies; the LoRA lands in ``output_dir`` in diffusers format; latents and text embeddings are cached in
   ``output_dir/cache`` unless ``cache_dir`` says otherwise);
3. ``eval/``: base and trained model render the first ``num_eval_prompts`` prompts of ``eval_prompts`` with
   ``eval_seeds`` seeds each (seeds from ``eval_seed``, never used for the pairs), both scored, compared with paired
   bootstrap intervals over prompts (:func:`visalign.evaluation.report.compare_models`): ``report.html``
   (open it in a browser: images side by side, sortable by score difference), ``report.md``, ``report.json``,
   ``scores.jsonl`` and ``grid.png`` (rows: prompts, written beside them; columns: after, before). Each component of
   the score (the ``shapes`` reward's colour, shape, size, position, background and aesthetic) is compared too and
   printed with the headline gain (``gain/<component>`` in the returned figures).

With ``resample_every: 0`` (the default) the pairs are drawn once, before step 1, from the model as loaded, into
``pairs/``. With ``resample_every: N`` stages 1 and 2 interleave: every N optimizer steps a new round of pairs is
drawn from the current policy (the base with the LoRA as trained so far) into ``pairs/round-NNNN/``, round ``r``
with seeds from ``seed + r``, and training goes on on it. A round is written under ``<name>.tmp`` and renamed when
complete; the checkpoint records the round being trained on, so a resumed run trains on the same pairs, and a run
killed while sampling draws that round again from the same weights. Sampling uses the base model loaded in
``sample_dtype`` with the policy's LoRA weights copied in (the LoRA of step 0 adds exactly zero).

``pair_source: rendered`` replaces the sampling of stage 1 (and of every round) by rendered pairs of the shapes world
(:func:`visalign.shapes.pairs.render_preference_pairs`: each prompt's scene against ``samples_per_prompt - 1`` near
misses, labelled by ``scorer``): an offline preference set, as Pick-a-Pic is for Diffusion-DPO; shapes prompts only.

``visalign train`` with no arguments runs this on the shipped shapes world with rendered pairs (recipe
``quickstart``): the ``builtin:shapes-sd`` model, ``builtin:shapes-prompts`` and the programmatic ``shapes`` reward;
recipe ``onpolicy`` samples the pairs from the model. Sampling and
evaluation use the same sampler settings (``sample_steps``, ``sample_guidance``, ``resolution``). LoRA only: a full
fine-tune would need its UNet swapped into a pipeline for stage 3.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from reward_models import resolve_dtype
from visalign.evaluation.pairs import SUMMARY, check_pair_options
from visalign.models.card import write_card_results
from visalign.trainers._common import prepare_output_dir
from visalign.trainers.config import _help
from visalign.trainers.data_source import OnlineSource, Round
from visalign.trainers.diffusion import DiffusionConfig, DiffusionTrainer

logger = logging.getLogger(__name__)

PAIRS = ("onpolicy-diffusion-dpo",)  # the method sampling whole-image pairs
SPO = ("spo",)

PAIRS_DIR = "pairs"
PAIR_SOURCES = ("policy", "rendered")
ROUND_DIR = "round-{:04d}"
EVAL_DIR = "eval"
CACHE_DIR = "cache"


@dataclass
class OnPolicyConfig(DiffusionConfig):
    """Online preference training of SD/SDXL: ``onpolicy-diffusion-dpo``, Diffusion-DPO (or any core loss) on pairs
    sampled from the model being trained (module docstring), and ``spo`` on step-wise pairs
    (``visalign.trainers.spo``). Options read by one of them only say so (``methods``) and fail under the other."""

    TRAINER: ClassVar[str] = "online-diffusion"

    method: str = field(default="onpolicy-diffusion-dpo", metadata=_help(
        "the method to train: onpolicy-diffusion-dpo | spo (`visalign train` picks its trainer)"))
    max_steps: int | None = field(default=None, metadata=_help(
        "optimizer steps to run; -1 = num_epochs passes over the pairs (onpolicy-diffusion-dpo with "
        "resample_every 0); none = the method's (-1; spo 500)"))
    use_lora: bool = field(default=True, metadata=_help("train a LoRA (required: the evaluation loads it)"))
    prompts: str = field(default="builtin:shapes-prompts",
                         metadata=_help("prompts to sample pairs for: .txt file or dataset spec"))
    prompts_split: str = field(default="train", metadata=_help("split of `prompts`"))
    prompt_column: str = field(default="prompt", metadata=_help("prompt column of a dataset spec"))
    num_prompts: int = field(default=128, metadata=_help("use the first N prompts for pairs"))
    samples_per_prompt: int = field(default=4, metadata={
        **_help("images sampled per prompt (best vs worst form a pair)"), "methods": PAIRS})
    min_gap: float = field(default=0.0, metadata={
        **_help("keep a pair only if its score gap is above this"), "methods": PAIRS})
    pairing: str = field(default="best_worst", metadata={
        **_help("best_worst (one pair per prompt) | all (every ordered pair above min_gap)"), "methods": PAIRS})
    pair_source: str = field(default="policy", metadata={
        **_help("policy (pairs sampled from the model being trained) | rendered (shapes world only: each prompt's "
                "scene rendered against samples_per_prompt - 1 near misses, visalign.shapes.pairs)"),
        "methods": PAIRS})
    scorer: str = field(default="shapes", metadata=_help("reward_models scorer labelling pairs and judging the result"))
    scorer_model: str | None = field(default=None, metadata=_help("hub id or folder of the scorer's weights"))
    scorer_args: list[str] = field(
        default_factory=list,
        metadata=_help("scorer options as KEY=VALUE (YAML values), e.g. 'weights={aesthetic: 1}'"))
    sample_steps: int = field(default=10, metadata=_help("sampler steps for pairs and evaluation"))
    sample_guidance: float | None = field(
        default=None, metadata=_help("CFG scale for pairs and evaluation; none = the pipeline's default"))
    sample_batch_size: int = field(default=64, metadata=_help("images per pipeline call"))
    sample_scheduler: str | None = field(
        default=None, metadata=_help("sampler for pairs and evaluation in place of the checkpoint's own: ddim | euler "
                                     "| dpmsolver; none = the checkpoint's"))
    sample_dtype: str = field(default="float32", metadata=_help(
        "pipeline dtype for pairs and evaluation: float32 | bfloat16 | float16 | auto (bfloat16 where the device "
        "computes it natively: CUDA, CPUs with AVX512-BF16, AMX or Arm BF16; else float32)"))
    eval_prompts: str = field(default="builtin:shapes-prompts", metadata=_help("held-out prompts of stage 3"))
    eval_prompts_split: str = field(default="test", metadata=_help("split of `eval_prompts`"))
    num_eval_prompts: int = field(default=32, metadata=_help("use the first N held-out prompts"))
    eval_seeds: int = field(default=4, metadata=_help("images per held-out prompt and model"))
    eval_seed: int = field(default=1000, metadata=_help("base seed of the held-out images (pairs use `seed`)"))
    bootstrap_resamples: int = field(default=2000, metadata=_help("bootstrap resamples of the intervals"))
    resample_every: int | None = field(
        default=None, metadata=_help("optimizer steps between rounds of pairs drawn from the current policy (LoRA "
                                     "active; into pairs/round-NNNN for onpolicy-diffusion-dpo); 0 = sample once, "
                                     "before training, into pairs/; none = the method's (0; spo 2)"))
    # --- SPO (visalign.trainers.spo)
    step_scorer: str | None = field(default=None, metadata={**_help(
        "reward_models scorer judging each step's children (step-aware: SPO's SPM, judged at the child's timestep); "
        "none = `scorer`"), "methods": SPO})
    step_scorer_model: str | None = field(default=None, metadata={
        **_help("hub id or folder of the step scorer"), "methods": SPO})
    num_candidates: int = field(default=4, metadata={
        **_help("children drawn per step, k (SPO: 4 SD1.5, 2 SDXL)"), "methods": SPO})
    divert_start_step: int = field(default=4, metadata={
        **_help("first sampler step that branches and compares (SPO: 4 of 20, t <= 750)"), "methods": SPO})
    spo_threshold: float = field(default=0.3, metadata={**_help(
        "keep a step's pair when p_best - p_worst exceeds this (SPO: 0.3 SD1.5, 0.4 SDXL)"), "methods": SPO})
    sample_eta: float = field(default=1.0, metadata={**_help("DDIM η of the sampler (> 0; SPO: 1.0)"), "methods": SPO})
    prompts_per_round: int = field(default=10, metadata={
        **_help("prompts sampled per round (SPO: 10 per GPU)"), "methods": SPO})
    inner_steps: int = field(default=0, metadata={**_help(
        "MSPO: steps each branch runs after the branching one before it is judged, all its transitions paired under "
        "its label (SPO: 0 SD1.5, 3 SDXL)"), "methods": SPO})

    def __post_init__(self) -> None:
        super().__post_init__()
        c = type(self).__name__
        if not self.use_lora:
            raise ValueError(f"{c}.use_lora must be true (the evaluation loads the trained LoRA into the base)")
        for key in ("num_prompts", "num_eval_prompts", "eval_seeds", "sample_steps", "sample_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{c}.{key} must be >= 1; got {getattr(self, key)!r}")
        if self.resample_every < 0:
            raise ValueError(f"{c}.resample_every must be >= 0 (0: sample once); got {self.resample_every!r}")
        if self.resample_every and self.max_steps < 1:
            raise ValueError(f"{c}.resample_every needs max_steps (rounds of pairs have no epochs to count)")
        if self.pair_source not in PAIR_SOURCES:
            raise ValueError(f"{c}.pair_source must be one of {PAIR_SOURCES}; got {self.pair_source!r}")
        try:
            check_pair_options(self.samples_per_prompt, self.min_gap, self.pairing)
        except ValueError as err:
            raise ValueError(f"{c}.{err}") from None
        try:
            resolve_dtype(self.sample_dtype, "cpu")  # the name only: "auto" resolves against the device at load
        except ValueError as err:
            raise ValueError(f"{c}.sample_dtype: {err}") from None
        try:
            self.generation_settings()
        except ValueError as err:
            raise ValueError(f"{c}: {err} (the sample_* keys)") from None
        checks = [] if self.method not in SPO else [  # SPO's options (at their defaults otherwise)
            (self.num_candidates >= 2, "num_candidates", ">= 2", self.num_candidates),
            (0 <= self.divert_start_step < self.sample_steps, "divert_start_step", f"in [0, sample_steps "
             f"{self.sample_steps})", self.divert_start_step),
            (0 <= self.spo_threshold < 1, "spo_threshold", "in [0, 1)", self.spo_threshold),
            (self.sample_eta > 0, "sample_eta", "> 0 (the transitions need a density)", self.sample_eta),
            (self.prompts_per_round >= 1, "prompts_per_round", ">= 1", self.prompts_per_round),
            (self.inner_steps >= 0, "inner_steps", ">= 0", self.inner_steps),
        ]
        for ok, key, expected, value in checks:
            if not ok:
                raise ValueError(f"{c}.{key} must be {expected}; got {value!r}")

    def scorer_spec(self):
        from visalign.evaluation.report import ScorerSpec
        from visalign.evaluation.scorer_specs import parse_scorer_args

        kwargs = parse_scorer_args(self.scorer_args)
        if self.scorer_model is not None:
            kwargs["model"] = self.scorer_model
        return ScorerSpec(self.scorer, self.scorer, kwargs)

    def step_scorer_spec(self):
        """SPO's step scorer: ``step_scorer`` (with ``step_scorer_model``), else the evaluation's ``scorer``."""
        from visalign.evaluation.report import ScorerSpec

        if self.step_scorer is None:
            return self.scorer_spec()
        kwargs = {} if self.step_scorer_model is None else {"model": self.step_scorer_model}
        return ScorerSpec(self.step_scorer, self.step_scorer, kwargs)

    def generation_settings(self):
        from visalign.evaluation.generate import GenerationSettings

        return GenerationSettings(num_inference_steps=self.sample_steps, guidance_scale=self.sample_guidance,
                                  height=self.resolution, width=self.resolution, scheduler=self.sample_scheduler)


def sample_pairs(config: OnPolicyConfig, device: str | torch.device, *, out: Path | None = None, pipeline=None,
                 policy_label: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """Stage 1: a pair folder (default ``output_dir/pairs``) sampled from ``pipeline`` (default: ``config.model`` as
    loaded, in ``sample_dtype``; ``policy_label`` names another policy in the images' manifest) with seeds from
    ``seed`` (default ``config.seed``), or rendered (``pair_source: rendered``; no model involved); returns its
    summary (``pairs`` may be 0)."""
    from visalign.evaluation.generate import load_prompts
    from visalign.evaluation.pairs import generate_preference_pairs

    prompts = load_prompts(config.prompts, column=config.prompt_column, split=config.prompts_split,
                           limit=config.num_prompts)
    if config.pair_source == "rendered":
        from visalign.shapes.pairs import render_preference_pairs

        return render_preference_pairs(prompts, out or Path(config.output_dir) / PAIRS_DIR,
                                       seed=config.seed if seed is None else seed,
                                       near_misses=config.samples_per_prompt - 1, min_gap=config.min_gap,
                                       resolution=config.resolution, scorer=config.scorer_spec().load(device))
    return generate_preference_pairs(
        config.model, prompts, config.scorer_spec().load(device), out or Path(config.output_dir) / PAIRS_DIR,
        pipeline=pipeline, lora=policy_label, samples_per_prompt=config.samples_per_prompt, min_gap=config.min_gap,
        pairing=config.pairing, seed=config.seed if seed is None else seed,
        settings=config.generation_settings(), device=device, dtype=config.sample_dtype,
        batch_size=config.sample_batch_size)


def describe_pairs(summary: dict[str, Any], config: OnPolicyConfig) -> str:
    """One line on a pair folder's summary: its pairs, mean score gap and prompts left without a pair."""
    if summary["pairs"] == 0:
        return (f"no preference pair from {summary['num_prompts']} prompts: every score gap was <= min_gap "
                f"{config.min_gap}")
    if summary.get("source") == "rendered":
        return (f"{summary['pairs']} rendered pairs (each prompt's scene vs {summary['near_misses']} near misses; mean "
                f"score gap {summary['mean_gap']:.3f}; {summary['dropped_small_gap']} comparison(s) within min_gap "
                f"{config.min_gap})")
    return (f"{summary['pairs']} pairs ({config.pairing}; mean score gap {summary['mean_gap']:.3f}; "
            f"{summary['skipped_small_gap']} prompt(s) without a gap above {config.min_gap})")


def policy_pipeline(config: OnPolicyConfig, policy: torch.nn.Module, device: torch.device):
    """``config.model`` loaded in ``sample_dtype`` with the LoRA weights of ``policy`` (a UNet trained with
    ``unet.add_adapter``) copied in: the policy as it stands, sampled as the evaluation samples it."""
    from visalign.evaluation.generate import load_pipeline

    pipeline = load_pipeline(config.model, device=device, dtype=config.sample_dtype)
    lora = {key: value for key, value in policy.state_dict().items() if "lora_" in key}
    for name, adapter in policy.peft_config.items():
        pipeline.unet.add_adapter(copy.deepcopy(adapter), adapter_name=name)
    missing, unexpected = pipeline.unet.load_state_dict(lora, strict=False)
    missing = [key for key in missing if "lora_" in key]
    if missing or unexpected:
        raise ValueError(f"{config.model}: the policy's LoRA does not fit its UNet ({len(missing)} missing, e.g. "
                         f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    return pipeline


class PairRounds:
    """The rounds of on-policy Diffusion-DPO (a :class:`~visalign.trainers.data_source.RoundProducer`): sample the
    policy, score, pair into the round's folder, then load it as the trainer's pair dataset (module docstring).

    Each round is kept on disk (written as ``<folder>.tmp``, renamed when complete; the main process samples, every
    process loads), so a checkpoint holds nothing of it and a resume reloads the folder. ``seconds`` totals the
    sampling time.
    """

    def __init__(self, trainer: OnPolicyTrainer, config: OnPolicyConfig) -> None:
        self.trainer = trainer
        self.config = config
        self.seconds = 0.0

    def folder(self, round_index: int) -> Path:
        pairs = Path(self.config.output_dir) / PAIRS_DIR
        return pairs / ROUND_DIR.format(round_index) if self.config.resample_every else pairs

    def produce(self, round_index: int, policy: torch.nn.Module) -> Round:
        config, acc, step = self.config, self.trainer.accelerator, self.trainer.global_step
        seed = config.seed + round_index
        if seed == config.eval_seed:
            raise ValueError(f"round {round_index} would sample pairs with seed {seed}, the eval_seed of the held-out "
                             "images: set eval_seed outside seed + the rounds of the run")
        folder = self.folder(round_index)
        if acc.is_main_process:
            started = time.perf_counter()
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)  # a draw killed half-way: drawn again from these weights
            was_training = policy.training
            policy.eval()
            try:
                pipeline = policy_pipeline(config, policy, acc.device) if config.pair_source == "policy" else None
                summary = sample_pairs(config, acc.device, out=tmp, pipeline=pipeline, seed=seed,
                                       policy_label=None if step == 0 else f"policy at step {step}")
                del pipeline
            finally:
                policy.train(was_training)
            if folder.exists():  # a draw of another run (overwrite_output_dir) or of a run resumed earlier
                shutil.rmtree(folder)
            tmp.rename(folder)
            self.seconds += time.perf_counter() - started
            where = f"round {round_index} (from step {step}): " if config.resample_every else ""
            print(f"      {where}{describe_pairs(summary, config)}; {time.perf_counter() - started:.0f} s", flush=True)
        acc.wait_for_everyone()
        return self.restore_round(round_index, folder)

    def save_round(self, round_index: int, data: Round, folder: Path) -> None:
        """Nothing: the round's pair folder is kept under ``output_dir/pairs``."""

    def restore_round(self, round_index: int, folder: Path) -> Round:
        """Load the kept pair folder of ``round_index`` (``folder``, the checkpoint, holds nothing of it)."""
        pairs = self.folder(round_index)
        if not (pairs / SUMMARY).is_file():
            raise FileNotFoundError(f"{pairs}: the pairs of round {round_index} are missing (no {SUMMARY}), so the "
                                    f"run cannot resume on them; resume from a checkpoint before the round")
        summary = json.loads((pairs / SUMMARY).read_text(encoding="utf-8"))
        description = describe_pairs(summary, self.config)
        if summary["pairs"] == 0:
            return Round([], description)
        return Round(self.trainer._pair_dataset(self.trainer._pairs(str(pairs), "train")), description)


class OnPolicyTrainer(DiffusionTrainer):
    """Diffusion-DPO on pairs drawn from the policy being trained (module docstring, stages 1 and 2): the pair folder
    ``output_dir/pairs`` is its dataset, and latents and text embeddings are cached in ``output_dir/cache`` unless
    ``cache_dir`` says otherwise."""

    draws_its_data = True
    #: The methods (``visalign.trainers.methods``) this trainer trains.
    methods: ClassVar[tuple[str, ...]] = ("onpolicy-diffusion-dpo",)

    def __init__(self, args: OnPolicyConfig) -> None:
        if not isinstance(args, OnPolicyConfig) or args.method not in self.methods:
            raise TypeError(f"{type(self).__name__} trains method {' | '.join(self.methods)} (an OnPolicyConfig); got "
                            f"{type(args).__name__} with method {getattr(args, 'method', None)!r}")
        args = self.with_run_folders(args)
        self.rounds = self.make_rounds(args)
        super().__init__(args)

    def with_run_folders(self, args: OnPolicyConfig) -> OnPolicyConfig:
        """``args`` with the run's own folders: the pair folder as its dataset, the cache in ``output_dir/cache``."""
        output = Path(args.output_dir)
        return dataclasses.replace(args, dataset=str(output / PAIRS_DIR),
                                   cache_dir=args.cache_dir or str(output / CACHE_DIR))

    def make_rounds(self, args: OnPolicyConfig):
        """The producer of the online source's rounds (:class:`PairRounds`; SPO draws step-wise pairs instead)."""
        return PairRounds(self, args)

    def load_data(self) -> None:
        """The prompts pairs are sampled for and the held-out pairs, if any: before any model loads."""
        from visalign.evaluation.generate import load_prompts

        args = self.args
        self._prompts = load_prompts(args.prompts, column=args.prompt_column, split=args.prompts_split,
                                     limit=args.num_prompts)
        self._eval_pairs = None if self._raw_eval is None else self._pairs(self._raw_eval, args.eval_split)

    def build_datasets(self):
        """No training pairs yet (they are drawn in rounds): the model's parts and the held-out pairs, if any."""
        self._load_model_parts(self._prompts)
        return None, None if self._eval_pairs is None else self._held_out(self._eval_pairs)

    def build_data_source(self) -> OnlineSource:
        args = self.args
        return OnlineSource(
            self.accelerator, self.rounds, self.accelerator.unwrap_model(self.model),
            steps_per_round=args.resample_every, gradient_accumulation_steps=args.gradient_accumulation_steps,
            batch_size=args.per_device_batch_size, collator=self.collator, seed=args.seed,
            num_workers=args.dataloader_num_workers)


def evaluate_before_after(config: OnPolicyConfig, device: str) -> dict[str, Any]:
    """Stage 3: the trained LoRA (model A) against the base (model B) on held-out prompts and seeds."""
    from visalign.evaluation.generate import load_prompts
    from visalign.evaluation.report import ModelSpec, compare_models

    prompts = load_prompts(config.eval_prompts, column=config.prompt_column, split=config.eval_prompts_split,
                           limit=config.num_eval_prompts)
    return compare_models(
        ModelSpec(config.model, lora=config.output_dir, name="after (trained LoRA)"),
        ModelSpec(config.model, name="before (base model)"), prompts, [config.scorer_spec()],
        Path(config.output_dir) / EVAL_DIR, num_seeds=config.eval_seeds, base_seed=config.eval_seed,
        settings=config.generation_settings(), device=device, dtype=config.sample_dtype,
        batch_size=config.sample_batch_size, num_resamples=config.bootstrap_resamples, progress=True)


def summarise(section: dict[str, Any]) -> dict[str, float]:
    """The headline figures of one scorer's section of a ``compare_models`` report (A = after, B = before), then the
    gain of each detail of the score (``gain/<detail>``: the ``shapes`` reward's components)."""
    details = section.get("details", {}).get("compared", {})
    return {"reward_before": section["mean_b"], "reward_after": section["mean_a"],
            "reward_gain": section["mean_diff"], "reward_gain_ci_low": section["mean_diff_ci"][0],
            "reward_gain_ci_high": section["mean_diff_ci"][1], "win_rate": section["win"],
            "win_rate_ci_low": section["win_ci"][0], "win_rate_ci_high": section["win_ci"][1],
            "tie_rate": section["tie"], "loss_rate": section["loss"],
            **{f"gain/{key}": d["mean_diff"] for key, d in details.items()}}


def format_detail_gains(section: dict[str, Any]) -> str:
    """One line per detail of the score: before -> after and the gain with its interval ('' if there are none)."""
    details = section.get("details", {}).get("compared", {})
    return "".join(f"  {key:<16} {d['mean_b']:.3f} -> {d['mean_a']:.3f} ({d['mean_diff']:+.3f} "
                   f"[{d['mean_diff_ci'][0]:+.3f}, {d['mean_diff_ci'][1]:+.3f}])\n" for key, d in details.items())


def print_before_after(config: OnPolicyConfig, report: dict[str, Any], seconds: dict[str, float]) -> dict[str, float]:
    """Print the headline figures of stage 3 (``report`` from :func:`evaluate_before_after`) with the stage times,
    where the images and the LoRA are; return the figures (:func:`summarise`)."""
    section = report["scorers"][config.scorer]
    figures = summarise(section)
    eval_dir = Path(config.output_dir) / EVAL_DIR
    details = format_detail_gains(section)
    details = f"what the score is made of, before -> after (gain [95% CI]):\n{details}" if details else ""
    print(f"\n{config.scorer} reward before -> after: {figures['reward_before']:.4f} -> {figures['reward_after']:.4f} "
          f"(gain {figures['reward_gain']:+.4f}, 95% CI [{figures['reward_gain_ci_low']:+.4f}, "
          f"{figures['reward_gain_ci_high']:+.4f}])\n{details}"
          f"win rate of the trained model against the base: {figures['win_rate']:.1%} "
          f"[{figures['win_rate_ci_low']:.1%}, {figures['win_rate_ci_high']:.1%}], ties {figures['tie_rate']:.1%}, "
          f"losses {figures['loss_rate']:.1%}\n"
          f"time: sampling {seconds['sample_s']:.0f} s, training {seconds['train_s']:.0f} s, evaluation "
          f"{seconds['eval_s']:.0f} s\n"
          f"before/after images: {eval_dir / 'grid.png'} (columns: after, before); report: {eval_dir / 'report.html'}"
          f"\nLoRA: {config.output_dir} (pipe.load_lora_weights)", flush=True)
    return figures


def run(config: OnPolicyConfig) -> dict[str, float]:
    """Sample pairs, train, evaluate (module docstring); prints the before/after figures and returns them with the
    training metrics."""
    prepare_output_dir(config)  # writable, and empty unless resuming or overwriting: before any model loads
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seconds = {}
    started = time.perf_counter()
    every = f" every {config.resample_every} steps" if config.resample_every else ""
    if config.pair_source == "rendered":
        print(f"[1/3] rendering the scene of each of {config.num_prompts} prompts and {config.samples_per_prompt - 1} "
              f"near misses{every}, scored by {config.scorer}", flush=True)
    else:
        print(f"[1/3] sampling {config.samples_per_prompt} images for each of {config.num_prompts} prompts from "
              f"{config.model}{every}, scored by {config.scorer}", flush=True)
    trainer = OnPolicyTrainer(config)  # a single round of pairs is drawn here, before step 1
    print(f"[2/3] training {config.loss_type} (beta {config.beta}) with LoRA r{config.lora_r} for "
          f"{config.max_steps} steps", flush=True)
    train_metrics = trainer.train()
    if not trainer.accelerator.is_main_process:  # the evaluation renders and writes eval/ once, on the main process
        return train_metrics
    seconds["sample_s"] = trainer.rounds.seconds
    seconds["train_s"], started = time.perf_counter() - started - seconds["sample_s"], time.perf_counter()
    print(f"      {seconds['train_s']:.0f} s", flush=True)
    print(f"[3/3] evaluating on {config.num_eval_prompts} held-out prompts x {config.eval_seeds} seeds", flush=True)
    report = evaluate_before_after(config, device)
    seconds["eval_s"] = time.perf_counter() - started
    figures = print_before_after(config, report, seconds)
    write_card_results(config.output_dir, {**train_metrics, **figures})  # the card carries the evaluation too
    return {**train_metrics, **figures, **seconds}
