"""Smoke run of the trainer benchmarks (``bench/text_dpo.py``, ``bench/vlm_dpo.py``, ``bench/diffusion_dpo.py``) in
``--quick`` mode, in-process.

Checks that each bench trains every case to completion and prints a table holding our row and TRL's with finite,
positive numbers; no timing is asserted (timings belong to the bench, not to tests).
"""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers.scripts import load_bench

pytest.importorskip("trl")


@pytest.mark.parametrize("name", ["text_dpo", "vlm_dpo"])
def test_quick_bench_prints_both_rows(name, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VISALIGN_CACHE", str(tmp_path))  # the benches set both; restored after the test
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    bench = load_bench(name)
    rows = bench.main(["--quick"])
    out = capsys.readouterr().out

    names = [row.name for row in rows]
    assert names == [case.name for case in bench.CASES]
    assert any(n.startswith("TRL") for n in names) and any(n.startswith("visalign") for n in names)
    for row in rows:
        assert math.isfinite(row.rate) and row.rate > 0, row
        assert math.isfinite(row.peak_mib) and row.peak_mib > 0, row
        assert row.name in out
    table = out[out.index("run "):].split("\n\n")[0].splitlines()[1:]  # the table: header to the first blank line
    assert [line.split("  ")[0] for line in table] == names


def test_quick_diffusion_bench_prints_every_row(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VISALIGN_CACHE", str(tmp_path))
    bench = load_bench("diffusion_dpo")
    rows = bench.main(["--quick"])
    out = capsys.readouterr().out
    labels = [row.name for row in rows]
    assert [label[:3] for label in labels[:3]] == ["(a)", "(b)", "(c)"] and any("MaPO" in label for label in labels)
    for row in rows:
        assert math.isfinite(row.rate) and row.rate > 0, row
        assert math.isfinite(row.peak_mib), row
        assert row.name in out
    assert "VAE:UNet =" in out


def test_quick_scoring_bench_prints_every_row(capsys):
    bench = load_bench("scoring")
    rows = bench.main(["--quick", "--repeats", "1"])
    out = capsys.readouterr().out
    assert rows[0].name.startswith("PickScore README") and all(r.name.startswith("visalign") for r in rows[1:3])
    assert rows[3].name.startswith("bare compute")
    for row in rows:
        assert len(row.rates) == 1 and math.isfinite(row.rate) and row.rate > 0, row
        assert row.scores.shape == (bench.QUICK["images"],) and row.name in out
    assert "speed-up vs the README loop" in out and "max |score difference|" in out and "the ceiling here" in out


def test_quick_spo_sampling_bench_prints_every_row(capsys):
    bench = load_bench("spo_sampling")
    rows = bench.main(["--quick", "--repeats", "1"])
    out = capsys.readouterr().out
    assert [row.name for row in rows] == ["pipeline DDIM (peer)", "sample_trajectories", "stepwise_pairs (k 2)"]
    for row in rows:
        assert math.isfinite(row.rate) and row.rate > 0 and row.name in out, row
    assert "log-prob bookkeeping:" in out and "of its time" in rows[2].note


def test_run_all_quick_records_results_and_failures(monkeypatch, tmp_path):
    """``run_all.py --quick``: each bench in its own subprocess; one that fails (here text_dpo, given an unknown flag)
    is recorded with its error and the others still run and land in one JSON and one Markdown table."""
    run_all = load_bench("run_all")
    monkeypatch.setitem(run_all.QUICK_FLAGS, "text_dpo", ["--no-such-flag"])
    code = run_all.main(["--quick", "--benches", "text_dpo", "scoring", "--out", str(tmp_path)])

    assert code == 1  # a bench failed
    results = json.loads((tmp_path / "results.json").read_text())
    failed, scoring = results
    assert failed["bench"] == "text_dpo" and "exit 2" in failed["error"]
    assert any("--no-such-flag" in line for line in failed["output_tail"])
    assert scoring["bench"] == "scoring" and scoring["device"] == "cpu" and len(scoring["rows"]) == 4
    for row in scoring["rows"]:
        assert math.isfinite(row["rate"]) and row["rate"] > 0 and row["flops_per_unit"] > 0, row
        assert row["mfu"] is None  # no bf16 peak for a CPU
    table = (tmp_path / "results.md").read_text()
    assert all(f"| scoring | {row['name']} |" in table for row in scoring["rows"])
    assert "**text_dpo failed** (exit 2)" in table
