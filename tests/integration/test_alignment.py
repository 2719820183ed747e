"""Diffusion-DPO actually aligns: the reduced alignment bench must raise the shapes reward on held-out prompts and
seeds by more than its bootstrap interval's width (``bench/alignment.py --quick``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench" / "alignment.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_alignment", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reduced_diffusion_dpo_gains_reward_with_an_interval_above_zero(tmp_path, capsys):
    rows = load_bench().main(["--quick", "--workdir", str(tmp_path)])
    assert [row["method"] for row in rows] == ["diffusion-dpo"]
    row = rows[0]
    assert row["reward_after"] - row["reward_before"] == pytest.approx(row["reward_gain"])
    assert row["reward_gain_ci_low"] > 0, f"no significant gain: {row}"
    assert row["win_rate"] > row["loss_rate"]
    assert "| diffusion-dpo |" in capsys.readouterr().out
