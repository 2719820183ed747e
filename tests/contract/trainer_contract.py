"""Behaviour every trainer must have, written once and applied to each family (``test_trainer_contract.py``), as
``scorer_contract.py`` does for scorers and ``likelihood_contract.py`` for likelihood providers.

The contract holds only public behaviour: configs, ``Trainer(...).train()``, the output folder (checkpoints, the final
model, ``config.yaml``, ``metrics.jsonl``) and the saved weights read back with the ecosystem's own API, so it holds
whatever the loop, the likelihood providers and the family adapters look like inside. What every trainer promises:

- a bad config value or an unknown key fails when the config is built, naming the key;
- a fresh run refuses a non-empty or unwritable ``output_dir`` (before any model loads); ``overwrite_output_dir``
  replaces the old run's checkpoints and metrics;
- ``metrics.jsonl`` has one line per logged step with a finite ``loss`` and the loss's TRL-named metrics
  (``rewards/chosen``, ``rewards/accuracies``, ...);
- at step 0 the policy is its reference (a fresh LoRA or a frozen copy), so the first logged loss is the loss at zero
  log-ratios: ln 2 for the sigmoid loss;
- the final folder loads with the ecosystem's API (PEFT adapter, diffusers LoRA through ``pipe.load_lora_weights``,
  ``from_pretrained``) into the model as trained, and the resolved config is written beside it and beside every
  checkpoint;
- one optimizer step over a batch of 4 equals 4 accumulated micro-batches of 1;
- a run killed after a checkpoint and resumed with ``resume_from: latest`` ends with the weights and logged losses of
  an uninterrupted run, across an epoch boundary with gradient accumulation, and never picks up a half-written
  (``.tmp``) checkpoint;
- a non-finite loss is skipped and counted (``nonfinite_steps``); too many in a row stop the run with an error naming
  the last good checkpoint, and the checkpoint taken at the diverged weights is set aside (``.diverged``).

A family subclass supplies the hooks below; a promise that does not apply to a family is listed in
``NOT_APPLICABLE`` with the reason (reported as a skip).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from visalign.config_io import ConfigError, load_config

#: A model path that does not exist: a trainer that got as far as loading it would fail with another error.
NO_SUCH_MODEL = "/nonexistent/visalign-model"
#: Settings of every contract run: a constant learning rate and one metrics line per step.
COMMON = dict(lr_scheduler="constant", logging_steps=1, save_steps=0)
TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected")


@dataclass
class FinishedRun:
    trainer: Any
    output_dir: Path
    initial_outputs: torch.Tensor
    result: dict[str, float]


def _not_applicable(reason: str):
    @pytest.mark.skip(reason=reason)
    def test(self):
        pass

    return test


def logged(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


class TrainerContract:
    """Mixin: a subclass provides ``make_config``, ``make_trainer``, ``load_saved`` and ``outputs``."""

    #: Metric names every logged training step carries.
    METRICS: tuple[str, ...] = TRL_METRICS
    #: The loss at step 0, when every log-ratio is 0 (sigmoid: ln 2); a reference-free loss has none and lists
    #: ``test_the_first_loss_is_the_loss_at_zero_log_ratios`` in ``NOT_APPLICABLE``.
    STEP_ZERO_LOSS: float = math.log(2.0)
    STEP_ZERO_ATOL: float = 1e-6
    #: The reference strategy the family resolves for ``make_config``'s defaults (written in ``config.yaml``).
    REFERENCE: str = "disable_adapter"
    #: Examples per micro-batch in the resume run; the data holds ``4 * BATCH`` examples (2 steps per epoch).
    BATCH: int = 1
    LEARNING_RATE: float = 1e-2
    #: Largest difference allowed between resumed and uninterrupted weights, and between accumulated and batched
    #: updates (a fraction of the largest update).
    RESUME_ATOL: float = 0.0
    ACCUMULATION_RTOL: float = 1e-5
    #: ``{test name: reason}`` for promises that do not apply to the family.
    NOT_APPLICABLE: dict[str, str] = {}

    # ------------------------------------------------------------------ family hooks
    def make_config(self, output_dir: Path, **overrides):
        """The family's config for a tiny run writing to ``output_dir`` (model, data and any method settings)."""
        raise NotImplementedError

    def make_trainer(self, config):
        """The family's trainer on ``config``, its data holding exactly ``4 * BATCH`` examples; the model comes from
        ``config.model``."""
        raise NotImplementedError

    def load_saved(self, output_dir: Path) -> torch.nn.Module:
        """The final model in ``output_dir`` read back with the ecosystem's own API."""
        raise NotImplementedError

    def outputs(self, model: torch.nn.Module) -> torch.Tensor:
        """The model's output on a fixed input (no grad, eval mode), for the trained and the loaded model alike."""
        raise NotImplementedError

    def trained_model(self, trainer) -> torch.nn.Module:
        return trainer.accelerator.unwrap_model(trainer.model)

    def trained_parameters(self, trainer) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trained_model(trainer).named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------ helpers
    def __init_subclass__(cls, **kwargs):
        """Each test in ``NOT_APPLICABLE`` becomes a skip with its reason, before any fixture (a run) is set up."""
        super().__init_subclass__(**kwargs)
        for name, reason in cls.NOT_APPLICABLE.items():
            if not (name.startswith("test_") and callable(getattr(cls, name, None))):
                raise TypeError(f"{cls.__name__}.NOT_APPLICABLE names {name!r}, which is not one of its tests")
            setattr(cls, name, _not_applicable(f"not applicable to {cls.__name__}: {reason}"))

    def config(self, output_dir: Path, **overrides):
        return self.make_config(output_dir, **{**COMMON, "learning_rate": self.LEARNING_RATE, **overrides})

    def train(self, output_dir: Path, **overrides):
        trainer = self.make_trainer(self.config(output_dir, **overrides))
        trainer.train()
        return trainer

    @pytest.fixture(scope="class")
    @classmethod
    def finished_run(cls, tmp_path_factory) -> FinishedRun:
        """Two steps of 2·BATCH examples, a checkpoint each, over the leftovers of an older run (overwritten)."""
        self = cls()
        out = tmp_path_factory.mktemp("finished") / "run"
        (out / "checkpoints" / "checkpoint-99").mkdir(parents=True)
        (out / "checkpoints" / "checkpoint-99" / "trainer_state.json").write_text('{"step": 99}')
        (out / "metrics.jsonl").write_text('{"step": 99, "loss": 0.0}\n')
        trainer = self.make_trainer(self.config(out, max_steps=2, save_steps=1, per_device_batch_size=2 * self.BATCH,
                                                overwrite_output_dir=True))
        initial = self.outputs(self.trained_model(trainer))
        result = trainer.train()
        return FinishedRun(trainer, out, initial, result)

    # ------------------------------------------------------------------ configs and output folders
    def test_bad_values_and_unknown_keys_fail_naming_the_key(self, tmp_path):
        cls = type(self.config(tmp_path))
        for overrides, pattern in (
            ({"learning_rat": "1e-3"}, rf"unknown key 'learning_rat' for {cls.__name__}; did you mean 'learning_rate'"),
            ({"learning_rate": "-1"}, r"learning_rate must be > 0; got -1"),
            ({"beta": "0"}, r"beta must be > 0"),
            ({"per_device_batch_size": "many"}, r"key 'per_device_batch_size'"),
            ({"loss_type": "sigmoidd"}, r"unknown loss 'sigmoidd'"),
        ):
            with pytest.raises(ConfigError, match=pattern):
                load_config(cls, None, {"model": NO_SUCH_MODEL, **overrides})

    def test_a_fresh_run_refuses_a_non_empty_output_dir_before_any_model_loads(self, tmp_path):
        out = tmp_path / "run"
        (out / "checkpoints").mkdir(parents=True)
        (out / "README.md").write_text("another run")
        config = self.config(out, model=NO_SUCH_MODEL, max_steps=1)
        with pytest.raises(ConfigError, match=r"output_dir '.*run' is not empty \(holds README.md, checkpoints\).*"
                                              r"--overwrite_output_dir"):
            self.make_trainer(config)

    def test_an_unwritable_output_dir_fails_before_any_model_loads(self, tmp_path):
        (tmp_path / "file").write_text("")
        config = self.config(tmp_path / "file" / "run", model=NO_SUCH_MODEL, max_steps=1)
        with pytest.raises(ConfigError, match=r"output_dir '.*file/run' is not writable .*a writable --output_dir"):
            self.make_trainer(config)

    def test_overwrite_output_dir_replaces_the_old_runs_checkpoints_and_metrics(self, finished_run):
        out = finished_run.output_dir
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
        assert [line["step"] for line in logged(out)] == [1, 2]

    def test_metrics_jsonl_has_finite_losses_under_trl_names(self, finished_run):
        for line in logged(finished_run.output_dir):
            assert math.isfinite(line["loss"]), line
            assert set(self.METRICS) <= set(line), f"missing {set(self.METRICS) - set(line)} at step {line['step']}"
            assert line["nonfinite_steps"] == 0.0 and line["learning_rate"] == self.LEARNING_RATE
        assert finished_run.result["train_steps"] == 2.0 and finished_run.result["nonfinite_steps"] == 0.0
        assert math.isfinite(finished_run.result["train_loss"])

    def test_the_first_loss_is_the_loss_at_zero_log_ratios(self, finished_run):
        """The first step's loss is computed before any update, with the policy equal to its reference."""
        first = logged(finished_run.output_dir)[0]
        assert first["loss"] == pytest.approx(self.STEP_ZERO_LOSS, abs=self.STEP_ZERO_ATOL)
        if "rewards/margins" in first:
            assert abs(first["rewards/margins"]) <= self.STEP_ZERO_ATOL

    def test_the_final_folder_loads_with_the_ecosystem_api_as_trained(self, finished_run):
        trained = self.outputs(self.trained_model(finished_run.trainer))
        loaded = self.outputs(self.load_saved(finished_run.output_dir))
        assert (trained - finished_run.initial_outputs).abs().max() > 1e-4  # training changed the model ...
        torch.testing.assert_close(loaded, trained, rtol=1e-4, atol=1e-5)  # ... and the saved folder holds that

    def test_the_resolved_config_is_written_beside_the_model_and_every_checkpoint(self, finished_run):
        out, args = finished_run.output_dir, finished_run.trainer.args
        for folder in (out, out / "checkpoints" / "checkpoint-1", out / "checkpoints" / "checkpoint-2"):
            saved = load_config(type(args), folder / "config.yaml")
            assert saved.reference == self.REFERENCE, folder
            assert (saved.method, saved.loss_type, saved.beta) == (args.method, args.loss_type, args.beta), folder

    # ------------------------------------------------------------------ training equivalences
    def test_a_batch_of_4_equals_4_accumulated_micro_batches_of_1(self, tmp_path):
        """One step over the 4 examples; Adam with ε = 1 makes the first update ~lr·g (the default ε makes it
        ~lr·sign(g), which turns float rounding of tiny gradients into full-size differences), and no clipping (which
        would hide a wrongly scaled accumulated gradient)."""
        common = dict(max_steps=1, adam_epsilon=1.0, learning_rate=1.0, max_grad_norm=None,
                      lora_dropout=0.0)  # dropout would draw differently for the two layouts
        updates = []
        for name, batch, accumulation in (("batch", 4, 1), ("accumulated", 1, 4)):
            trainer = self.make_trainer(self.config(tmp_path / name, per_device_batch_size=batch,
                                                    gradient_accumulation_steps=accumulation, **common))
            before = self.trained_parameters(trainer)
            trainer.train()
            after = self.trained_parameters(trainer)
            updates.append({n: after[n] - before[n] for n in before})
        batched, accumulated = updates
        largest = max(u.abs().max().item() for u in batched.values())
        assert largest > 1e-4
        for name, update in batched.items():
            torch.testing.assert_close(accumulated[name], update, rtol=0, atol=self.ACCUMULATION_RTOL * largest,
                                       msg=name)

    def test_a_killed_and_resumed_run_ends_as_an_uninterrupted_one(self, tmp_path):
        """2 steps per epoch (4·BATCH examples, BATCH per micro-batch, 2 micro-batches per step), 6 steps, a checkpoint
        every 3. A run killed while it saved checkpoint-6 leaves checkpoint-3 (mid-epoch 1), a half-written
        checkpoint-6.tmp (here complete, only its rename missing) and the metrics of steps 1-6: resumed with
        ``resume_from: latest`` it restarts from checkpoint-3, logs steps 4-6 again (once) and ends as the uninterrupted
        run, in weights and in every logged loss."""
        common = dict(per_device_batch_size=self.BATCH, gradient_accumulation_steps=2, save_steps=3, max_steps=6)
        straight_dir, out = tmp_path / "straight", tmp_path / "killed"
        straight = self.train(straight_dir, **common)
        checkpoints = out / "checkpoints"
        shutil.copytree(straight_dir / "checkpoints" / "checkpoint-3", checkpoints / "checkpoint-3")
        shutil.copytree(straight_dir / "checkpoints" / "checkpoint-6", checkpoints / "checkpoint-6.tmp")
        shutil.copy(straight_dir / "metrics.jsonl", out / "metrics.jsonl")
        resumed = self.train(out, resume_from="latest", **common)
        assert resumed.resumed_from == checkpoints / "checkpoint-3"
        expected = self.trained_parameters(straight)
        for name, value in self.trained_parameters(resumed).items():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=self.RESUME_ATOL, msg=name)
        lines = [logged(straight_dir), logged(out)]
        assert [[line["step"] for line in run] for run in lines] == [list(range(1, 7))] * 2
        np.testing.assert_allclose([line["loss"] for line in lines[1]], [line["loss"] for line in lines[0]],
                                   rtol=1e-6)

    # ------------------------------------------------------------------ divergence
    def test_non_finite_steps_are_skipped_counted_and_stop_the_run_keeping_the_last_good_checkpoint(self, tmp_path):
        """Warmup from 0 to a learning rate of 1e30: step 1 leaves the weights as they are (checkpoint-1, good),
        step 2 blows them up (checkpoint-2 holds them), steps 3 and 4 are non-finite; max_nonfinite_steps 1."""
        out = tmp_path / "run"
        trainer = self.make_trainer(self.config(out, learning_rate=1e30, lr_scheduler="constant_with_warmup",
                                                warmup_steps=2, max_steps=10, save_steps=1, max_nonfinite_steps=1,
                                                per_device_batch_size=self.BATCH))
        checkpoints = out / "checkpoints"
        with pytest.raises(RuntimeError, match=re.escape("max_nonfinite_steps=1") + ".*last good checkpoint is "
                           + re.escape(str(checkpoints / "checkpoint-1"))):
            trainer.train()
        assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2.diverged"]
        lines = logged(out)
        assert [line["step"] for line in lines] == [1, 2, 3]
        assert [line["nonfinite_steps"] for line in lines] == [0.0, 0.0, 1.0]
        assert ["loss" in line for line in lines] == [True, True, False]  # a skipped step logs no loss
