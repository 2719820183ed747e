"""SPO: step-aware preference optimisation (Liang et al., CVPR 2025, arXiv 2406.04314), online, in one command.

Reference ``diffusion-methods.md`` §6 and ``flow-and-online.md`` §1. Each round (every ``resample_every`` optimizer
steps) samples ``prompts_per_round`` prompts with the current policy (LoRA active) through SPO's step-wise resampler
(``visalign.sampling.stepwise``: a guided DDIM trajectory with η > 0; from ``divert_start_step`` on, ``num_candidates``
children per step judged on their predicted x0 by the step scorer, the best and worst kept when their softmax gap
exceeds ``spo_threshold``, a random child continues). The round's pairs are stored transitions
``(x_t, x_{t-1}^w, x_{t-1}^l, t, prompt)``; training scores them with the transition log-probabilities
(``visalign.likelihood.ddim_steps``) under the policy and the reference, with SPO's clipped-ratio loss
(``loss_type: spo``: ``−logσ(β·log r_w − β·log r_l)``, r clamped to 1 ± ``spo_ratio_clip``; β 10, ε 0.1). After
training, the trained LoRA and the base render held-out prompts and seeds and are compared as in the quickstart
(``eval/``: report.html, report.md, report.json, scores.jsonl, grid.png).

Rounds are drawn by the main process and broadcast to the others, kept in every checkpoint (``spo_round.safetensors``)
so a killed run resumes on the same pairs (``visalign.trainers.data_source.OnlineSource``).

Differences from SPO's code, deliberate: one guided forward per model scores both children of a pair (they share
their parent, so the numbers are SPO's four forwards'); a round lasts ``resample_every`` optimizer steps, cycling its
pairs, where SPO trains one pass over however many pairs a round gave; the step scorer is any ``reward_models``
scorer (a ``step-aware`` one is judged at each child's timestep). SDXL's MSPO is ``inner_steps`` (``spo-sdxl``: 3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from visalign.likelihood.ddim_steps import DDIMStepLogProbs
from visalign.models.card import write_card_results
from visalign.trainers._common import prepare_output_dir
from visalign.trainers.config import _help
from visalign.trainers.data_source import Round, TensorRows
from visalign.trainers.onpolicy import OnPolicyConfig, OnPolicyTrainer, evaluate_before_after, print_before_after

ROUND_FILE = "spo_round.safetensors"


@dataclass
class SPOConfig(OnPolicyConfig):
    """``OnPolicyConfig(method="spo")``: SPO on the policy's own step-wise pairs (module docstring), with the held-out
    evaluation of the quickstart. A name for the method, adding nothing (its options are ``OnPolicyConfig``'s)."""

    method: str = field(default="spo", metadata=_help("the method to train (`visalign train` picks its trainer)"))


def round_seed(seed: int, round_index: int, prompt_index: int) -> int:
    """The sampler seed of one prompt in one round (noise and the random child), keyed, not streamed."""
    return int(np.random.SeedSequence([seed, round_index, prompt_index]).generate_state(1, dtype=np.uint64)[0])


class StepwiseRounds:
    """The rounds of SPO (a :class:`~visalign.trainers.data_source.RoundProducer`): round ``r`` samples prompts
    ``r·P, ..., r·P + P − 1`` (modulo the prompt list) with the policy and keeps their step-wise pairs in memory as
    :class:`TensorRows` (``parents``, ``chosen``, ``rejected``, ``timesteps``, ``prompt_index``), saved into each
    checkpoint. ``seconds`` totals the sampling time; ``pairs`` and ``comparisons`` the pairs kept out of the
    (prompt, step) comparisons made."""

    def __init__(self, trainer: SPOTrainer, config: SPOConfig) -> None:
        self.trainer, self.config = trainer, config
        self.seconds, self.pairs, self.comparisons = 0.0, 0, 0
        self._step_scorer = None

    def step_scorer(self):
        from visalign.sampling.stepwise import RewardStepScorer

        if self._step_scorer is None:
            spec = self.config.step_scorer_spec()
            self._step_scorer = RewardStepScorer(spec.load(self.trainer.accelerator.device))
        return self._step_scorer

    def produce(self, round_index: int, policy: torch.nn.Module) -> Round:
        from visalign.sampling.stepwise import stepwise_pairs

        config, trainer, acc = self.config, self.trainer, self.trainer.accelerator
        prompts = trainer.prompts
        indices = [(round_index * config.prompts_per_round + i) % len(prompts)
                   for i in range(config.prompts_per_round)]
        rows: list[Any] = [None]
        if acc.is_main_process:
            started = time.perf_counter()
            was_training = policy.training
            policy.eval()
            try:
                pairs = stepwise_pairs(
                    trainer.components, policy, [prompts[i] for i in indices], self.step_scorer(),
                    resolution=trainer.resolution, num_candidates=config.num_candidates,
                    divert_start_step=config.divert_start_step, threshold=config.spo_threshold,
                    num_inference_steps=config.sample_steps, guidance_scale=trainer.guidance_scale,
                    eta=config.sample_eta, inner_steps=config.inner_steps,
                    generators=[torch.Generator().manual_seed(round_seed(config.seed, round_index, i))
                                for i in indices])
            finally:
                policy.train(was_training)
            rows[0] = {"parents": pairs.parents.cpu(), "chosen": pairs.chosen.cpu(), "rejected": pairs.rejected.cpu(),
                       "timesteps": pairs.timesteps.cpu(),
                       "prompt_index": torch.tensor(indices)[pairs.prompt_indices.cpu()],
                       "comparisons": pairs.comparisons}
            if pairs.rejected_parents is not None:  # MSPO: the inner steps' parents differ
                rows[0]["rejected_parents"] = pairs.rejected_parents.cpu()
            self.seconds += time.perf_counter() - started
        rows = broadcast_object_list(rows)[0]
        comparisons = rows.pop("comparisons")
        found = len(rows["parents"])
        # whole global batches only (SPO skips a round with fewer pairs than ranks), so that N processes train on
        # exactly the batches one process does with the same global batch
        kept = found - found % (config.per_device_batch_size * acc.num_processes)
        rows = {key: value[:kept] for key, value in rows.items()}
        self.pairs, self.comparisons = self.pairs + kept, self.comparisons + comparisons
        left_out = f" ({found - kept} left out to fill whole global batches)" if kept < found else ""
        description = (f"{kept} step-wise pairs{left_out} from {comparisons} (prompt, step) comparisons of "
                       f"{len(indices)} prompts")
        return Round(TensorRows(rows) if kept else [], description)

    def save_round(self, round_index: int, data: Round, folder: Path) -> None:
        data.dataset.save(folder / ROUND_FILE)

    def restore_round(self, round_index: int, folder: Path) -> Round:
        rows = TensorRows.load(folder / ROUND_FILE)
        return Round(rows, f"{len(rows)} step-wise pairs (round {round_index}, restored from {folder.name})")


class SPOTrainer(OnPolicyTrainer):
    """SPO's training stage (module docstring): an :class:`OnlineSource` of step-wise pairs, the transition
    likelihood and the configured loss (SPO's by default)."""

    methods = ("spo",)

    def with_run_folders(self, args: SPOConfig) -> SPOConfig:
        """Nothing to add: the rounds live in memory and in checkpoints, and nothing is cached."""
        return args

    def make_rounds(self, args: SPOConfig) -> StepwiseRounds:
        return StepwiseRounds(self, args)

    @property
    def prompts(self) -> list[str]:
        return self._prompts

    @property
    def guidance_scale(self) -> float:
        """``sample_guidance``, else the family's default CFG scale."""
        guidance = self.args.sample_guidance
        return self.components.adapter.default_guidance_scale if guidance is None else guidance

    def build_collator(self):
        prompts = self._prompts

        def collate(items: list[dict]) -> dict:
            batch = {key: torch.stack([item[key] for item in items])
                     for key in ("parents", "rejected_parents", "chosen", "rejected", "timesteps") if key in items[0]}
            batch["prompts"] = [prompts[int(item["prompt_index"])] for item in items]
            return batch

        return collate

    def build_likelihood(self) -> DDIMStepLogProbs:
        args = self.args
        return DDIMStepLogProbs(self.components, num_inference_steps=args.sample_steps,
                                guidance_scale=self.guidance_scale, eta=args.sample_eta, resolution=self.resolution,
                                device=self.accelerator.device)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(self.model, self.likelihood.prepare(batch, self.global_step))

    def num_examples(self, batch: dict) -> int:
        return len(batch["prompts"])

    def num_skipped(self, batch: dict) -> int:
        return 0


def run(config: SPOConfig) -> dict[str, float]:
    """Sample step-wise pairs in rounds while training, then evaluate (module docstring); prints the figures."""
    prepare_output_dir(config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"[1/2] SPO on {config.model}: rounds of {config.prompts_per_round} prompts every {config.resample_every} "
          f"steps, {config.num_candidates} children per step from step {config.divert_start_step} of "
          f"{config.sample_steps}, judged by {config.step_scorer or config.scorer}; {config.loss_type} (beta "
          f"{config.beta}) with LoRA r{config.lora_r} for {config.max_steps} steps", flush=True)
    started = time.perf_counter()
    trainer = SPOTrainer(config)
    train_metrics = trainer.train()
    rounds = trainer.rounds
    if not trainer.accelerator.is_main_process:  # the evaluation renders and writes eval/ once, on the main process
        return train_metrics
    seconds = {"sample_s": rounds.seconds, "train_s": time.perf_counter() - started - rounds.seconds}
    print(f"      {rounds.pairs} step-wise pairs kept of {rounds.comparisons} comparisons; sampling "
          f"{seconds['sample_s']:.0f} s, training {seconds['train_s']:.0f} s", flush=True)
    print(f"[2/2] evaluating on {config.num_eval_prompts} held-out prompts x {config.eval_seeds} seeds", flush=True)
    started = time.perf_counter()
    report = evaluate_before_after(config, device)
    seconds["eval_s"] = time.perf_counter() - started
    figures = print_before_after(config, report, seconds)
    write_card_results(config.output_dir, {**train_metrics, **figures})
    return {**train_metrics, **figures, **seconds, "spo_pairs": float(rounds.pairs),
            "spo_comparisons": float(rounds.comparisons)}
