"""VLMDPOTrainer on tiny LLaVA-1.5, LLaVA-NeXT and Qwen2-VL loaded through ``from_pretrained``: token/feature
alignment, ln 2 at step 0, multi-image steps, LoRA on the language model only, precomputed (per-token) reference,
dense-DPO weights, bad-input errors."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from visalign.data.vlm import VisionPreferenceDataset
from visalign.data.vlm_collator import VisionPreferenceCollator
from visalign.likelihood.vlm import vlm_pair_loglik
from visalign.testing.vlm import save_tiny_llava, save_tiny_llava_next, save_tiny_qwen2_vl
from visalign.trainers.vlm import VLMDPOConfig, VLMDPOTrainer

COLOURS = {"red": (220, 38, 38), "green": (34, 160, 60), "blue": (37, 70, 220), "yellow": (240, 200, 30)}
SAVERS = {"llava": save_tiny_llava, "llava_next": save_tiny_llava_next, "qwen2_vl": save_tiny_qwen2_vl}


def _image(colour: str, size=(56, 56)) -> Image.Image:
    return Image.new("RGB", size, COLOURS[colour])


def _rows(multi: bool = False) -> list[dict]:
    rows = []
    for colour, wrong in (("red", "blue"), ("green", "yellow"), ("blue", "red"), ("yellow", "green")):
        if multi:
            rows.append({"images": [_image(colour), _image(wrong, (40, 60))],
                         "prompt": "<image> <image> what colour is the left image ?",
                         "chosen": f"it is {colour} .", "rejected": f"it is {wrong} ."})
        else:
            rows.append({"images": [_image(colour)],
                         "prompt": [{"role": "user", "content": "what colour is the square ?"}],
                         "chosen": [{"role": "assistant", "content": f"the square is {colour} ."}],
                         "rejected": [{"role": "assistant", "content": f"the square is {wrong} . a {wrong} square"}]})
    return rows


@pytest.fixture(scope="module", params=list(SAVERS))
def saved(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    SAVERS[request.param](path)
    return request.param, str(path)


def _args(tmp_path, **kw) -> VLMDPOConfig:
    base = dict(output_dir=str(tmp_path), per_device_batch_size=2, max_steps=1, learning_rate=1e-2, save_steps=0,
                lr_scheduler="constant", logging_steps=1)
    return VLMDPOConfig(**{**base, **kw})


def test_token_feature_alignment_and_ln2(saved, tmp_path):
    family, path = saved
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    collator = VisionPreferenceCollator(processor)
    data = VisionPreferenceDataset(_rows(multi=True), name="rows")
    batch = collator([data[0], data[1]])
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    # every row carries exactly its images' feature count; chosen and rejected rows carry the same images
    n_tokens = (batch["input_ids"] == image_token).sum(1)
    assert n_tokens[:2].tolist() == n_tokens[2:].tolist()
    with torch.no_grad():
        feats = model.model.get_image_features(**{k: batch[k] for k in ("pixel_values", "image_sizes",
                                                                          "image_grid_thw") if k in batch})
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    total = sum(f.shape[0] for f in feats) if isinstance(feats, (list, tuple)) else feats.shape[0]
    assert n_tokens.sum().item() == total
    # completions sit after the prompt and hold no image token
    assert not ((batch["input_ids"] == image_token) & batch["completion_mask"].bool()).any()

    trainer = VLMDPOTrainer(model=path, args=_args(tmp_path, reference="frozen_copy"), train_dataset=_rows())
    loss, metrics = trainer.compute_loss(next(iter(trainer.data_source.loader)))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["rewards/margins"] == 0.0


def test_multi_image_lora_step(tmp_path):
    path = save_tiny_llava(tmp_path / "m")
    args = _args(tmp_path / "out", use_lora=True, lora_r=4, max_steps=2)
    trainer = VLMDPOTrainer(model=str(path), args=args, train_dataset=_rows(multi=True))
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and "lora_" in n for n in trainable)
    assert trainer.reference_strategy == "disable_adapter"
    first, _ = trainer.compute_loss(next(iter(trainer.data_source.loader)))
    assert first.item() == pytest.approx(math.log(2), abs=1e-6)  # fresh LoRA: policy == reference
    result = trainer.train()
    assert math.isfinite(result["train_loss"]) and result["nonfinite_steps"] == 0
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    assert (tmp_path / "out" / "processor_config.json").is_file() or (tmp_path / "out" / "tokenizer.json").is_file()


def test_freeze_flags(tmp_path):
    path = save_tiny_llava(tmp_path / "m")
    trainer = VLMDPOTrainer(model=str(path), args=_args(tmp_path / "o", freeze_projector=True), train_dataset=_rows())
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainable = {part: any(p.requires_grad for n, p in model.named_parameters() if f".{part}." in n)
                 for part in ("vision_tower", "multi_modal_projector", "language_model")}
    assert trainable == {"vision_tower": False, "multi_modal_projector": False, "language_model": True}


@pytest.mark.parametrize("dense", [False, True], ids=["dpo", "dense_dpo"])
def test_precomputed_reference_matches_frozen_copy(tmp_path, dense):
    path = save_tiny_llava(tmp_path / "m")
    dense_options = dict(dense_dpo_gamma=3.0, dense_dpo_score="normalized") if dense else {}  # read by dense-dpo only
    common = dict(method="dense-dpo" if dense else "vlm-dpo", per_device_batch_size=4, **dense_options)
    frozen = VLMDPOTrainer(model=str(path), args=_args(tmp_path / "a", reference="frozen_copy", **common),
                           train_dataset=_rows())
    pre = VLMDPOTrainer(model=str(path), args=_args(tmp_path / "b", reference="precomputed", **common),
                        train_dataset=_rows())
    assert "ref_chosen_token_logps" in pre.train_dataset[0]
    batch_f = next(iter(frozen.data_source.loader))
    batch_p = next(iter(pre.data_source.loader))
    if dense:
        weights = batch_f["token_weights"]
        assert set(weights.unique().tolist()) == {0.0, 1.0, 3.0}
    # perturb the policies identically so the loss is not ln 2 and depends on the reference
    for trainer in (frozen, pre):
        head = trainer.accelerator.unwrap_model(trainer.model).lm_head.weight
        with torch.no_grad():
            head.add_(torch.randn(head.shape, generator=torch.Generator().manual_seed(0)))
    loss_f, m_f = frozen.compute_loss(batch_f)
    loss_p, m_p = pre.compute_loss(batch_p)
    assert abs(loss_f.item() - math.log(2)) > 1e-4
    assert loss_p.item() == pytest.approx(loss_f.item(), abs=1e-5)
    assert m_p["rewards/margins"] == pytest.approx(m_f["rewards/margins"], abs=1e-5)


def test_dense_weighted_score_by_hand(tmp_path):
    path = save_tiny_llava(tmp_path / "m")
    trainer = VLMDPOTrainer(model=str(path), args=_args(tmp_path / "o", method="dense-dpo", dense_dpo_gamma=2.0,
                                                        reference="frozen_copy"), train_dataset=_rows())
    batch = next(iter(trainer.data_source.loader))
    model = trainer.accelerator.unwrap_model(trainer.model)
    plain = vlm_pair_loglik(model, batch, return_token_logps=True)
    weighted = vlm_pair_loglik(model, batch, reduction="weighted")
    w = batch["token_weights"].chunk(2)
    torch.testing.assert_close(weighted.chosen, (plain.chosen_token_logps * w[0]).sum(-1))
    torch.testing.assert_close(weighted.rejected, (plain.rejected_token_logps * w[1]).sum(-1))


def test_bad_inputs(tmp_path):
    path = save_tiny_llava(tmp_path / "m")
    processor = AutoProcessor.from_pretrained(path)
    rows = _rows(multi=True)
    with pytest.raises(ValueError, match=r"rows row 0: 2 image\(s\) but 1 '<image>' placeholder"):
        VisionPreferenceDataset([{**rows[0], "prompt": "<image> which ?"}], name="rows")[0]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    data = VisionPreferenceDataset([{"image": "broken.png", "prompt": "what ?", "chosen": "red", "rejected": "blue"}],
                                   name="rows", image_folder=tmp_path)
    with pytest.raises(ValueError, match=r"rows row 0: image 0 \(broken.png\) is unreadable"):
        VisionPreferenceCollator(processor)([data[0]])
    data = VisionPreferenceDataset(rows, name="rows")
    with pytest.raises(ValueError, match=r"rows row 1: the prompt has \d+ tokens .* never cuts into the prompt"):
        VisionPreferenceCollator(processor, max_length=20)([data[1]])
    # the text itself holds an image token (chosen and rejected copies: 4 placeholders for 2 images)
    sneaky = {**data[0], "images": rows[0]["images"][:1]}
    sneaky["prompt"] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what <image>"}]}]
    with pytest.raises(ValueError, match=r"rows row 0: the processor rejected .* Found total 4 <image> tokens and 2 images"):
        VisionPreferenceCollator(processor)([sneaky])


def test_image_paths_resolve_against_the_data_file_folder_and_can_be_confined(tmp_path, monkeypatch):
    """Relative image paths of a data file are read from its folder, whatever the working directory (as for diffusion
    data); with confine_image_paths a path that leads outside that folder is refused, naming the row."""
    path = save_tiny_llava(tmp_path / "m")
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    _image("red").save(data / "imgs" / "a.png")
    _image("blue").save(tmp_path / "outside.png")
    rows = [{"image": "imgs/a.png", "prompt": "<image> what colour ?", "chosen": "red", "rejected": "blue"}] * 2
    (data / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    outside = [{**rows[0], "image": str(tmp_path / "outside.png")}] * 2
    (data / "outside.jsonl").write_text("".join(json.dumps(row) + "\n" for row in outside))
    monkeypatch.chdir(tmp_path / "m")  # anywhere but the data folder
    result = VLMDPOTrainer(model=str(path), args=_args(tmp_path / "run"), train_dataset=str(data / "pairs.jsonl")).train()
    assert math.isfinite(result["train_loss"])
    confined = VLMDPOTrainer(model=str(path), args=_args(tmp_path / "confined", confine_image_paths=True),
                             train_dataset=str(data / "outside.jsonl"))
    with pytest.raises(ValueError, match=r"row 0: image 0 .* is outside the dataset folder"):
        confined.train()


def test_rlhfv_and_mia_dpo_schemas(tmp_path):
    buffer = io.BytesIO()
    _image("red").save(buffer, format="PNG")
    rlhfv = [{"text": '{"question": "what colour ?", "chosen": "red .", "rejected": "blue ."}',
              "image": {"bytes": buffer.getvalue(), "path": None}, "idx": 0}]
    data = VisionPreferenceDataset(rlhfv, name="rlhfv")
    assert data.schema == "rlhfv" and data[0]["prompt"] == "<image>\nwhat colour ?"
    (tmp_path / "imgs").mkdir()
    _image("red").save(tmp_path / "imgs" / "a.png")
    _image("blue").save(tmp_path / "imgs" / "b.png")
    mia = [{"id": "0", "image": ["imgs/a.png", "imgs/b.png"], "prompt": "Image1:<image>\nImage2:<image>\nIn Image1, "
            "what colour ?", "chosen": "red", "rejected": "blue", "gt": "red"}]
    data = VisionPreferenceDataset(mia, name="mia", image_folder=tmp_path)
    assert data.schema == "mia_dpo"
    processor = AutoProcessor.from_pretrained(save_tiny_llava(tmp_path / "m"))
    batch = VisionPreferenceCollator(processor)([data[0]])
    assert batch["pixel_values"].shape[0] == 4  # two images, duplicated for chosen and rejected
