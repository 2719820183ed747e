"""The diffusion preference trainer end to end on tiny SD1.5/SDXL pipelines saved to disk: the cache replays the
uncached path, validation grids, skipped pairs, bad input. Outputs loading into real diffusers pipelines, exact
resume (uncached, cached, full fine-tune) and the LoRA checkpoint's size are the trainer contract's
(``tests/contract/test_trainer_contract.py``)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.diffusion import CAPTIONS, pairs, sd15, sdxl, write_pairs  # noqa: F401 (pytest fixtures)
from tests.helpers.runs import Killed, killed_after
from visalign.config_io import ConfigError
from visalign.trainers.diffusion import DCPOConfig, DiffusionConfig, DiffusionTrainer


def config(**overrides) -> DiffusionConfig:
    values = dict(max_steps=2, per_device_batch_size=2, save_steps=0, logging_steps=1, lr_scheduler="constant",
                  learning_rate=1e-3)
    return DiffusionConfig(**{**values, **overrides})


def metrics(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def unet_weights(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}


# ------------------------------------------------------------------------------------------------ outputs


def test_validation_grid_at_intervals_and_at_the_end(sd15, pairs, tmp_path):
    out = tmp_path / "val"
    prompts = ["a red square", "a blue circle", "a green cross"]
    trainer = DiffusionTrainer(config(model=sd15, dataset=pairs, output_dir=str(out), use_lora=True,
                                      validation_prompts=prompts, validation_steps=1, validation_inference_steps=2))
    trainer.train()
    grids = sorted(p.name for p in (out / "validation").iterdir())
    assert grids == ["final-step-000002.png", "validation-step-000001.png", "validation-step-000002.png"]
    grid = Image.open(out / "validation" / "final-step-000002.png")
    assert grid.size == (2 * 32, 2 * 32)  # 3 images of 32 px on a 2 x 2 grid
    # fixed prompts and seeds: the step-2 interval grid and the final grid render the same UNet identically
    a = np.asarray(Image.open(out / "validation" / "validation-step-000002.png"))
    assert np.array_equal(a, np.asarray(grid))
    assert "validation/final-step-000002.png" in (out / "README.md").read_text()


# ------------------------------------------------------------------------------------------------ equivalences


def test_cache_gives_the_same_losses_as_the_uncached_path(sd15, pairs, tmp_path):
    runs = []
    for name, cache_dir in (("plain", None), ("cached", str(tmp_path / "cache")), ("reused", str(tmp_path / "cache"))):
        trainer = DiffusionTrainer(config(model=sd15, dataset=pairs, output_dir=str(tmp_path / name), use_lora=True,
                                          cache_dir=cache_dir, caption_dropout=0.5, random_flip=True))
        stream, losses = trainer.data_source.batches(0), []
        for step in range(4):  # both epochs of 2 batches, with the noise of 4 different steps
            trainer.global_step = step
            batch = next(stream)
            assert ("latents" in batch) == (cache_dir is not None)
            with torch.no_grad():
                loss, m = trainer.compute_loss(batch)
            losses.append((loss.item(), m["mse/chosen"], m["mse/rejected"]))
        runs.append(losses)
    assert {s for losses in runs for s in losses} != {runs[0][0]}  # the steps differ from each other
    for cached in runs[1:]:
        np.testing.assert_allclose(cached, runs[0], rtol=1e-5)
    assert len(list((tmp_path / "cache").glob("latents-*"))) == 1  # the second cached run reused the shards


# ------------------------------------------------------------------------------------------------ bad input


def test_unreadable_images_are_skipped_and_counted(sd15, tmp_path):
    data = write_pairs(tmp_path / "data", CAPTIONS, corrupt=(1,))
    out = tmp_path / "out"
    result = DiffusionTrainer(config(model=sd15, dataset=data, output_dir=str(out), per_device_batch_size=4,
                                     use_lora=True)).train()
    assert np.isfinite(result["train_loss"])
    assert [m["data/skipped_pairs"] for m in metrics(out) if "loss" in m] == [1.0, 1.0]


class _Snapshots(DiffusionTrainer):
    """Keeps the UNet weights after every step (``snapshots[0]``: before training)."""

    def train(self):
        self.snapshots = {0: unet_weights(self)}
        return super().train()

    def on_step_end(self, step):
        self.snapshots[step] = unet_weights(self)


def test_a_micro_batch_of_skipped_pairs_neither_updates_nor_enters_the_loss(sd15, tmp_path):
    data = write_pairs(tmp_path / "data", CAPTIONS[:2])
    out = tmp_path / "out"
    trainer = _Snapshots(config(model=sd15, dataset=data, output_dir=str(out), per_device_batch_size=1,
                                use_lora=True))
    (tmp_path / "data" / "chosen" / "p1.png").unlink()  # vanished after the up-front check, e.g. a network mount
    result = trainer.train()
    rows = metrics(out)
    empty = [m for m in rows if m["data/skipped_pairs"] == 1.0]
    assert len(empty) == 1 and "loss" not in empty[0]
    step = empty[0]["step"]
    assert all(torch.equal(trainer.snapshots[step][n], trainer.snapshots[step - 1][n]) for n in trainer.snapshots[0])
    assert result["train_loss"] == next(m["loss"] for m in rows if "loss" in m)
    assert result["skipped_pairs"] == 1.0


def test_a_run_whose_every_pair_is_skipped_stops_with_an_error(sd15, tmp_path):
    data = write_pairs(tmp_path / "data", CAPTIONS[:2])
    trainer = DiffusionTrainer(config(model=sd15, dataset=data, output_dir=str(tmp_path / "out"), max_steps=10,
                                      per_device_batch_size=1, use_lora=True))
    for image in (tmp_path / "data" / "chosen").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"every example read in 2 step\(s\) was skipped as unreadable \(2 skipped"):
        trainer.train()


def test_skipped_pairs_are_counted_with_workers_and_across_a_resume(sd15, tmp_path, caplog):
    data = write_pairs(tmp_path / "data", CAPTIONS, corrupt=(1,))
    common = dict(model=sd15, dataset=data, output_dir=str(tmp_path / "out"), per_device_batch_size=4, use_lora=True,
                  save_steps=1, dataloader_num_workers=1)
    killed = killed_after(DiffusionTrainer, 1)(config(**common))
    with pytest.raises(Killed):
        killed.train()
    with caplog.at_level("INFO", logger="visalign"):
        result = DiffusionTrainer(config(resume_from="latest", **common)).train()
    assert result["skipped_pairs"] == 2.0  # one per step, the step before the resume included
    assert "2 unreadable pair(s) were skipped during training" in caplog.text


def test_a_text_checkpoint_given_to_a_diffusion_run_fails_before_any_model_loads(pairs, tmp_path):
    from visalign.testing.text_data import synthetic_preferences
    from visalign.trainers.text import DPOConfig, DPOTrainer

    DPOTrainer(args=DPOConfig(model="builtin:tiny-llama", output_dir=str(tmp_path / "text"), max_steps=1, save_steps=1,
                              per_device_batch_size=2, max_length=64),
               train_dataset=synthetic_preferences("train").select(range(2))).train()
    checkpoint = tmp_path / "text" / "checkpoints" / "checkpoint-1"
    with pytest.raises(ConfigError, match=f"{checkpoint} was written by a method 'dpo' run, this is a 'diffusion-dpo'"):
        DiffusionTrainer(config(model=str(tmp_path / "no-model-here"), dataset=pairs, resume_from=str(checkpoint),
                                output_dir=str(tmp_path / "diffusion")))


def test_an_eval_set_with_no_readable_pair_fails_before_any_model_loads(pairs, tmp_path):
    # It used to train, then crash in evaluate() with ZeroDivisionError (every eval pair skipped).
    unreadable = write_pairs(tmp_path / "eval", CAPTIONS[:2], corrupt=(0, 1))
    with pytest.raises(ValueError, match=r"eval: none of the 2 pairs has two readable images \(last: .*row 1"):
        DiffusionTrainer(config(model=str(tmp_path / "no-model-here"), dataset=pairs, eval_dataset=unreadable,
                                output_dir=str(tmp_path / "out")))


def test_missing_per_side_caption_columns_fail_before_any_model_loads(tmp_path):
    rows = tmp_path / "pairs.jsonl"
    rows.write_text(json.dumps({"chosen": "a.png", "rejected": "b.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['caption_chosen', 'caption_rejected'\]"):
        DiffusionTrainer(DCPOConfig(model=str(tmp_path / "no-model-here"), dataset=str(rows),
                                    output_dir=str(tmp_path / "out")))


def write_pick_double_caption(path, labels) -> str:
    """A Pick-Double Caption-shaped parquet file (DCPO's data): jpg_0, jpg_1 (PNG bytes), label_0, caption_0 and
    caption_1, each caption describing its own image."""
    import datasets

    rng = np.random.default_rng(0)

    def png() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    n = len(labels)
    datasets.Dataset.from_dict({
        "jpg_0": [png() for _ in range(n)], "jpg_1": [png() for _ in range(n)], "label_0": labels,
        "caption_0": [f"image 0 of row {i}" for i in range(n)], "caption_1": [f"image 1 of row {i}" for i in range(n)],
    }).to_parquet(str(path))
    return str(path)


def test_dcpo_trains_on_pick_double_caption_with_each_caption_following_its_image(sd15, tmp_path):
    data = write_pick_double_caption(tmp_path / "pdc.parquet", [1.0, 0.0, 0.0, 1.0])
    trainer = DiffusionTrainer(DCPOConfig(model=sd15, dataset=data, output_dir=str(tmp_path / "out"), max_steps=1,
                                          per_device_batch_size=4, save_steps=0, use_lora=True))
    batch = next(iter(trainer.data_source.loader))
    winners = {0: 0, 1: 1, 2: 1, 3: 0}  # row -> the image label_0 picks
    expected = {(f"image {w} of row {row}", f"image {1 - w} of row {row}") for row, w in winners.items()}
    assert set(zip(batch["captions_chosen"], batch["captions_rejected"])) == expected
    loss, _ = trainer.compute_loss(batch)
    assert torch.isfinite(loss)


def test_dcpo_without_per_side_captions_fails_before_any_model_loads(tmp_path):
    no_model = str(tmp_path / "no-model-here")
    pickapic = write_pick_double_caption(tmp_path / "pickapic.parquet", [1.0, 0.0])
    import datasets

    datasets.load_dataset("parquet", data_files=pickapic, split="train").remove_columns(
        ["caption_0", "caption_1"]).add_column("caption", ["x", "y"]).to_parquet(str(tmp_path / "plain.parquet"))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['caption_0', 'caption_1'\] for the 'pickapic'"):
        DiffusionTrainer(DCPOConfig(model=no_model, dataset=str(tmp_path / "plain.parquet"),
                                    output_dir=str(tmp_path / "out")))
    shared = write_pairs(tmp_path / "folder", ["a red square", "a blue circle"])  # one caption per pair
    with pytest.raises(ValueError, match=r"DCPO needs a caption per image, but every pair has one caption"):
        DiffusionTrainer(DCPOConfig(model=no_model, dataset=shared, output_dir=str(tmp_path / "out")))


@pytest.mark.parametrize("overrides, message", [
    (dict(reference="disable_adapter"), "needs use_lora"),
    (dict(noise_source="renoise"), "noise_source must be"),
    (dict(cache_dir="c", center_crop=False), "needs center_crop"),
    (dict(method="dpo"), r"DiffusionConfig.method must be one of diffusion-dpo, mapo, dcpo, inpo; got 'dpo' \(method "
                         r"'dpo' is trained with visalign.trainers.text:DPOConfig\)"),
    (dict(method="mapo", loss_type="sigmoid"), r"loss_type must be 'mapo' or a list including it .* method 'mapo'"),
    (dict(method="inpo", noise_source="random"), r"noise_source must be an inversion source .* method 'inpo'"),
    (dict(reference="precomputed"), "reference must be"),
    (dict(loss_type="kto"), r"DiffusionConfig: loss 'kto' needs unpaired data, but this family trains on pairs"),
    (dict(sdxl_time_ids="res"), r"sdxl_time_ids must be true_size \| square_resolution; got 'res'"),
    (dict(loss_type=["sigmoid", "kto"]), r"loss 'kto' needs unpaired data"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        DiffusionConfig(**overrides)


def test_adamw_8bit_trains_with_8bit_state(pairs, tmp_path):
    """``optimizer: adamw_8bit`` (the diffusers SDXL DPO port's and MaPO's optimizer) builds bitsandbytes' AdamW8bit,
    keeps uint8 moments for the tensors large enough for them (bitsandbytes' ``min_8bit_size``, 4096) and trains.
    The shipped shapes model, since every tensor of the tiny test UNet is below that size."""
    import bitsandbytes as bnb  # a test dependency (pyproject "test" extra)
    trainer = DiffusionTrainer(config(model="builtin:shapes-sd", dataset=pairs, output_dir=str(tmp_path / "out"),
                                      optimizer="adamw_8bit", resolution=32))
    before = unet_weights(trainer)
    trainer.train()
    optimizer = trainer.optimizer.optimizer  # accelerate's AcceleratedOptimizer wraps it
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    states = [s for s in optimizer.state.values() if "state1" in s]
    assert any(s["state1"].dtype == torch.uint8 for s in states)
    assert any(p.numel() >= 4096 for p in before.values())
    after = unet_weights(trainer)
    assert any(not torch.equal(after[n], before[n]) for n in before)
    assert all(torch.isfinite(v).all() for v in after.values())
