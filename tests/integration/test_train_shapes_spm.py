"""``scripts/train_shapes_spm.py --quick``: the shapes world's SPM chain (shapes CLIP, its fit to the shapes reward on
near-miss renders, pairs from shapes-sd labelled by the shapes reward, ``visalign train --config spm-shapes``) runs
end to end and leaves a loadable step-aware folder with the accuracies of both the SPM and the plain reward per
timestep."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reward_models import load_scorer
from tests.helpers.scripts import ROOT, load_script

pytestmark = pytest.mark.slow


def test_quick_run_leaves_a_step_aware_folder_with_both_accuracies_per_timestep(tmp_path):
    script = load_script(ROOT / "scripts" / "train_shapes_spm.py", "train_shapes_spm")
    threads = torch.get_num_threads()
    try:
        assert script.main(["--out", str(tmp_path / "spm"), "--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((tmp_path / "spm" / "metrics.json").read_text())
    for t in ("0", "251", "501", "701", "951"):
        accuracy = metrics["accuracy"][f"t={t}"]
        assert all(0.0 <= accuracy[key] <= 1.0 for key in ("spm", "shapes_baseline")), accuracy
    assert metrics["train_pairs"] > 0
    assert 0.0 <= metrics["imitation"]["held_out_accuracy_after"] <= 1.0 and not (tmp_path / "spm.work").exists()
    scores = load_scorer("step-aware", model=str(tmp_path / "spm")).score_tensor(
        torch.rand(2, 3, 32, 32), ["a red square", "a blue circle"], timesteps=[0, 701]).scores
    assert scores.shape == (2,) and all(math.isfinite(s) for s in scores.tolist())
