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

Every bench (these two, ``scoring.py``, ``diffusion_dpo.py``) also uses the device helpers below: ``--device``,
``--precision``, ``--gpu`` and ``--json`` (:func:`add_device_args`), CUDA synchronisation around timed regions only
when the device is CUDA (:func:`synchronize`), peak CUDA memory beside RSS (:func:`cuda_peak_mib`, :func:`rss_mib`),
the GPU's name, driver and torch/CUDA versions (:func:`machine_line`), FLOPs counted on the meta device
(:func:`count_flops`) read as model FLOPs utilisation against the card's dense bf16 peak (:data:`PEAK_BF16_TFLOPS`),
and one JSON result per bench (:func:`bench_result`) that ``run_all.py`` gathers.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile

MIB = 2**20
GIB = 2**30
#: Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by a substring of ``torch.cuda.get_device_name``; the first
#: match wins (NVIDIA data sheets: H100/H200 SXM 989, H100 PCIe 756, A100 312).
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


# ----------------------------------------------------------------------------------------------------------
# device, precision, timing and memory on any device (every bench)


def add_device_args(parser, *, precision_help: str = "mixed precision of the trained / scored model") -> None:
    """``--device``, ``--precision``, ``--gpu`` (the bench's GPU-sized preset) and ``--json`` (write the result)."""
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="no", choices=("no", "bf16", "fp16"), help=precision_help)
    parser.add_argument("--gpu", action="store_true",
                        help="GPU-sized preset (real model shapes, random weights built on the device); needs "
                             "--device cuda")
    parser.add_argument("--json", metavar="PATH", help="also write the result (rows, ratios, FLOPs) as JSON here")


def check_device_args(parser, args) -> torch.device:
    """The device of ``args`` after checking it exists and that ``--gpu`` is not combined with ``--quick`` or the
    CPU; sets ``ACCELERATE_USE_CPU`` on the CPU (for the trainers' ``Accelerator``)."""
    if args.gpu and getattr(args, "quick", False):
        parser.error("--gpu and --quick are exclusive: pick the GPU-sized or the tiny preset")
    if args.gpu and args.device != "cuda":
        parser.error("--gpu sizes the bench for a GPU (minutes of work there, hours here); add --device cuda")
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    elif not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    return torch.device(args.device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only: no CUDA call on the CPU path)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_cuda_peak(device: torch.device) -> None:
    """Start a new peak-memory window on CUDA (per row); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mib(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` since the last :func:`reset_cuda_peak` (MiB); ``None`` on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / MIB


def rss_mib() -> float:
    """The process's resident-set high-water mark (MiB; ``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class StepClock:
    """End times of optimizer steps (``tick`` after each); ``steps_per_second(warmup)`` skips the warm-up steps.
    On CUDA each tick first waits for the queued kernels, so a step ends when its work does."""

    ends: list[float] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def tick(self) -> None:
        synchronize(self.device)
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
            self.clock = StepClock(device=self.accelerator.device)
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


def gpu_driver() -> str:
    """The NVIDIA driver version from ``nvidia-smi`` (torch does not expose it), or ``"unknown"``."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def machine_line(device: torch.device) -> str:
    """CPU/GPU, torch threads and the 1-minute load average (the machine may be shared); on CUDA also the GPU's
    name, memory, driver and torch's CUDA/cuDNN versions."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    line = (f"device {device} ({where}); {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
            f"load average {load:.2f}; torch {torch.__version__}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        line += (f"; CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, driver {gpu_driver()}; "
                 f"{props.total_memory / GIB:.0f} GiB, {props.multi_processor_count} SMs; dense bf16 peak "
                 f"{peak_tflops(device) or 'unknown'} TFLOP/s")
    return line


# ----------------------------------------------------------------------------------------------------------
# FLOPs on the meta device and model FLOPs utilisation


def peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of ``device`` from :data:`PEAK_BF16_TFLOPS`; ``None`` on the CPU or an unlisted card."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of ``run()`` (forward, and backward where it calls one) by ``torch.utils.flop_counter.FlopCounterMode``.
    Build the model and inputs under ``torch.device("meta")`` for real sizes: shapes only, no memory, no compute."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


@dataclass(frozen=True)
class TrainFlops:
    """Model FLOPs of one unit (pair, image) of a training step: the policy forward + backward and one forward
    (the live reference's); a row's figure is ``policy + reference`` if it runs a reference forward each step."""

    policy: float
    forward: float

    def per_unit(self, live_reference: bool) -> float:
        return self.policy + (self.forward if live_reference else 0.0)


def train_flops(model: torch.nn.Module, loss: Callable[[torch.nn.Module], torch.Tensor]) -> TrainFlops:
    """:class:`TrainFlops` of ``loss(model)`` (one unit's forward, reduced to a scalar), counted once without and once
    with ``backward`` (only ``model``'s trainable parameters get gradients, so LoRA's frozen base is counted as
    autograd runs it)."""
    with torch.no_grad():
        forward = count_flops(lambda: loss(model))
    policy = count_flops(lambda: loss(model).backward())
    return TrainFlops(float(policy), float(forward))


def weights_gib(model: torch.nn.Module, *, optimizer_states: int = 2) -> dict[str, float]:
    """Real-size memory of ``model``'s tensors, from shapes (meta-safe): the weights in their dtype, and for the
    trainable parameters their fp32 gradients and ``optimizer_states`` fp32 AdamW moments."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"params_b": sum(p.numel() for p in params) / 1e9, "trainable_b": trainable / 1e9,
            "weights_gib": sum(p.numel() * p.element_size() for p in params) / GIB,
            "grads_optimizer_gib": trainable * 4 * (1 + optimizer_states) / GIB}


def flops_line(flops: float, unit: str, memory: dict[str, float] | None = None) -> str:
    """One line: model FLOPs per unit and, where given, the real-size memory of :func:`weights_gib`."""
    line = f"model FLOPs per {unit} (FlopCounterMode, meta device): {flops / 1e12:.4g} TFLOP"
    if memory:
        line += (f"; {memory['params_b']:.3g}B params ({memory['trainable_b']:.3g}B trained): weights "
                 f"{memory['weights_gib']:.2f} GiB, fp32 grads + AdamW {memory['grads_optimizer_gib']:.2f} GiB")
    return line


def mfu(rate: float, flops_per_unit: float | None, device: torch.device) -> float | None:
    """Model FLOPs utilisation: ``rate`` units/s × FLOPs per unit over the card's dense bf16 peak (``None`` where
    either is unknown, e.g. on the CPU)."""
    peak = peak_tflops(device)
    if peak is None or flops_per_unit is None:
        return None
    return rate * flops_per_unit / (peak * 1e12)


@dataclass
class Row:
    """One line of the results table."""

    name: str
    rate: float  #: throughput in the table's unit (steps/s, pairs/s)
    peak_mib: float
    note: str = ""
    flops: float | None = None  #: model FLOPs per unit of ``rate`` (per step for steps/s), real size, meta device
    rss_mib: float | None = None  #: the process's RSS high-water mark after the row (beside the CUDA peak)


def format_table(rows: list[Row], peer: str, *, unit: str = "steps/s", versus: str = "vs peer",
                 device: torch.device | None = None) -> str:
    """The rows with throughput (``unit``) and memory as ratios against the row named ``peer``; on CUDA also each
    row's RSS, model TFLOP per unit, achieved TFLOP/s and MFU against the card's bf16 peak."""
    base = next(r for r in rows if r.name == peer)
    width = max(len(r.name) for r in rows) + 2
    gpu = device is not None and device.type == "cuda"
    extra = f"{'RSS MiB':>10}{'TFLOP/u':>9}{'TFLOP/s':>9}{'MFU':>7}" if gpu else ""
    lines = [f"{'run':<{width}}{unit:>9}{versus:>9}{'peak MiB':>10}{versus:>9}{extra}  note"]
    for r in rows:
        cells = ""
        if gpu:
            util = mfu(r.rate, r.flops, device)
            cells = (f"{_num(r.rss_mib, '10.1f')}{_num(r.flops and r.flops / 1e12, '9.3f')}"
                     f"{_num(r.flops and r.rate * r.flops / 1e12, '9.1f')}{_num(util and 100 * util, '6.1f')}%")
        lines.append(f"{r.name:<{width}}{r.rate:>9.3f}{r.rate / base.rate:>8.2f}x"
                     f"{r.peak_mib:>10.1f}{r.peak_mib / base.peak_mib:>8.2f}x{cells}  {r.note}")
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    width = spec.split(".")[0]
    return f"{'-':>{width}}" if value is None else f"{value:>{spec}}"


def bench_result(bench: str, rows: list[Row], *, peer: str, unit: str, device: torch.device, config: str,
                 ratios: dict[str, float], extra: dict | None = None) -> dict:
    """The JSON form of a bench's table (what ``--json`` writes and ``run_all.py`` gathers): every row with its
    ratios to ``peer``, CUDA peak and RSS, real-size FLOPs and MFU; the headline ``ratios``; the machine."""
    base = next(r for r in rows if r.name == peer)
    out_rows = []
    for r in rows:
        util = mfu(r.rate, r.flops, device)
        measured = math.isfinite(r.peak_mib) and math.isfinite(base.peak_mib)  # NaN: no peak measured (CPU scoring)
        out_rows.append({"name": r.name, "rate": r.rate, "unit": unit, "vs_peer": r.rate / base.rate,
                         "peak_mib": r.peak_mib if measured else None,
                         "peak_vs_peer": r.peak_mib / base.peak_mib if measured else None, "rss_mib": r.rss_mib,
                         "flops_per_unit": r.flops, "tflops_per_s": r.flops and r.rate * r.flops / 1e12,
                         "mfu": util, "note": r.note})
    return {"bench": bench, "device": str(device), "machine": machine_line(device), "config": config, "peer": peer,
            "unit": unit, "rows": out_rows, "ratios": ratios, **(extra or {})}


def write_json(path: str | None, result: dict) -> None:
    """Write ``result`` to ``path`` (``--json``), if given."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


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
    flops: TrainFlops | None = None  #: model FLOPs per optimizer step (all its pairs), real size, meta device


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
        clock = StepClock(device=torch.device(opts.device))
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
                release(device)
        memory, rss = {}, {}
        for case in setup.cases:
            steps = min(opts.total_steps, opts.warmup + 1) if device.type == "cpu" else opts.total_steps
            memory[case.name] = peak_memory_mib(lambda: run_case(setup, case, opts, workdir, steps), device)
            rss[case.name] = rss_mib()
            release(device)
    rows = []
    for case in setup.cases:
        sps = statistics.median(speeds[case.name])
        note = "" if opts.repeats == 1 else f"runs: {', '.join(f'{s:.3f}' for s in speeds[case.name])}"
        if case.precompute:
            pass_s = statistics.median(precompute[case.name])
            epoch = opts.total_steps / (pass_s + opts.total_steps / sps)
            note = f"one-off pass {pass_s:.1f}s; incl. it over 1 epoch: {epoch:.3f} steps/s; {note}".rstrip("; ")
        flops = setup.flops and setup.flops.per_unit(live_reference=not case.precompute)
        rows.append(Row(case.name, sps, memory[case.name], note, flops=flops, rss_mib=rss[case.name]))
    return rows


def release(device: torch.device) -> None:
    """Free what the last run left (garbage, and on CUDA the allocator's cached blocks) before the next one."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------
# command line and report


def parse_args(argv: list[str] | None, doc: str):
    """The flags every trainer bench takes; size defaults (None here) come from the bench's FULL/QUICK table."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--steps", type=int, help="timed optimizer steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, help="warm-up optimizer steps excluded from timing (>= 1)")
    parser.add_argument("--batch-size", type=int, help="pairs per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved timed runs per case (median reported)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a ~30 s smoke run")
    add_device_args(parser)
    args = parser.parse_args(argv)
    check_device_args(parser, args)  # our trainer's Accelerator follows ACCELERATE_USE_CPU; TRL gets use_cpu=True
    return args


def preset(args, *, full: dict, quick: dict, gpu: dict) -> dict:
    """The bench's size table picked by ``--quick`` / ``--gpu`` (else ``full``)."""
    return quick if args.quick else gpu if args.gpu else full


def options(args, sizes: dict, **fixed) -> Options:
    """``Options`` from the parsed flags, falling back to ``sizes`` (the bench's FULL or QUICK table)."""
    return Options(
        batch_size=args.batch_size or sizes["batch_size"], steps=args.steps or sizes["steps"],
        warmup=args.warmup or sizes["warmup"], grad_accum=args.grad_accum, precision=args.precision,
        repeats=args.repeats, device=args.device, **fixed,
    )


def report(bench: str, rows: list[Row], desc: str, opts: Options, *, peer: str, live: str, precomputed: str,
           flops_note: str = "") -> tuple[str, dict]:
    """Machine line, setup, the FLOPs line, the table and the two headline ratios; and the :func:`bench_result`."""
    by_name = {r.name: r for r in rows}
    ours, pre, base = by_name[live], by_name[precomputed], by_name[peer]
    device = torch.device(opts.device)
    ratios = {"ours_vs_trl_rate": ours.rate / base.rate, "ours_vs_trl_memory": ours.peak_mib / base.peak_mib,
              "precomputed_vs_frozen_copy_rate": pre.rate / ours.rate}
    text = "\n".join([
        machine_line(device), desc, *([flops_note] if flops_note else []), "",
        format_table(rows, peer, device=device), "",
        f"visalign / TRL (frozen reference copy): {ratios['ours_vs_trl_rate']:.2f}x steps/s at "
        f"{ratios['ours_vs_trl_memory']:.2f}x peak memory",
        f"visalign precomputed / visalign frozen_copy: {ratios['precomputed_vs_frozen_copy_rate']:.2f}x steps/s "
        "excluding the one-off pass (including it: see the note)",
    ])
    result = bench_result(bench, rows, peer=peer, unit="steps/s", device=device, config=desc, ratios=ratios)
    return text, result
