"""The online alignment bench (``bench/online_alignment.py``): both rows build from their shipped recipes with a seed,
and the summary divides the mean gains per second (the end-to-end runs themselves are covered by the quickstart and
SPO tests)."""

from __future__ import annotations

import pytest

from tests.helpers.scripts import load_bench


@pytest.mark.parametrize("method", ["onpolicy-diffusion-dpo", "spo"])
def test_each_row_is_its_shipped_recipe_with_the_seed_and_quick_sizes(method, tmp_path):
    bench = load_bench("online_alignment")
    recipe, _ = bench.ROWS[method]
    config = bench.recipe_config(recipe, {**bench.SHARED_QUICK, **bench.QUICK[method], "seed": 5,
                                          "output_dir": str(tmp_path)})
    assert config.method == method and config.seed == 5 and config.max_steps == 2
    assert config.eval_seed == bench.recipe_config(recipe, {}).eval_seed  # every run judged on the same images


def test_summary_is_the_ratio_of_mean_gains_per_second():
    bench = load_bench("online_alignment")
    rows = [{"method": "onpolicy-diffusion-dpo", "gain_per_s": 1e-4}, {"method": "onpolicy-diffusion-dpo",
                                                                        "gain_per_s": 3e-4},
            {"method": "spo", "gain_per_s": 1e-4}, {"method": "spo", "gain_per_s": 7e-4}]
    totals = bench.summary(rows)
    assert totals["onpolicy-diffusion-dpo_gain_per_s"] == pytest.approx(2e-4)
    assert totals["spo_to_dpo_ratio"] == pytest.approx(2.0)
    assert bench.summary(rows[2:])["spo_to_dpo_ratio"] is None  # no Diffusion-DPO row: no ratio
