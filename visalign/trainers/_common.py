"""Private helpers shared by every trainer: optimizer and schedule factories, checkpoint I/O, metrics logging.

Checkpoint layout under ``<output_dir>/checkpoints/``: ``checkpoint-<step>/`` holds ``accelerator.save_state``
output (model, optimizer, scheduler, RNG states), ``trainer_state.json`` (with the data source's state), the
resolved ``config.yaml`` and any files the data source keeps (an online source's in-memory round). The model
files hold what training changes only, not the frozen parameters (a LoRA checkpoint is the adapter, not the base
model; :func:`register_trainable_state_hooks`): a resume rebuilds the frozen part from the config's ``model``. A
checkpoint is written as ``checkpoint-<step>.tmp`` and renamed when complete, so an interrupted save leaves only a
``.tmp`` folder, which is never picked up and is removed by the next save of that step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, parse_flag_from_env
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from visalign.config_io import ConfigError, save_config
from visalign.trainers.config import TrainingConfig

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# Parameter names never weight-decayed (as transformers' Trainer): biases and normalisation weights.
_NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------------------
# optimisation


def make_optimizer(
    model: torch.nn.Module, config: TrainingConfig, *, device: torch.device | None = None
) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` over the trainable parameters.

    Weight decay skips biases and norm weights (transformers' ``Trainer`` rule); ``adafactor`` uses a fixed
    learning rate (``relative_step=False``) so the schedule applies. ``adamw`` is torch's fused AdamW (one kernel for
    every parameter; transformers' default ``adamw_torch_fused``) when ``device``, the device training runs on, has
    fused kernels; the same update as the per-parameter loop up to float rounding, several times faster on small and
    medium models.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {"params": [p for n, p in named if not _NO_DECAY.search(n)], "weight_decay": config.weight_decay},
        {"params": [p for n, p in named if _NO_DECAY.search(n)], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    betas = (config.adam_beta1, config.adam_beta2)
    if config.optimizer == "adamw":
        fused = device is not None and device.type in _get_fused_kernels_supported_devices()
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=betas, eps=config.adam_epsilon,
                                 fused=fused or None)
    if config.optimizer == "adamw_8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, lr=config.learning_rate, betas=betas, eps=config.adam_epsilon)
    from transformers.optimization import Adafactor

    return Adafactor(groups, lr=config.learning_rate, scale_parameter=False, relative_step=False, warmup_init=False)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig, total_steps: int):
    """transformers' ``get_scheduler(config.lr_scheduler)``: ``warmup_steps`` of warmup over ``total_steps``."""
    from transformers import get_scheduler  # here, not at import: it loads peft (see config.LR_SCHEDULERS)

    return get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=total_steps
    )


def total_optimizer_steps(config: TrainingConfig, micro_batches_per_epoch: int | None) -> int:
    """``max_steps``, or enough optimizer steps for ``num_epochs`` passes (the last may be partial); data without
    epochs (``None``: an online source drawing several rounds) needs ``max_steps``."""
    if config.max_steps > 0:
        return config.max_steps
    if micro_batches_per_epoch is None:
        raise ConfigError(f"{type(config).__name__}.max_steps must be set (> 0): the training data is drawn in "
                          "rounds and has no epochs for num_epochs to count")
    if micro_batches_per_epoch == 0:
        raise ValueError("the training dataset yields no batch")
    return math.ceil(config.num_epochs * micro_batches_per_epoch / config.gradient_accumulation_steps)


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint, oldest first (``.tmp`` folders are ignored)."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir() and (path / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def prepare_output_dir(config: TrainingConfig, *, is_main_process: bool = True) -> None:
    """Check ``output_dir`` before any model loads: it must be writable (it is created if missing) and, on a fresh
    run (``resume_from`` unset), empty, so another run's checkpoints, model card and metrics are never mixed with this
    run's, unless ``overwrite_output_dir``, which removes the old ``checkpoints/`` and ``metrics.jsonl`` (the rest is
    overwritten when this run saves)."""
    if not is_main_process:
        return
    out = Path(config.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        raise ConfigError(f"output_dir {str(out)!r} is not writable ({exc}); pass a writable --output_dir") from None
    if config.resume_from is not None:
        return
    if not config.overwrite_output_dir:
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            raise ConfigError(
                f"output_dir {str(out)!r} is not empty (holds {', '.join(entries[:5])}"
                f"{', ...' if len(entries) > 5 else ''}): pass an empty or new --output_dir, --resume_from latest to "
                "continue the run there, or --overwrite_output_dir true to replace it")
        return
    if checkpoints_root(out).is_dir():
        shutil.rmtree(checkpoints_root(out))
    (out / METRICS_FILE).unlink(missing_ok=True)


#: Config keys a resumed run may change; each is applied (the learning-rate schedule is re-evaluated at the resumed
#: step from the new config) and logged. Any other change (data, model, LoRA, loss, β, batch layout, ...) is refused.
RESUME_CHANGEABLE = frozenset({
    "output_dir", "resume_from", "overwrite_output_dir", "learning_rate", "lr_scheduler", "warmup_steps",
    "max_steps", "num_epochs", "max_grad_norm", "max_nonfinite_steps", "gradient_checkpointing",
    "dataloader_num_workers", "logging_steps", "save_steps", "save_total_limit", "report_to", "eval_dataset",
    "eval_split", "eval_batch_size", "dataset_num_proc", "precompute_ref_batch_size", "attn_implementation",
    "trust_remote_code", "vae_encode_batch_size", "cache_dir", "validation_prompts", "validation_steps",
    "validation_seed", "validation_inference_steps", "validation_guidance_scale", "sample_batch_size",
    "eval_prompts", "eval_prompts_split", "num_eval_prompts", "eval_seeds", "eval_seed", "bootstrap_resamples",
})


def check_resume_method(saved: dict[str, Any], method: str, checkpoint: Path) -> None:
    """Raise ``ConfigError`` unless ``checkpoint`` (its config ``saved``) was written by a ``method`` run: a text
    checkpoint given to a diffusion run, or DPO resumed as MaPO, is refused (before any model loads)."""
    if saved.get("method") != method:
        raise ConfigError(
            f"{checkpoint} was written by a method {saved.get('method')!r} run, this is a {method!r} run: resume "
            "with the checkpoint's method, or start a fresh run in another --output_dir")


def resume_config_changes(saved: dict[str, Any], current: dict[str, Any], checkpoint: Path) -> dict[str, tuple]:
    """``{key: (checkpoint's value, this run's value)}`` of the keys a resume from ``checkpoint`` changes (keys missing
    on one side, from another visalign version, are not compared). Raises ``ConfigError`` naming every change
    outside :data:`RESUME_CHANGEABLE`, first of all another method (:func:`check_resume_method`)."""
    check_resume_method(saved, current.get("method"), checkpoint)
    changed = {key: (saved[key], current[key]) for key in sorted(saved.keys() & current.keys())
               if saved[key] != current[key]}
    refused = [key for key in changed if key not in RESUME_CHANGEABLE]
    if refused:
        listed = "; ".join(f"{key} {changed[key][0]!r} -> {changed[key][1]!r}" for key in refused)
        raise ConfigError(
            f"cannot resume from {checkpoint} with a changed {listed}: set them back to the checkpoint's values "
            "(its config.yaml), or start a fresh run in another --output_dir")
    return changed


def resolve_resume(output_dir: str | Path, resume_from: str | None) -> Path | None:
    """The checkpoint folder to resume from: ``None``, the newest complete one for ``"latest"`` (``None`` if there is
    none yet, so a preempted job can always pass ``latest``), or an explicit folder (must be complete)."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        found = complete_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume_from)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"resume_from={resume_from!r}: not a complete visalign checkpoint (no {TRAINER_STATE} in it)"
        )
    return path


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | Path, step: int, state: dict[str, Any], config: Any, *,
    write_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically: ``save_state`` into ``checkpoint-<step>.tmp``, add the trainer state, the
    resolved config and what ``write_files(folder)`` writes (the data source's files; main process), then rename.
    Every process must call it (``save_state`` gathers sharded states)."""
    root = checkpoints_root(output_dir)
    final, tmp = root / f"checkpoint-{step}", root / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
        save_config(config, tmp / CONFIG_FILE)
        if write_files is not None:
            write_files(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    accelerator.wait_for_everyone()
    return final


def _frozen_parameters(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if not param.requires_grad}


def register_trainable_state_hooks(accelerator: Accelerator) -> None:
    """Make ``save_state``/``load_state`` skip frozen parameters (plain and DDP runs; FSDP and DeepSpeed save their
    own way): the saved state dict of each prepared model drops them, and loading checks that the file holds exactly
    the trainable parameters and buffers of the model being resumed before loading it (the frozen ones stay as the
    model was loaded)."""

    def drop_frozen(models: list, weights: list, output_dir: str) -> None:
        for i, (model, state) in enumerate(zip(models, weights)):
            frozen = _frozen_parameters(model)
            weights[i] = {key: value for key, value in state.items() if key not in frozen}

    def load_trainable(models: list, input_dir: str) -> None:
        for i, model in enumerate(models):
            path = Path(input_dir) / (f"model_{i}.safetensors" if i else "model.safetensors")
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing from the checkpoint; resume from another checkpoint")
            try:
                state = load_file(path)
            except (SafetensorError, OSError) as err:
                raise ValueError(f"{path} is corrupt ({err}); resume from another checkpoint") from None
            expected = set(model.state_dict()) - _frozen_parameters(model)
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            if missing or unexpected:
                raise ValueError(
                    f"{path} does not hold this run's trainable weights ({len(missing)} missing, e.g. {missing[:3]}; "
                    f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}): resume with the model, LoRA and freezing "
                    "settings the checkpoint was written with"
                )
            model.load_state_dict(state, strict=False)
        models.clear()  # loaded here: accelerate must not load them again (strictly, expecting the frozen weights)

    accelerator.register_save_state_pre_hook(drop_frozen)
    accelerator.register_load_state_pre_hook(load_trainable)


def prune_checkpoints(output_dir: str | Path, keep: int | None) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (nothing when ``keep`` is ``None``)."""
    if keep is None:
        return
    for _, path in complete_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path)


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE).read_text())


# ----------------------------------------------------------------------------------------------------------
# metrics


class MetricsLog:
    """Averages per-step metrics over a logging window, then writes them to ``metrics.jsonl`` and the trackers.

    ``add`` takes one optimizer step's metrics (already averaged over its micro-batches); ``flush`` reduces the
    window's means across processes (one all-reduce), appends a JSON line (main process) and calls
    ``accelerator.log``. Counts (``COUNTS``: already totalled over the processes by the step) are summed over the
    window instead, so ``data/skipped_pairs`` is the number of pairs skipped since the previous line.
    """

    COUNTS = ("data/skipped_pairs",)

    def __init__(self, accelerator: Accelerator, output_dir: str | Path) -> None:
        self.accelerator = accelerator
        self.path = Path(output_dir) / METRICS_FILE
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run re-does those steps), and a torn last line (a write cut
        short by a kill or a full disk; warned about). Any other unreadable line is an error naming it."""
        if not (self.accelerator.is_main_process and self.path.is_file()):
            return
        lines = [line for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                logged_at = record["step"]
            except (ValueError, TypeError, KeyError) as exc:
                if number == len(lines):
                    logger.warning("%s: dropped its torn last line %d (%s)", self.path, number, exc)
                    break
                raise ValueError(f"{self.path}:{number}: not a metrics line ({type(exc).__name__}: {exc}); delete "
                                 "or fix that line, then run again") from None
            if logged_at <= step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._counts[key] = self._counts.get(key, 0) + 1

    def flush(self, step: int, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Log the window's means plus ``extra`` (taken as is) at ``step``; returns what was logged."""
        keys = sorted(self._sums)
        means = {k: self._sums[k] if k in self.COUNTS else self._sums[k] / self._counts[k] for k in keys}
        if keys and self.accelerator.num_processes > 1:
            values = torch.tensor([means[k] for k in keys], device=self.accelerator.device, dtype=torch.float64)
            means = dict(zip(keys, self.accelerator.reduce(values, reduction="mean").tolist()))
        self._sums.clear()
        self._counts.clear()
        return self.write(step, {**means, **(extra or {})})

    def write(self, step: int, record: dict[str, float]) -> dict[str, float]:
        """Append ``record`` at ``step`` to ``metrics.jsonl`` (main process) and the trackers, as is."""
        if self.accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **record}) + "\n")
        self.accelerator.log(record, step=step)
        return record


def weighted_means(rows: Iterable[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Weighted mean per key of ``(weight, metrics)`` rows (keys missing from a row do not count there)."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for weight, metrics in rows:
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + weight * float(value)
            weights[key] = weights.get(key, 0.0) + weight
    return {key: sums[key] / weights[key] for key in sums if weights[key] > 0}


#: The weight dtype of frozen parts under accelerate's ``mixed_precision`` (fp32 otherwise).
MIXED_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def device_mixed_precision(mixed_precision: str) -> tuple[str, str | None]:
    """The mixed precision this process's device computes, decided before any model loads, and the one line saying
    why it differs from ``mixed_precision`` (else ``None``): fp16 on a CPU (every diffusion recipe sets it for GPUs)
    trains in fp32; bf16 on a CPU stays."""
    from accelerate import PartialState

    if mixed_precision != "fp16" or PartialState().device.type != "cpu":
        return mixed_precision, None
    return "no", "mixed_precision fp16 needs a GPU; training on the CPU in fp32 instead (--mixed_precision bf16 for " \
                 "bfloat16 on a CPU)"


def check_distributed_setup(accelerator: Accelerator) -> None:
    """Fail, before any model loads, when ``accelerate launch`` asked for a setup that accelerate did not build.

    accelerate (1.16, ``AcceleratorState``) builds FSDP only on an accelerator device (GPU, NPU, XPU, HPU, ...), even
    given a plugin: on CPUs it drops ``--use_fsdp`` without a word. With ``ACCELERATE_USE_CPU=true`` it runs DDP over
    gloo instead (``--use_deepspeed`` too); without it every launched process trains the whole run alone, all writing
    the same ``output_dir``."""
    setup = accelerator.distributed_type.value
    for flag, wanted in (("ACCELERATE_USE_FSDP", DistributedType.FSDP),
                         ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED)):
        if parse_flag_from_env(flag) and accelerator.distributed_type != wanted:
            raise ConfigError(
                f"the launch asked for {wanted.value} ({flag}=true) but accelerate set up {setup} on "
                f"{accelerator.device.type}: it builds FSDP and DeepSpeed only on GPUs (or NPU/XPU/HPU); on CPUs "
                "launch DDP instead (ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...)")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > accelerator.num_processes:
        raise ConfigError(
            f"{launched} processes were launched (WORLD_SIZE) but accelerate set up {setup} with "
            f"{accelerator.num_processes} process: each would train alone into the same output_dir; on CPUs set "
            "ACCELERATE_USE_CPU=true (accelerate launch --multi_gpu --num_processes N ...)")
