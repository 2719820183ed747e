"""Online alignment per wall-clock second: SPO (``spo-shapes``) against on-policy Diffusion-DPO (``onpolicy``).

Both start from ``builtin:shapes-sd`` and the ``shapes`` reward and run their shipped recipe end to end, once per
training seed (``--seed``; the held-out evaluation keeps the recipes' ``eval_seed``, so every run is judged on the
same prompts and image seeds). A row: the gain in the mean ``shapes`` reward on the held-out images with its paired
bootstrap 95% interval over prompts, the wall time of sampling + training (the evaluation excluded: it is the same
work for both), and the gain per wall-clock second. The summary gives each method's mean gain per second over the
seeds and SPO's ratio to Diffusion-DPO's (issue 18's goal: >= 2; the SPO paper reports far more at SD1.5/SDXL scale).

    python bench/online_alignment.py                          # seeds 0 1 2, both recipes (~20 min on 2 idle CPU cores)
    python bench/online_alignment.py --seeds 7 --spo-set step_scorer=step-aware --spo-set step_scorer_model=PATH
    python bench/online_alignment.py --quick                  # tiny sizes, one seed (the CI smoke test)

``--spo-set``/``--dpo-set KEY=VALUE`` override a recipe key (e.g. ``max_steps``, to give both the same budget).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from visalign.config_io import load_config
from visalign.recipes import recipe_file
from visalign.trainers.onpolicy import OnPolicyConfig
from visalign.trainers.onpolicy import run as run_onpolicy
from visalign.trainers.spo import run as run_spo

#: method -> (recipe, run)
ROWS = {"onpolicy-diffusion-dpo": ("onpolicy", run_onpolicy), "spo": ("spo-shapes", run_spo)}
#: --quick: both recipes shrunk to a smoke test (no claim can be read from it)
QUICK = {
    "onpolicy-diffusion-dpo": {"num_prompts": 4, "samples_per_prompt": 2, "max_steps": 2, "per_device_batch_size": 2},
    "spo": {"num_prompts": 4, "prompts_per_round": 2, "max_steps": 2, "per_device_batch_size": 2,
            "spo_threshold": 0.0, "divert_start_step": 1},
}
SHARED_QUICK = {"num_eval_prompts": 2, "eval_seeds": 1, "sample_steps": 3, "bootstrap_resamples": 50}


def recipe_config(recipe: str, overrides: dict) -> OnPolicyConfig:
    """The shipped ``recipe`` with ``overrides``."""
    with recipe_file(recipe) as path:
        return load_config(OnPolicyConfig, path, overrides)


def run_row(method: str, seed: int, overrides: dict, work: Path) -> dict:
    """One end-to-end run of ``method`` with training seed ``seed``; its row."""
    recipe, run = ROWS[method]
    config = recipe_config(recipe, {**overrides, "seed": seed, "output_dir": str(work / f"{method}-seed{seed}")})
    result = run(config)
    wall = result["sample_s"] + result["train_s"]
    return {"method": method, "seed": seed, "reward_before": result["reward_before"],
            "reward_after": result["reward_after"], "reward_gain": result["reward_gain"],
            "reward_gain_ci_low": result["reward_gain_ci_low"], "reward_gain_ci_high": result["reward_gain_ci_high"],
            "win_rate": result["win_rate"], "sample_s": result["sample_s"], "train_s": result["train_s"],
            "wall_s": wall, "gain_per_s": result["reward_gain"] / wall}


def summary(rows: list[dict]) -> dict[str, float]:
    """Each method's mean gain per second over its seeds, and SPO's ratio to on-policy Diffusion-DPO's."""
    means = {method: statistics.fmean(r["gain_per_s"] for r in rows if r["method"] == method)
             for method in ROWS if any(r["method"] == method for r in rows)}
    dpo = means.get("onpolicy-diffusion-dpo")
    ratio = means["spo"] / dpo if "spo" in means and dpo else None
    return {**{f"{method}_gain_per_s": value for method, value in means.items()}, "spo_to_dpo_ratio": ratio}


def format_rows(rows: list[dict], totals: dict) -> str:
    lines = ["| method | seed | reward before -> after | gain [95% CI] | win rate | sample s | train s | gain / s |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seed']} | {r['reward_before']:.4f} -> {r['reward_after']:.4f} | "
                     f"{r['reward_gain']:+.4f} [{r['reward_gain_ci_low']:+.4f}, {r['reward_gain_ci_high']:+.4f}] | "
                     f"{r['win_rate']:.1%} | {r['sample_s']:.0f} | {r['train_s']:.0f} | {r['gain_per_s']:+.2e} |")
    ratio = totals["spo_to_dpo_ratio"]
    lines.append("")
    lines.append("mean gain per second: " + ", ".join(f"{key.removesuffix('_gain_per_s')} {value:+.2e}"
                                                     for key, value in totals.items() if key.endswith("_gain_per_s"))
                 + ("" if ratio is None else f"; SPO / on-policy Diffusion-DPO: {ratio:.2f}x"))
    return "\n".join(lines)


def parse_sets(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"online_alignment: expected KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--spo-set", action="append", default=[], metavar="KEY=VALUE", help="override spo-shapes")
    parser.add_argument("--dpo-set", action="append", default=[], metavar="KEY=VALUE", help="override the onpolicy recipe")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one seed (CI smoke test)")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the rows and the summary as JSON")
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-online-"))
    own = {"spo": parse_sets(args.spo_set), "onpolicy-diffusion-dpo": parse_sets(args.dpo_set)}
    seeds = args.seeds[:1] if args.quick else args.seeds
    rows = []
    for seed in seeds:
        for method in args.methods:
            quick = {**SHARED_QUICK, **QUICK[method]} if args.quick else {}
            rows.append(run_row(method, seed, {**quick, **own[method]}, work))
            print(f"{method} seed {seed}: gain {rows[-1]['reward_gain']:+.4f} in {rows[-1]['wall_s']:.0f} s",
                  flush=True)
    totals = summary(rows)
    print("\n" + format_rows(rows, totals))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": totals}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
