"""The alignment bench: every diffusion method's row builds a valid config from the shared settings, and Diffusion-DPO
actually aligns: the reduced bench must raise the shapes reward on held-out prompts and seeds with a bootstrap
interval above zero (``bench/alignment.py --quick``)."""

from __future__ import annotations

import pytest

from tests.helpers.scripts import load_bench


@pytest.mark.parametrize("name", list(load_bench("alignment").METHODS))
def test_every_diffusion_method_builds_its_config_from_the_shared_settings(name, tmp_path):
    bench = load_bench("alignment")
    shared = bench.shared_settings({"output_dir": str(tmp_path), "pair_source": "policy"})
    config = bench.method_config(name, shared, tmp_path / "pairs", tmp_path)
    cls, overrides = bench.METHODS[name]
    assert type(config) is cls and config.output_dir == str(tmp_path / name)
    assert (config.lora_r, config.max_steps) == (shared.lora_r, shared.max_steps)
    assert config.learning_rate == overrides.get("learning_rate", shared.learning_rate)
    assert all(getattr(config, key) == value for key, value in overrides.items())


def test_a_set_value_wins_over_what_the_method_decides_itself(tmp_path):
    """MaPO's β is its own (0.1, not Diffusion-DPO's): ``--set beta=1`` must still reach its config."""
    bench = load_bench("alignment")
    shared = bench.shared_settings({"output_dir": str(tmp_path), "beta": "1", "learning_rate": "3e-4"})
    config = bench.method_config("mapo", shared, tmp_path / "pairs", tmp_path,
                                 explicit=frozenset({"beta", "learning_rate"}))
    assert (config.beta, config.learning_rate, config.loss_type) == (1.0, 3e-4, "mapo")
    policy = bench.shared_settings({"output_dir": str(tmp_path), "pair_source": "policy"})
    unset = bench.method_config("mapo", policy, tmp_path / "p", tmp_path)
    assert (unset.beta, unset.learning_rate) == (0.1, 1e-4)
    rendered = bench.shared_settings({"output_dir": str(tmp_path), "pair_source": "rendered"})
    assert bench.method_config("mapo", rendered, tmp_path / "p", tmp_path).learning_rate == 3e-4  # RENDERED
    assert "lr 0.0003" in bench.settings_of("mapo", rendered)
    smoothed = bench.shared_settings({"output_dir": str(tmp_path), "pair_source": "policy", "loss_type": "robust",
                                      "label_smoothing": "0.05"})
    label = bench.settings_of("diffusion-dpo", smoothed, frozenset({"loss_type", "label_smoothing"}))
    assert label.startswith("robust, β") and "label_smoothing 0.05" in label


def test_flipped_labels_train_on_a_seeded_copy_with_chosen_and_rejected_swapped(tmp_path):
    import json
    import shutil

    from PIL import Image

    from visalign.data.diffusion import load_preference_pairs

    bench = load_bench("alignment")
    pairs = tmp_path / "pairs"
    for side in ("chosen", "rejected"):
        (pairs / side).mkdir(parents=True)
    rows = []
    for i in range(40):
        name = f"{i:05d}_00_01.png"
        Image.new("RGB", (8, 8), (200, i, 0)).save(pairs / "chosen" / name)
        Image.new("RGB", (8, 8), (0, i, 200)).save(pairs / "rejected" / name)
        rows.append({"file_name": name, "caption": "a red circle", "score_chosen": 0.9, "score_rejected": 0.2,
                     "depicted_rejected": f"what rejected {i} shows"})
    (pairs / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    robust = bench.row_pairs("robust", pairs, seed=3, flip_rate=0.1)
    assert bench.row_pairs("diffusion-dpo", pairs, seed=3, flip_rate=0.1) == robust != pairs  # one copy for both
    assert bench.row_pairs("diffusion-dpo", pairs, seed=3) == pairs
    dcpo = bench.row_pairs("dcpo", pairs, seed=3, flip_rate=0.1)  # DCPO-p's captions over the flipped labels
    assert json.loads((dcpo / "captions.jsonl").read_text().splitlines()[0])["caption_chosen"] == "a red circle"
    assert (dcpo / "rejected").is_dir() and dcpo.parent == pairs.parent
    flipped = [json.loads(line) for line in (robust / "captions.jsonl").read_text().splitlines()]
    swapped = [r for r in flipped if r.get("label_flipped")]
    assert 0 < len(swapped) < 20  # a 10% rate of 40
    for row in flipped:
        red = Image.open(robust / ("rejected" if row.get("label_flipped") else "chosen") / row["file_name"])
        assert red.getpixel((0, 0))[0] == 200
        if row.get("label_flipped"):
            assert (row["score_chosen"], row["score_rejected"]) == (0.2, 0.9)
            assert row["depicted_chosen"].startswith("what rejected") and "depicted_rejected" not in row
    assert all(Image.open(pairs / "chosen" / r["file_name"]).getpixel((0, 0))[0] == 200 for r in rows)  # untouched
    assert len(load_preference_pairs(str(robust))) == 40
    again = shutil.copytree(pairs, tmp_path / "again")
    assert bench.flip_labels(again, 0.1, seed=3) == len(swapped)  # the same seed flips the same pairs
    assert (again / "captions.jsonl").read_text() == (robust / "captions.jsonl").read_text()


def test_the_vlm_rows_put_a_lora_on_every_linear_layer_but_the_output_head():
    import torch
    from transformers import AutoModelForImageTextToText

    from visalign.models.builtin import resolve_model

    model = AutoModelForImageTextToText.from_pretrained(resolve_model("builtin:shapes-llava"))
    names = load_bench("alignment").every_linear_layer(model)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(names) == sorted(n for n in linear if n != "lm_head")
    assert all(any(part in n for n in names) for part in ("vision_tower", "multi_modal_projector", "language_model"))


def test_the_summary_pools_each_method_over_its_training_seeds():
    bench = load_bench("alignment")

    def row(method, seed, gain, low, high, win):
        return {"method": method, "seed": seed, "reward_gain": gain, "reward_gain_ci_low": low,
                "reward_gain_ci_high": high, "win_rate": win, "tie_rate": 0.5, "train_s": 10.0 * seed,
                "settings": f"{method} settings", "gain/shape": 2 * gain}

    rows = [row("dpo", 0, 0.06, 0.01, 0.1, 0.6), row("ipo", 0, -0.03, -0.05, -0.01, 0.2),
            row("dpo", 1, 0.02, -0.01, 0.05, 0.4), row("dpo", 2, 0.04, 0.02, 0.06, 0.5)]
    dpo, ipo = bench.summarise_methods(rows)
    assert (dpo["method"], dpo["seeds"], ipo["seeds"]) == ("dpo", [0, 1, 2], [0])
    assert dpo["mean_gain"] == pytest.approx(0.04) and dpo["gain_std"] == pytest.approx(0.02)
    assert (dpo["gain_min"], dpo["gain_max"]) == (0.02, 0.06)
    assert (dpo["seeds_above_zero"], dpo["seeds_below_zero"], ipo["seeds_below_zero"]) == (2, 0, 1)
    assert dpo["win_rate"] == pytest.approx(0.5) and dpo["gain/shape"] == pytest.approx(0.08)
    table = bench.format_summary([dpo, ipo])
    assert "| dpo | dpo settings | 0 1 2 | +0.0400 ± 0.0200 [+0.0200, +0.0600] | 2/3 | 0/3 |" in table


@pytest.mark.slow
def test_reduced_diffusion_dpo_gains_reward_with_an_interval_above_zero(tmp_path, capsys):
    rows = load_bench("alignment").main(["--quick", "--workdir", str(tmp_path)])
    assert [row["method"] for row in rows] == ["diffusion-dpo"]
    row = rows[0]
    assert row["reward_after"] - row["reward_before"] == pytest.approx(row["reward_gain"])
    assert row["reward_gain_ci_low"] > 0, f"no significant gain: {row}"
    assert row["win_rate"] > row["loss_rate"]
    assert "| diffusion-dpo |" in capsys.readouterr().out


@pytest.mark.slow
def test_several_methods_and_seeds_run_side_by_side_on_the_same_held_out_images(tmp_path):
    """Every row after the first trains into an empty folder and is judged on the first row's base images."""
    tiny = ["num_prompts=8", "max_steps=2", "num_eval_prompts=2", "eval_seeds=1", "bootstrap_resamples=50"]
    rows = load_bench("alignment").main(["--methods", "diffusion-dpo", "ipo", "--seeds", "0", "1", "--workdir",
                                         str(tmp_path), *[arg for item in tiny for arg in ("--set", item)]])
    assert [(r["method"], r["seed"]) for r in rows] == [("diffusion-dpo", 0), ("ipo", 0), ("diffusion-dpo", 1),
                                                        ("ipo", 1)]
    assert len({r["reward_before"] for r in rows}) == 1
    assert (tmp_path / "seed-1" / "ipo" / "eval" / "images" / "b").is_dir()
