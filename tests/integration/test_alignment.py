"""The alignment bench: every diffusion method's row builds a valid config from the shared settings, and Diffusion-DPO
actually aligns: the reduced bench must raise the shapes reward on held-out prompts and seeds with a bootstrap
interval above zero (``bench/alignment.py --quick``)."""

from __future__ import annotations

import pytest

from tests.helpers.scripts import load_bench


@pytest.mark.parametrize("name", list(load_bench("alignment").METHODS))
def test_every_diffusion_method_builds_its_config_from_the_shared_settings(name, tmp_path):
    bench = load_bench("alignment")
    shared = bench.shared_settings({"output_dir": str(tmp_path)})
    config = bench.method_config(name, shared, tmp_path / "pairs", tmp_path)
    cls, overrides = bench.METHODS[name]
    assert type(config) is cls and config.output_dir == str(tmp_path / name)
    assert (config.lora_r, config.max_steps, config.learning_rate) == (shared.lora_r, shared.max_steps,
                                                                       shared.learning_rate)
    assert all(getattr(config, key) == value for key, value in overrides.items())


@pytest.mark.slow
def test_reduced_diffusion_dpo_gains_reward_with_an_interval_above_zero(tmp_path, capsys):
    rows = load_bench("alignment").main(["--quick", "--workdir", str(tmp_path)])
    assert [row["method"] for row in rows] == ["diffusion-dpo"]
    row = rows[0]
    assert row["reward_after"] - row["reward_before"] == pytest.approx(row["reward_gain"])
    assert row["reward_gain_ci_low"] > 0, f"no significant gain: {row}"
    assert row["win_rate"] > row["loss_rate"]
    assert "| diffusion-dpo |" in capsys.readouterr().out
