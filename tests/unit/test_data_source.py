"""The loop's data sources: a finite dataset streamed as the loop always streamed it, and an online source drawing
rounds from the policy being trained, resumed exactly through the real loop's checkpoints (a tiny linear policy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from visalign.trainers._loop import Trainer
from visalign.trainers.config import TrainingConfig
from visalign.trainers.data_source import DatasetSource, OnlineSource, Round, TensorRows


class _Numbers(torch.utils.data.Dataset):
    """Items 0..n-1; records the epochs it is told."""

    def __init__(self, n: int) -> None:
        self.n, self.epochs = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def _take(stream, n: int) -> list[list[int]]:
    return [next(stream) for _ in range(n)]


def test_dataset_source_streams_epochs_shuffled_with_seed_plus_epoch_and_skips_on_resume():
    """The loop's stream of old: every epoch a permutation, epoch e shuffled with seed + e; a resume at any position
    continues the same stream, the dataset told its epoch before it is read (mid-epoch too)."""
    dataset = _Numbers(5)
    source = DatasetSource(Accelerator(), dataset, batch_size=2, collator=list, seed=7)
    assert source.epoch_length() == 3  # 2 + 2 + 1
    stream = _take(source.batches(0), 9)
    epochs = [sum(stream[3 * e:3 * e + 3], []) for e in range(3)]
    assert all(sorted(epoch) == list(range(5)) for epoch in epochs) and epochs[0] != epochs[1]
    assert sorted(set(dataset.epochs)) == [0, 1, 2]
    later = DatasetSource(Accelerator(), _Numbers(5), batch_size=2, collator=list, seed=8)
    assert _take(later.batches(0), 3) == stream[3:6]  # seed 8's epoch 0 is seed 7's epoch 1
    for start in (1, 3, 4, 8):
        dataset.epochs.clear()
        assert _take(source.batches(start), 9 - start) == stream[start:]
        assert dataset.epochs[0] == start // 3
    assert source.progress(4) == {"epoch": 4 / 3} and source.state_dict() == {}


# ------------------------------------------------------------------------------------------------ online, in memory


class _WeightRounds:
    """Round r: ``r % 3 + 1`` examples (round ``empty``: none) computed from the policy's weights, kept in memory as
    :class:`TensorRows`, saved into the checkpoint. ``calls`` records each ``produce``; ``die_at`` raises inside
    round ``die_at``."""

    FILE = "online_round.safetensors"

    def __init__(self, empty: int = 4) -> None:
        self.calls, self.die_at, self.empty = [], None, empty

    def produce(self, round_index: int, policy: torch.nn.Module) -> Round:
        self.calls.append(round_index)
        if round_index == self.die_at:
            raise KeyboardInterrupt  # killed while drawing
        torch.rand(3)  # a draw from the global RNG: the source forks it, training's streams stay as they were
        w = policy.weight.detach().flatten()
        count = 0 if round_index == self.empty else round_index % 3 + 1
        scale = torch.arange(1, count + 1, dtype=torch.float32)[:, None]
        rows = TensorRows({"x": w * scale, "y": (w.sum() + round_index).repeat(count)})
        return Round(rows, f"{count} examples")

    def save_round(self, round_index: int, data: Round, folder: Path) -> None:
        data.dataset.save(folder / self.FILE)

    def restore_round(self, round_index: int, folder: Path) -> Round:
        rows = TensorRows.load(folder / self.FILE)
        return Round(rows, f"{len(rows)} examples (restored)")


class _OnlineLinear(Trainer):
    """The real loop on a 4 -> 1 linear policy fitting an online source's targets."""

    kill_after = -1
    steps_per_round = 3

    def __init__(self, args: TrainingConfig, producer: _WeightRounds) -> None:
        self.producer = producer
        super().__init__(args)

    def build_datasets(self):
        return None, None

    def build_model(self):
        return torch.nn.Linear(4, 1, bias=False)

    def build_collator(self):
        return lambda rows: {"x": torch.stack([r["x"] for r in rows]), "y": torch.stack([r["y"] for r in rows])}

    def build_data_source(self):
        return OnlineSource(self.accelerator, self.producer, self.accelerator.unwrap_model(self.model),
                            steps_per_round=self.steps_per_round, gradient_accumulation_steps=2, batch_size=1,
                            collator=self.collator, seed=self.args.seed, max_empty_rounds=1)

    def compute_loss(self, batch):
        noise = 0.01 * torch.randn(len(batch["y"]))  # a draw from the training RNG (replayed on resume)
        loss = ((self.model(batch["x"]).squeeze(-1) - batch["y"] + noise) ** 2).mean()
        return loss, {"y": float(batch["y"].mean())}

    def save_final(self, output_dir: Path) -> None:
        save_file(self.model.state_dict(), output_dir / "model.safetensors")

    def on_step_end(self, step: int) -> None:
        if step == self.kill_after:
            raise KeyboardInterrupt


def _config(out: Path, **overrides) -> TrainingConfig:
    return TrainingConfig(**{**dict(model="linear", output_dir=str(out), max_steps=14, learning_rate=0.05,
                                    lr_scheduler="constant", gradient_accumulation_steps=2, logging_steps=1,
                                    save_steps=2, report_to="none"), **overrides})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _run(out: Path, producer: _WeightRounds, *, kill_after: int = -1, **overrides) -> _OnlineLinear:
    trainer = _OnlineLinear(_config(out, **overrides), producer)
    trainer.kill_after = kill_after
    trainer.train()
    return trainer


def test_online_rounds_come_from_the_current_policy_and_a_kill_mid_round_or_while_drawing_resumes_exactly(
        tmp_path, caplog):
    """3 steps per round of 2 micro-batches; rounds hold 1, 2, 3, 1 examples (several epochs each), round 4 none
    (warned, counted, round 5 drawn at once from the same policy)."""
    whole_rounds = _WeightRounds()
    whole = _run(tmp_path / "whole", whole_rounds, save_steps=0)
    assert whole_rounds.calls == [0, 1, 2, 3, 4, 5]
    assert "round 4 yielded no training example (0 examples); drawing round 5" in caplog.text
    logged = _metrics(tmp_path / "whole")
    assert [m["data/round"] for m in logged] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 + [5] * 2
    assert [m["data/round_examples"] for m in logged][:4] == [1, 1, 1, 2] and logged[-1]["data/empty_rounds"] == 1
    ys = [m["y"] for m in logged]
    assert len({round(y, 6) for y in ys[3:6]}) == 1 and ys[3] != ys[0] + 1  # round 1 targets: the weights at step 3

    mid_round = _WeightRounds()
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "mid", mid_round, kill_after=5)  # checkpoint 4 lies inside round 1
    resumed_rounds = _WeightRounds()
    resumed = _run(tmp_path / "mid", resumed_rounds, resume_from="latest")
    assert resumed.resumed_from.name == "checkpoint-4"
    assert resumed_rounds.calls == [2, 3, 4, 5]  # round 1 restored from the checkpoint, not drawn again

    drawing = _WeightRounds()
    drawing.die_at = 2  # round 2 is drawn before step 7, after checkpoint 6
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "drawing", drawing)
    redrawn = _WeightRounds()
    again = _run(tmp_path / "drawing", redrawn, resume_from="latest")
    assert again.resumed_from.name == "checkpoint-6" and redrawn.calls == [2, 3, 4, 5]

    for run, out in ((resumed, "mid"), (again, "drawing")):
        assert torch.equal(run.model.weight, whole.model.weight), out
        assert _metrics(tmp_path / out) == logged, out


def test_online_source_without_rounds_has_no_epochs_and_an_empty_single_round_is_an_error(tmp_path):
    producer = _WeightRounds()
    source = OnlineSource(Accelerator(), producer, torch.nn.Linear(4, 1, bias=False), steps_per_round=2,
                          gradient_accumulation_steps=1, batch_size=1, collator=list, seed=0)
    assert source.epoch_length() is None and producer.calls == []  # nothing drawn before step 1 needs it
    single = OnlineSource(Accelerator(), producer, torch.nn.Linear(4, 1, bias=False), steps_per_round=0,
                          gradient_accumulation_steps=1, batch_size=1, collator=list, seed=0)
    assert single.epoch_length() == 1 and producer.calls == [0]  # one round: drawn before step 1
    empty = OnlineSource(Accelerator(), _WeightRounds(empty=0), torch.nn.Linear(4, 1, bias=False),
                         steps_per_round=0, gradient_accumulation_steps=1, batch_size=1, collator=list, seed=0)
    with pytest.raises(ValueError, match=r"round 0 yielded no training example \(0 examples\)"):
        next(empty.batches(0))
    with pytest.raises(ValueError, match="max_steps must be set"):
        _OnlineLinear(_config(tmp_path / "epochs", max_steps=-1), _WeightRounds())


def test_onpolicy_resampling_needs_max_steps_and_a_non_negative_interval():
    from visalign.trainers.onpolicy import OnPolicyConfig

    assert OnPolicyConfig(model="m").resample_every == 0  # the default samples once, before training
    with pytest.raises(ValueError, match="resample_every must be >= 0"):
        OnPolicyConfig(model="m", resample_every=-1)
    with pytest.raises(ValueError, match="resample_every needs max_steps"):
        OnPolicyConfig(model="m", resample_every=5)
