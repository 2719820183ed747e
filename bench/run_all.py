"""Run every speed bench, one subprocess each, and write one JSON and one Markdown table with every ratio.

One bench failing (an error, an out-of-memory, a time-out) is recorded with the tail of its output and the rest go
on. The whole set sized for one H100 (``--device cuda --gpu``, the default on CUDA) is estimated at ~7 minutes
including start-up (bench/README.md "On a GPU"); on the CPU ``--quick`` runs the same path as a smoke test.

    python bench/run_all.py --device cuda                     # GPU presets, bf16, results in bench-results/
    python bench/run_all.py --quick --out /tmp/bench          # tiny sizes on the CPU (the CI smoke test)
    python bench/run_all.py --device cuda --benches scoring diffusion_dpo
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
#: bench -> extra flags; ``--quick`` keeps the smoke run short (scoring: one repeat)
BENCHES = {"scoring": [], "text_dpo": [], "vlm_dpo": [], "diffusion_dpo": [], "spo_sampling": []}
QUICK_FLAGS = {"scoring": ["--repeats", "1"], "spo_sampling": ["--repeats", "1"]}


def command(name: str, args: argparse.Namespace, json_path: Path) -> list[str]:
    """The command line of bench ``name`` for these options."""
    size = ["--quick"] if args.quick else ["--gpu"] if args.device == "cuda" else []
    return [sys.executable, str(BENCH_DIR / f"{name}.py"), "--device", args.device, "--precision", args.precision,
            *size, *(QUICK_FLAGS.get(name, []) if args.quick else []), *BENCHES[name], "--json", str(json_path)]


def run_one(name: str, args: argparse.Namespace, out: Path) -> dict:
    """Bench ``name`` in its own subprocess; its JSON result, or an error record (exit code, output tail)."""
    json_path, log_path = out / f"{name}.json", out / f"{name}.log"
    json_path.unlink(missing_ok=True)
    cmd = command(name, args, json_path)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code, output = "timeout", f"{err.stdout or ''}{err.stderr or ''}"
        output = output.decode() if isinstance(output, bytes) else output
    wall = time.perf_counter() - start
    log_path.write_text(output)
    print(f"{name}: {'ok' if code == 0 else f'FAILED ({code})'} in {wall:.0f}s (log {log_path})", flush=True)
    if code == 0 and json_path.is_file():
        return {**json.loads(json_path.read_text()), "wall_s": wall}
    tail = output.strip().splitlines()[-15:]
    return {"bench": name, "error": f"exit {code}", "output_tail": tail, "command": cmd, "wall_s": wall}


def markdown(results: list[dict]) -> str:
    """One Markdown table of every row (ratios to each bench's peer, memory, FLOPs, MFU), then the headline ratios
    and the failures."""
    def cell(value, spec):
        return "-" if value is None else format(value, spec)

    lines = ["| bench | run | rate | vs peer | peak MiB | vs peer | RSS MiB | TFLOP/unit | MFU |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for result in results:
        for row in result.get("rows", []):
            lines.append(
                f"| {result['bench']} | {row['name']} | {row['rate']:.3f} {row['unit']} | {row['vs_peer']:.2f}x | "
                f"{cell(row['peak_mib'], '.1f')} | {cell(row['peak_vs_peer'], '.2f')}x | {cell(row['rss_mib'], '.0f')} "
                f"| {cell(row['flops_per_unit'] and row['flops_per_unit'] / 1e12, '.4g')} | "
                f"{cell(row['mfu'] and 100 * row['mfu'], '.1f')}% |")
    lines.append("")
    for result in results:
        if "error" in result:
            lines.append(f"- **{result['bench']} failed** ({result['error']}): `{' | '.join(result['output_tail'][-3:])}`")
        else:
            ratios = ", ".join(f"{key} {value:.3g}" for key, value in result["ratios"].items())
            lines.append(f"- {result['bench']} ({result['wall_s']:.0f} s): {ratios}")
    machines = {r["machine"] for r in results if "machine" in r}
    return "\n".join([*(f"Machine: {m}" for m in sorted(machines)), "", *lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", help="every bench's --precision (default: bf16 on CUDA, no on the CPU)",
                        choices=("no", "bf16", "fp16"))
    parser.add_argument("--quick", action="store_true", help="every bench's tiny --quick sizes (a smoke run)")
    parser.add_argument("--benches", nargs="+", choices=sorted(BENCHES), default=list(BENCHES))
    parser.add_argument("--out", default="bench-results", help="folder for results.json, results.md and the logs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a bench is stopped and recorded")
    args = parser.parse_args(argv)
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "no")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run_one(name, args, out) for name in args.benches]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
