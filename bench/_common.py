"""Shared helpers of the trainer benchmarks (``bench/text_dpo.py``, ``bench/vlm_dpo.py``): step timing, peak memory,
the machine line and the results table.

Throughput: the wall-clock time between the end of the last warm-up optimizer step and the end of the last step,
so data loading, logging and every per-step overhead of each trainer count, and start-up does not.

Peak memory: a separate, untimed run of each case, from the trainer's construction (the policy copy, the reference
copy, tokenization and any precompute pass happen inside the window) through its steps. On CUDA
``torch.cuda.max_memory_allocated`` minus what was allocated before. On CPU there is no allocator counter, so the run
(construction + warm-up + 1 step) executes under ``torch.profiler`` with ``profile_memory=True``: every allocation
and free of torch's CPU allocator is an event, and the peak of their running sum is the peak tensor memory the run
added (weights, gradients, optimizer state, activations, batches; Python objects are not counted). The same
accounting applies to every row, so the ratios compare like with like; RSS is not used because glibc keeps freed
memory of one run mapped and would bias whichever run comes second in the process.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile

MIB = 2**20


@dataclass
class StepClock:
    """End times of optimizer steps (``tick`` after each); ``steps_per_second(warmup)`` skips the warm-up steps."""

    ends: list[float] = field(default_factory=list)

    def tick(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def timed_seconds(self, warmup: int) -> float:
        if len(self.ends) <= warmup or warmup < 1:
            raise ValueError(f"need at least one warm-up step and one timed step; got {len(self.ends)} steps, "
                             f"warmup={warmup}")
        return self.ends[-1] - self.ends[warmup - 1]

    def steps_per_second(self, warmup: int) -> float:
        return (len(self.ends) - warmup) / self.timed_seconds(warmup)


def timed_trainer_class(base: type) -> type:
    """A subclass of a visalign trainer that records optimizer-step end times in ``self.clock`` and the duration of
    ``prepare_reference`` (the one-off precompute pass for ``reference: precomputed``) in ``self.reference_seconds``.
    """

    class Timed(base):
        def prepare_reference(self) -> None:
            self.clock = StepClock()
            start = time.perf_counter()
            super().prepare_reference()
            self.reference_seconds = time.perf_counter() - start

        def _optimizer_step(self, stream):
            out = super()._optimizer_step(stream)
            self.clock.tick()
            return out

    Timed.__name__ = Timed.__qualname__ = f"Timed{base.__name__}"
    return Timed


def trl_step_callback(clock: StepClock):
    """A transformers ``TrainerCallback`` that ticks ``clock`` at every optimizer step end."""
    from transformers import TrainerCallback

    class _Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    return _Tick()


def peak_memory_mib(run: Callable[[], object], device: torch.device) -> float:
    """Peak tensor memory (MiB) that ``run()`` adds on ``device`` (module docstring: CUDA counter / CPU profiler)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / MIB
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / MIB


def machine_line(device: torch.device) -> str:
    """CPU/GPU, torch threads and the 1-minute load average (the machine may be shared)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return (f"device {device} ({where}); {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
            f"load average {load:.2f}; torch {torch.__version__}")


@dataclass
class Row:
    """One line of the results table."""

    name: str
    rate: float  #: throughput in the table's unit (steps/s, pairs/s)
    peak_mib: float
    note: str = ""


def format_table(rows: list[Row], peer: str, *, unit: str = "steps/s", versus: str = "vs peer") -> str:
    """The rows with throughput (``unit``) and memory as ratios against the row named ``peer``."""
    base = next(r for r in rows if r.name == peer)
    width = max(len(r.name) for r in rows) + 2
    lines = [f"{'run':<{width}}{unit:>9}{versus:>9}{'peak MiB':>10}{versus:>9}  note"]
    for r in rows:
        lines.append(f"{r.name:<{width}}{r.rate:>9.3f}{r.rate / base.rate:>8.2f}x"
                     f"{r.peak_mib:>10.1f}{r.peak_mib / base.peak_mib:>8.2f}x  {r.note}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# running both trainers on one setup


@dataclass(frozen=True)
class Case:
    """One run of the table: ``trainer`` is ``"trl"`` or ``"ours"``; ``precompute`` picks the precomputed reference
    (TRL ``precompute_ref_log_probs``, ours ``reference: precomputed``), else a frozen in-memory copy."""

    name: str
    trainer: str
    precompute: bool = False


@dataclass
class Setup:
    """What a bench supplies: a template model (deep-copied for every run, so every run starts from the same weights),
    its tokenizer or processor, a factory of fresh training datasets (a new object per run, so no run reads another's
    cache), our trainer and config classes, and the keyword our trainer takes the processor under."""

    model: torch.nn.Module
    processor: object
    make_dataset: Callable[[], object]
    ours_trainer: type
    ours_config: type
    processor_kwarg: str
    ours_extra: dict = field(default_factory=dict)
    cases: tuple[Case, ...] = ()


@dataclass(frozen=True)
class Options:
    """Settings shared by every run (the same optimizer, learning rate, precision and accumulation for both)."""

    batch_size: int
    steps: int
    warmup: int
    grad_accum: int = 1
    learning_rate: float = 1e-6
    precision: str = "no"
    beta: float = 0.1
    max_length: int | None = 1024
    logging_steps: int = 10
    repeats: int = 1
    device: str = "cpu"

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps


def _trl_trainer_class():
    import trl

    class TimedTRL(trl.DPOTrainer):
        reference_seconds = 0.0

        def _precompute_ref_logps(self, *args, **kwargs):
            start = time.perf_counter()
            out = super()._precompute_ref_logps(*args, **kwargs)
            self.reference_seconds += time.perf_counter() - start
            return out

    return trl, TimedTRL


def run_case(setup: Setup, case: Case, opts: Options, workdir: str, steps: int):
    """Build the trainer of ``case`` (a fresh copy of the model and data) and train ``steps`` optimizer steps;
    returns the trainer (``.clock`` holds the step end times, ``.reference_seconds`` the precompute pass)."""
    import copy
    import tempfile

    model, processor = copy.deepcopy(setup.model), copy.deepcopy(setup.processor)
    out_dir = tempfile.mkdtemp(prefix=f"{case.trainer}-", dir=workdir)
    if case.trainer == "trl":
        trl, cls = _trl_trainer_class()
        args = trl.DPOConfig(
            output_dir=out_dir, per_device_train_batch_size=opts.batch_size, per_device_eval_batch_size=opts.batch_size,
            gradient_accumulation_steps=opts.grad_accum, max_steps=steps, learning_rate=opts.learning_rate,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            bf16=opts.precision == "bf16", fp16=opts.precision == "fp16", use_cpu=opts.device == "cpu",
            gradient_checkpointing=False, report_to="none", logging_steps=opts.logging_steps, save_strategy="no",
            beta=opts.beta, max_length=opts.max_length, seed=0, dataloader_num_workers=0,
            precompute_ref_log_probs=case.precompute, precompute_ref_batch_size=opts.batch_size,
        )
        clock = StepClock()
        trainer = cls(model=model, ref_model=None if case.precompute else copy.deepcopy(model), args=args,
                      train_dataset=setup.make_dataset(), processing_class=processor,
                      callbacks=[trl_step_callback(clock)])
        trainer.clock = clock
    else:
        os.environ["VISALIGN_CACHE"] = tempfile.mkdtemp(prefix="cache-", dir=workdir)  # no reuse across runs
        args = setup.ours_config(
            output_dir=out_dir, per_device_batch_size=opts.batch_size, gradient_accumulation_steps=opts.grad_accum,
            max_steps=steps, learning_rate=opts.learning_rate, lr_scheduler="constant", weight_decay=0.0,
            max_grad_norm=1.0, mixed_precision=opts.precision, beta=opts.beta, max_length=opts.max_length,
            reference="precomputed" if case.precompute else "frozen_copy", precompute_ref_batch_size=opts.batch_size,
            save_steps=0, logging_steps=opts.logging_steps, seed=0, **setup.ours_extra,
        )
        trainer = timed_trainer_class(setup.ours_trainer)(
            model=model, args=args, train_dataset=setup.make_dataset(), **{setup.processor_kwarg: processor}
        )
    trainer.train()
    return trainer


def run_bench(setup: Setup, opts: Options) -> list[Row]:
    """Every case of ``setup``: ``opts.repeats`` interleaved timed runs (median steps/s) and one peak-memory run.

    The ``note`` of a precomputed row gives the one-off pass and the throughput over one epoch including it (the data
    set holds exactly ``total_steps`` optimizer steps, so the pass covers what the timed runs train on).
    """
    import statistics
    import tempfile

    device = torch.device(opts.device)
    speeds: dict[str, list[float]] = {c.name: [] for c in setup.cases}
    precompute: dict[str, list[float]] = {c.name: [] for c in setup.cases}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(opts.repeats):
            for case in setup.cases:
                trainer = run_case(setup, case, opts, workdir, opts.total_steps)
                speeds[case.name].append(trainer.clock.steps_per_second(opts.warmup))
                precompute[case.name].append(getattr(trainer, "reference_seconds", 0.0))
                del trainer
        memory = {}
        for case in setup.cases:
            steps = min(opts.total_steps, opts.warmup + 1) if device.type == "cpu" else opts.total_steps
            memory[case.name] = peak_memory_mib(lambda: run_case(setup, case, opts, workdir, steps), device)
    rows = []
    for case in setup.cases:
        sps = statistics.median(speeds[case.name])
        note = "" if opts.repeats == 1 else f"runs: {', '.join(f'{s:.3f}' for s in speeds[case.name])}"
        if case.precompute:
            pass_s = statistics.median(precompute[case.name])
            epoch = opts.total_steps / (pass_s + opts.total_steps / sps)
            note = f"one-off pass {pass_s:.1f}s; incl. it over 1 epoch: {epoch:.3f} steps/s; {note}".rstrip("; ")
        rows.append(Row(case.name, sps, memory[case.name], note))
    return rows


# ----------------------------------------------------------------------------------------------------------
# command line and report


def parse_args(argv: list[str] | None, doc: str):
    """The flags every trainer bench takes; size defaults (None here) come from the bench's FULL/QUICK table."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--steps", type=int, help="timed optimizer steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, help="warm-up optimizer steps excluded from timing (>= 1)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--batch-size", type=int, help="pairs per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved timed runs per case (median reported)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a ~30 s smoke run")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"  # our trainer's Accelerator; TRL gets use_cpu=True
    elif not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def options(args, sizes: dict, **fixed) -> Options:
    """``Options`` from the parsed flags, falling back to ``sizes`` (the bench's FULL or QUICK table)."""
    return Options(
        batch_size=args.batch_size or sizes["batch_size"], steps=args.steps or sizes["steps"],
        warmup=args.warmup or sizes["warmup"], grad_accum=args.grad_accum, precision=args.precision,
        repeats=args.repeats, device=args.device, **fixed,
    )


def report(rows: list[Row], desc: str, opts: Options, *, peer: str, live: str, precomputed: str) -> str:
    """Machine line, setup, the table, and the two headline ratios."""
    by_name = {r.name: r for r in rows}
    ours, pre, base = by_name[live], by_name[precomputed], by_name[peer]
    return "\n".join([
        machine_line(torch.device(opts.device)), desc, "",
        format_table(rows, peer), "",
        f"visalign / TRL (frozen reference copy): {ours.rate / base.rate:.2f}x steps/s at "
        f"{ours.peak_mib / base.peak_mib:.2f}x peak memory",
        f"visalign precomputed / visalign frozen_copy: {pre.rate / ours.rate:.2f}x steps/s excluding "
        "the one-off pass (including it: see the note)",
    ])
