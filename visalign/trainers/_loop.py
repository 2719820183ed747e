"""The one accelerate training loop every visalign trainer subclasses (text, VLM, diffusion, on-policy diffusion).

A subclass supplies the method through hooks; the loop owns everything else:

- ``load_data()``: load and check the training (and eval) data; runs first, before any model loads (default:
  nothing, the data is loaded by ``build_datasets``);
- ``build_datasets()``: train (and eval) datasets, validated; before the policy is built, and may load what the
  datasets need first (the diffusion trainers: the VAE and text encoders that fill the latent and text caches);
- ``build_model()``: the trainable policy (LoRA already applied);
- ``enable_gradient_checkpointing(model)``: when ``gradient_checkpointing`` is set (default: transformers models);
- ``build_collator()``: ``examples -> batch``;
- ``prepare_reference()``: after ``accelerator.prepare``, set up the reference (may precompute it);
- ``build_data_source()``: where training micro-batches come from (``visalign.trainers.data_source``): by default a
  ``DatasetSource`` over the train dataset; an ``OnlineSource`` draws rounds from the policy being trained;
- ``compute_loss(batch)``: ``(scalar loss, {metric name: float})`` for one micro-batch;
- ``num_examples(batch)``: weight of a batch when averaging evaluation metrics (0: every example was skipped);
- ``num_skipped(batch)``: examples dropped from a batch as unreadable (counted over processes and resumes);
- ``resolved_config()``: the config with resolved defaults, written beside checkpoints and the final model;
- ``save_final(output_dir)``: the final model folder (``save_pretrained`` + resolved config);
- ``on_step_end(step)``: after each optimizer step's logging and checkpointing (e.g. validation images).

The loop knows its data only through the data source's interface: micro-batches from a stream position, the epoch
length if the data has epochs (else the run needs ``max_steps``), progress figures, and a state (plus files) saved
in every checkpoint and restored on resume.

Per optimizer step the loop runs ``gradient_accumulation_steps`` micro-batches (``no_sync`` on all but the last),
clips the global gradient norm, and skips the update when the loss or the gradient norm is non-finite on any process
(counted; more than ``max_nonfinite_steps`` in a row raises ``NonFiniteTrainingError`` and leaves the last good
checkpoint in place: one followed by a finite loss) or when no micro-batch held an example. The data stream is
deterministic: the micro-batch position is ``step · gradient_accumulation_steps``, so ``resume_from`` restores model,
optimizer, scheduler and RNG states with ``accelerator.load_state``, the data source's state with its
``load_state_dict``, and asks the source for the same position — a resumed run ends where an uninterrupted one does.
A fresh run needs an empty (or ``overwrite_output_dir``), writable ``output_dir``; a resume checks the checkpoint's
config (``_resume``).

Per-step overhead is kept off the module tree: ``train()`` puts the whole model in train mode once and a step does it
again only if the top module was left in eval mode (``evaluate``, validation images and the reference restore every
flag they change); the parameters to clip are listed once, after ``prepare_reference``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import pickle
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from visalign.config_io import ConfigError, config_to_dict, read_yaml_mapping, save_config
from visalign.models.card import write_card_results
from visalign.trainers._common import (
    CONFIG_FILE,
    MetricsLog,
    check_distributed_setup,
    check_resume_method,
    complete_checkpoints,
    device_mixed_precision,
    make_optimizer,
    make_scheduler,
    prepare_output_dir,
    prune_checkpoints,
    read_trainer_state,
    register_trainable_state_hooks,
    resolve_resume,
    resume_config_changes,
    save_checkpoint,
    total_optimizer_steps,
    weighted_means,
)
from visalign.trainers.config import TrainingConfig
from visalign.trainers.data_source import DatasetSource, make_dataloader

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Raised when more than ``max_nonfinite_steps`` consecutive optimizer steps had a non-finite loss or gradient."""


class Trainer:
    """Base accelerate trainer; see the module docstring for the hooks a subclass implements.

    Attributes after construction: ``args``, ``accelerator``, ``model`` (prepared), ``optimizer``, ``lr_scheduler``,
    ``train_dataset``, ``eval_dataset``, ``collator``, ``data_source``, ``global_step``.
    """

    def __init__(self, args: TrainingConfig) -> None:
        precision, precision_note = device_mixed_precision(args.mixed_precision)
        if precision_note is not None:
            args = dataclasses.replace(args, mixed_precision=precision)
        self.args = args
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            log_with=args.trackers or None,
            project_dir=args.output_dir,
            step_scheduler_with_optimizer=False,
        )
        check_distributed_setup(self.accelerator)  # a launch accelerate did not honour (FSDP on CPUs) fails here
        register_trainable_state_hooks(self.accelerator)
        prepare_output_dir(args, is_main_process=self.accelerator.is_main_process)  # before any model loads
        self._checkpoint = resolve_resume(args.output_dir, args.resume_from)  # also: a bad path fails before loading
        if self._checkpoint is not None:  # so does another method's checkpoint (a text one for a diffusion run)
            check_resume_method(read_yaml_mapping(self._checkpoint / CONFIG_FILE), args.method, self._checkpoint)
        set_seed(args.seed)
        self.load_data()
        self.train_dataset, self.eval_dataset = self.build_datasets()
        if precision_note is not None:  # said after the data and model checks, whose errors stay one line
            logger.warning(precision_note)
        set_seed(args.seed)  # weight init (a LoRA) must not depend on what preparing the data drew (filling a cache)
        model = self.build_model()
        if args.gradient_checkpointing:
            self.enable_gradient_checkpointing(model)
        self.collator = self.build_collator()
        self.model, self.optimizer = self.accelerator.prepare(
            model, make_optimizer(model, args, device=self.accelerator.device)
        )
        self.prepare_reference()  # may add columns (a precomputed reference) before the loader is built
        self._parameters = list(self.model.parameters())  # listed once: clipping needs no walk over the modules
        self.global_step = 0
        self.data_source = self.build_data_source()  # an online source may draw its first round: from step 0
        if self._checkpoint is not None:  # before its length is asked: a kept online round is restored, not redrawn
            source_state = read_trainer_state(self._checkpoint).get("data_source")
            if source_state is not None:  # absent from checkpoints written before data sources
                self.data_source.load_state_dict(source_state, self._checkpoint)
        self._epoch_length = self.data_source.epoch_length()
        self.total_steps = total_optimizer_steps(args, self._epoch_length)
        self.lr_scheduler = self.accelerator.prepare(make_scheduler(self.optimizer, args, self.total_steps))
        self.resumed_from: Path | None = None
        self.skipped_total = 0  # unreadable examples skipped, over every process (kept in checkpoints)
        self._unconfirmed_checkpoint: Path | None = None
        self.nonfinite_total = 0
        self._nonfinite_streak = 0
        self._metrics = MetricsLog(self.accelerator, args.output_dir)

    # ------------------------------------------------------------------------------------------------------
    # hooks

    def load_data(self) -> None:
        """Load and check the data before any model loads, so bad data fails fast (default: nothing)."""

    def build_datasets(self) -> tuple[Any, Any | None]:
        """Return ``(train_dataset, eval_dataset or None)``, validated (runs before the policy is built; a train
        dataset of ``None`` when the data source draws its own)."""
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        """Return the trainable policy."""
        raise NotImplementedError

    def build_collator(self) -> Callable[[list[dict]], dict]:
        raise NotImplementedError

    def enable_gradient_checkpointing(self, model: torch.nn.Module) -> None:
        """Non-reentrant activation checkpointing of a transformers model (diffusers trainers override this)."""
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def prepare_reference(self) -> None:
        """Set up the reference once the policy is prepared (default: nothing)."""

    def build_data_source(self):
        """Where training micro-batches come from (``visalign.trainers.data_source``; default: the train dataset,
        shuffled per epoch). Runs after ``prepare_reference``, which may have added columns to the dataset."""
        args = self.args
        return DatasetSource(self.accelerator, self.train_dataset, batch_size=args.per_device_batch_size,
                             collator=self.collator, seed=args.seed, num_workers=args.dataloader_num_workers)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of one micro-batch and its metrics (floats, TRL names)."""
        raise NotImplementedError

    def num_examples(self, batch: dict) -> int:
        """Examples in ``batch``: the weight of its metrics in ``evaluate`` averages; 0 when every example of it was
        skipped (the micro-batch then takes no part in the step's loss and update)."""
        return 1

    def num_skipped(self, batch: dict) -> int:
        """Examples dropped from ``batch`` as unreadable (counted, logged as ``data/skipped_pairs``)."""
        return 0

    def on_step_end(self, step: int) -> None:
        """Called after optimizer step ``step`` (1-based) and its logging/checkpointing; e.g. validation images."""

    def resolved_config(self) -> TrainingConfig:
        """The config written beside checkpoints and the final model (subclasses fill in resolved defaults)."""
        return self.args

    def save_final(self, output_dir: Path) -> None:
        """``save_pretrained`` the unwrapped policy (a PEFT adapter for LoRA) and the resolved config."""
        state_dict = self.accelerator.get_state_dict(self.model)
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(self.model).save_pretrained(output_dir, state_dict=state_dict)
            save_config(self.resolved_config(), output_dir / CONFIG_FILE)

    # ------------------------------------------------------------------------------------------------------
    # training

    def train(self) -> dict[str, float]:
        """Run to ``total_steps`` optimizer steps (resuming if asked), save the final model, return final metrics."""
        args, acc = self.args, self.accelerator
        if args.trackers:
            acc.init_trackers("visalign", config=_tracker_config(self.resolved_config()))
        self._resume()
        self._metrics.truncate_after(self.global_step)
        ga = args.gradient_accumulation_steps
        stream = self.data_source.batches(self.global_step * ga)
        self.model.train()
        losses = []
        start, examples = self.global_step, 0
        progress = tqdm(
            total=self.total_steps, initial=self.global_step, desc="training", disable=not acc.is_local_main_process
        )
        while self.global_step < self.total_steps:
            loss, metrics, step_examples = self._optimizer_step(stream)
            self.global_step += 1
            examples += step_examples
            progress.update(1)
            if math.isfinite(loss):
                self._accept_checkpoint()  # a finite loss at the last checkpoint's weights
                losses.append(loss)
                self._metrics.add({"loss": loss, **metrics})
                progress.set_postfix(loss=f"{loss:.4g}")
            else:  # a skipped update still logs its data counts
                self._metrics.add(metrics)
            epoch_done = self._epoch_length is not None and (self.global_step - start) * ga >= self._epoch_length
            if not examples and (epoch_done or self.global_step == self.total_steps):
                raise ValueError(
                    f"every example read in {self.global_step - start} step(s) was skipped as unreadable "
                    f"({self.skipped_total} skipped, the warnings above say why): nothing was trained; fix the "
                    "dataset (e.g. its image paths)")
            if self.global_step % args.logging_steps == 0 or self.global_step == self.total_steps:
                self._metrics.flush(self.global_step, self._progress_metrics())
            if args.save_steps and self.global_step % args.save_steps == 0 and self._nonfinite_streak == 0:
                self.save_checkpoint()
            self.on_step_end(self.global_step)
        progress.close()
        self._accept_checkpoint()  # the final model is saved from the same weights
        output_dir = Path(args.output_dir)
        acc.wait_for_everyone()
        self.save_final(output_dir)
        acc.wait_for_everyone()
        if acc.is_main_process:
            print(f"saved the trained model to {output_dir} (its README.md shows how to load it)", flush=True)
        if self.skipped_total:
            logger.warning("%d unreadable pair(s) were skipped during training (data/skipped_pairs in %s)",
                           self.skipped_total, self._metrics.path)
        result = {"train_loss": sum(losses) / len(losses) if losses else math.nan,
                  "train_steps": float(self.global_step), "nonfinite_steps": float(self.nonfinite_total),
                  "skipped_pairs": float(self.skipped_total)}
        if self.eval_dataset is not None:
            result.update(self.evaluate())
        if acc.is_main_process:
            write_card_results(output_dir, result)
        if args.trackers:
            acc.end_training()
        return result

    def _optimizer_step(self, stream: Iterator[dict]) -> tuple[float, dict[str, float], int]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches -> ``(loss, metrics, examples)``.

        The loss and gradient are the means over the micro-batches that hold an example (a micro-batch whose
        examples were all skipped still runs ``compute_loss``, a zero on the graph, so every process does its
        backward). ``loss`` is NaN when the update was skipped: a non-finite loss or gradient, or no example at all
        on any process (``examples``, summed over processes, is then 0).
        """
        acc, args = self.accelerator, self.args
        ga = args.gradient_accumulation_steps
        if not self.model.training:  # a hook left it in eval mode (train() put the whole tree in train mode)
            self.model.train()
        losses, rows, examples, skipped = [], [], 0, 0
        for i in range(ga):
            batch = next(stream)
            count = self.num_examples(batch)
            examples, skipped = examples + count, skipped + self.num_skipped(batch)
            sync = contextlib.nullcontext() if i == ga - 1 else acc.no_sync(self.model)
            with sync:
                with acc.autocast():
                    loss, metrics = self.compute_loss(batch)
                # Scaled here, not by accelerate: its gradient-accumulation setting is process-global state shared
                # by every Accelerator, so two trainers alive in one process would see each other's value.
                acc.backward(loss / ga)
            if count:
                losses.append(loss.detach().float())
                rows.append((1.0, metrics))
        if 0 < len(losses) < ga:  # the mean over the micro-batches that held examples, not over all of them
            for param in self._parameters:
                if param.grad is not None:
                    param.grad.mul_(ga / len(losses))
        loss = torch.stack(losses).mean() if losses else torch.zeros((), device=acc.device)
        grad_norm = acc.clip_grad_norm_(self._parameters, args.max_grad_norm or math.inf)
        bad = (~torch.isfinite(loss)).float()
        if grad_norm is not None and acc.scaler is None:  # with fp16 the grad scaler owns overflow handling
            bad = torch.maximum(bad, (~torch.isfinite(grad_norm)).float().to(bad.device))
        # One device-to-host copy per step (flags and counts summed over processes, the loss and the norm), not one
        # each.
        norm = torch.as_tensor(math.nan if grad_norm is None else grad_norm, dtype=torch.float32).to(bad.device)
        counts = torch.tensor([examples, skipped], dtype=torch.float32, device=bad.device)
        flags, examples, skipped, loss_value, norm_value = torch.cat(
            [acc.reduce(torch.cat([bad.view(1), counts]), reduction="sum"), torch.stack([loss.to(bad.device), norm])]
        ).tolist()
        examples, skipped = int(examples), int(skipped)
        self.skipped_total += skipped
        finite = flags == 0
        if examples and (finite or acc.scaler is not None):
            self.optimizer.step()  # with fp16 the scaler skips a step whose gradients are not finite
        elif acc.scaler is not None:
            acc.scaler.update()  # close the step clipping unscaled, without an update (the next one unscales again)
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        data = {"data/skipped_pairs": float(skipped)}
        if not examples:
            logger.warning("step %d: every example of its micro-batches was skipped as unreadable; no update",
                           self.global_step + 1)
            return math.nan, data, 0
        if finite:
            self._nonfinite_streak = 0
            metrics = {**weighted_means(rows), **data}
            if grad_norm is not None:
                metrics["grad_norm"] = norm_value
            return loss_value, metrics, examples
        self.nonfinite_total += 1
        self._nonfinite_streak += 1
        logger.warning("step %d: non-finite loss or gradient; update skipped (%d in a row)",
                       self.global_step + 1, self._nonfinite_streak)
        if self._nonfinite_streak > args.max_nonfinite_steps:
            last_good = self._reject_diverged_checkpoint()
            raise NonFiniteTrainingError(
                f"{self._nonfinite_streak} consecutive optimizer steps (up to step {self.global_step + 1}) had a "
                f"non-finite loss or gradient, more than max_nonfinite_steps={args.max_nonfinite_steps}; stopping. "
                + (f"The last good checkpoint is {last_good}; lower the learning rate or check the data, then resume "
                   "with resume_from=latest." if last_good else
                   "No good checkpoint was written; lower the learning rate or check the data and start again.")
            )
        return math.nan, data, examples

    def _progress_metrics(self) -> dict[str, float]:
        micro = self.global_step * self.args.gradient_accumulation_steps
        return {
            "learning_rate": self.lr_scheduler.get_last_lr()[0],
            **self.data_source.progress(micro),
            "nonfinite_steps": float(self.nonfinite_total),
        }

    # ------------------------------------------------------------------------------------------------------
    # checkpoints

    def _state(self) -> dict[str, Any]:
        return {"step": self.global_step, "total_steps": self.total_steps, "nonfinite_total": self.nonfinite_total,
                "nonfinite_streak": self._nonfinite_streak, "skipped_total": self.skipped_total,
                "data_source": self.data_source.state_dict()}

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/checkpoint-<step>`` atomically. It is confirmed good, and older ones pruned to
        ``save_total_limit``, once a later step has a finite loss at its weights (so a limit of N briefly keeps N+1);
        a run stopped for non-finite steps before that renames it ``checkpoint-<step>.diverged``."""
        path = save_checkpoint(self.accelerator, self.args.output_dir, self.global_step, self._state(),
                               self.resolved_config(), write_files=self.data_source.save_files)
        self._unconfirmed_checkpoint = path
        return path

    def _accept_checkpoint(self) -> None:
        """The newest checkpoint is good: prune the older ones to ``save_total_limit``."""
        if self._unconfirmed_checkpoint is None:
            return
        self._unconfirmed_checkpoint = None
        if self.accelerator.is_main_process:
            prune_checkpoints(self.args.output_dir, self.args.save_total_limit)
        self.accelerator.wait_for_everyone()

    def _reject_diverged_checkpoint(self) -> Path | None:
        """Set aside the newest checkpoint if no finite loss followed it (its weights are what diverged, e.g. after
        one exploding update); return the newest good checkpoint (``None`` if there is none)."""
        diverged = self._unconfirmed_checkpoint
        if diverged is not None:
            self._unconfirmed_checkpoint = None
            if self.accelerator.is_main_process:
                target = diverged.with_name(diverged.name + ".diverged")
                if target.exists():
                    shutil.rmtree(target)
                diverged.rename(target)
                logger.warning("%s: every step after it had a non-finite loss; set aside as %s", diverged, target.name)
            self.accelerator.wait_for_everyone()
        found = complete_checkpoints(self.args.output_dir)
        return found[-1][1] if found else None

    def _resume(self) -> None:
        """Restore the checkpoint ``resume_from`` names after checking it against this run: same method and settings
        but for :data:`RESUME_CHANGEABLE` keys (applied: the schedule is re-evaluated from this run's config), and not
        past this run's last step."""
        args, checkpoint = self.args, self._checkpoint
        if checkpoint is None:
            if args.resume_from == "latest":
                logger.info("resume_from=latest: no checkpoint in %s yet, starting from step 0", args.output_dir)
            return
        changes = resume_config_changes(read_yaml_mapping(checkpoint / CONFIG_FILE),
                                        config_to_dict(self.resolved_config()), checkpoint)
        state = read_trainer_state(checkpoint)
        if state["step"] > self.total_steps:
            raise ConfigError(
                f"{checkpoint} is at step {state['step']}, past this run's last step {self.total_steps} (max_steps "
                f"{args.max_steps}, num_epochs {args.num_epochs}): raise max_steps, resume from an earlier checkpoint, "
                "or start a fresh run in another --output_dir")
        _check_rng_state(checkpoint / f"random_states_{self.accelerator.process_index}.pkl")
        try:
            self.accelerator.load_state(str(checkpoint))
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:  # torch.load of a damaged file
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"{checkpoint}: its optimizer, scheduler or RNG state cannot be read "
                             f"({type(err).__name__}: {first_line}); resume from another checkpoint") from None
        scheduler = self.lr_scheduler.scheduler
        scheduler.base_lrs = [args.learning_rate for _ in scheduler.base_lrs]
        scheduler.last_epoch -= 1
        scheduler.step()  # the learning rate of this step again, from this run's learning_rate and schedule
        self.resumed_from = checkpoint
        self.global_step = state["step"]
        self.nonfinite_total = state["nonfinite_total"]
        self._nonfinite_streak = state["nonfinite_streak"]
        self.skipped_total = state.get("skipped_total", 0)  # absent from checkpoints of visalign <= 0.1
        logger.info("resumed from %s at step %d", checkpoint, self.global_step)
        for key, (old, new) in changes.items():
            if key != "resume_from":
                logger.warning("resumed with %s changed from %r to %r (applied)", key, old, new)

    # ------------------------------------------------------------------------------------------------------
    # evaluation

    @torch.no_grad()
    def evaluate(self, dataset=None, *, prefix: str = "eval") -> dict[str, float]:
        """Metrics averaged over ``dataset`` (a prepared dataset; default the eval dataset), prefixed ``<prefix>_``."""
        dataset = self.eval_dataset if dataset is None else dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval dataset: pass one or set eval_dataset in the config")
        acc = self.accelerator
        loader = acc.prepare(make_dataloader(dataset, self.args.eval_batch_size or self.args.per_device_batch_size,
                                             self.collator, num_workers=self.args.dataloader_num_workers))
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, float] = {}
        weight = 0.0
        for batch in loader:
            with acc.autocast():
                loss, metrics = self.compute_loss(batch)
            n = float(self.num_examples(batch))
            for key, value in {"loss": loss.item(), **metrics}.items():
                sums[key] = sums.get(key, 0.0) + n * float(value)
            weight += n
        self.model.train(was_training)
        keys = sorted(sums)
        totals = torch.tensor([weight] + [sums[k] for k in keys], dtype=torch.float64, device=acc.device)
        totals = acc.reduce(totals, reduction="sum").tolist()
        if totals[0] == 0:
            raise ValueError(f"evaluate(): no {prefix} example could be read (all were skipped); check the data")
        result = {f"{prefix}_{k}": v / totals[0] for k, v in zip(keys, totals[1:])}
        self._metrics.write(self.global_step, result)
        return result


def _tracker_config(config: TrainingConfig) -> dict[str, Any]:
    """Config values trackers accept (tensorboard hparams take scalars only: lists become strings)."""
    return {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in config_to_dict(config).items()
            if v is not None}


def _check_rng_state(path: Path) -> None:
    """Fail on a missing or damaged RNG state file, which ``accelerator.load_state`` would skip with an INFO line,
    leaving the data order and dropout of the resumed run different from the uninterrupted one. The file is a
    ``torch.save`` zip archive: its CRCs are checked without unpickling it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the checkpoint, so the run cannot resume exactly; resume from "
                                "another checkpoint")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        damaged = str(err)
    if damaged is not None:
        raise ValueError(f"{path} is corrupt ({damaged}); resume from another checkpoint")
