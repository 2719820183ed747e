"""Checkpoint and metrics bookkeeping of the training loop (``visalign.trainers._common``) on their own."""

from __future__ import annotations

import json

import pytest
from accelerate import Accelerator

from visalign.config_io import ConfigError
from visalign.trainers._common import RESUME_CHANGEABLE, MetricsLog, resume_config_changes


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


def test_a_torn_last_metrics_line_is_dropped_with_a_warning_naming_the_file(accelerator, tmp_path, caplog):
    log = MetricsLog(accelerator, tmp_path)
    for step in (1, 2, 3):
        log.write(step, {"loss": 0.5})
    with log.path.open("a") as f:
        f.write('{"step": 4, "lo')  # the disk filled up mid-line
    with caplog.at_level("WARNING"):
        log.truncate_after(2)
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1, 2]
    assert f"{log.path}: dropped its torn last line 4" in caplog.text


def test_an_unreadable_metrics_line_before_the_last_is_named(accelerator, tmp_path):
    log = MetricsLog(accelerator, tmp_path)
    log.path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics line \(JSONDecodeError"):
        log.truncate_after(2)


def test_a_logged_line_counts_the_pairs_skipped_in_its_window_and_averages_the_rest(accelerator, tmp_path):
    log = MetricsLog(accelerator, tmp_path)
    for loss, skipped in ((1.0, 1), (2.0, 0), (6.0, 2)):
        log.add({"loss": loss, "data/skipped_pairs": skipped})
    assert log.flush(3) == {"loss": 3.0, "data/skipped_pairs": 3.0}
    assert json.loads(log.path.read_text().splitlines()[-1]) == {"step": 3, "loss": 3.0, "data/skipped_pairs": 3.0}


def test_resume_config_changes_names_allowed_and_refused_keys(tmp_path):
    saved = {"method": "dpo", "beta": 0.1, "learning_rate": 1e-3, "max_steps": 10, "only_old": 1}
    current = {"method": "dpo", "beta": 0.1, "learning_rate": 5e-4, "max_steps": 20, "only_new": 2}
    changes = resume_config_changes(saved, current, tmp_path)
    assert changes == {"learning_rate": (1e-3, 5e-4), "max_steps": (10, 20)}  # keys on one side only: not compared
    with pytest.raises(ConfigError, match=r"changed beta 0.1 -> 0.2: set them back"):
        resume_config_changes(saved, {**saved, "beta": 0.2, "learning_rate": 5e-4}, tmp_path)
    with pytest.raises(ConfigError, match=r"written by a method 'dpo' run, this is a 'diffusion-dpo' run"):
        resume_config_changes(saved, {**saved, "method": "diffusion-dpo"}, tmp_path)
    assert not {"beta", "loss_type", "dataset", "model", "seed", "use_lora"} & RESUME_CHANGEABLE
