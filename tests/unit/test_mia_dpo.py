"""MIA-DPO augmentation geometry (§B.2), the attention ratio on constructed maps, the perplexity filter and the
thresholds (§B.3), and the generate -> select -> JSON -> train pipeline on a tiny LLaVA."""

import json
import math
import random

import pytest
import torch
from PIL import Image

from visalign.data import mia_dpo, mia_dpo_select
from visalign.data.mia_dpo_select import (
    MIASelectConfig, SourceSample, attention_ratio, build_mia_dpo, greedy_perplexity, image_spans, drop_reason,
    passes_threshold,
)

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def test_sequence_prompt():
    aug = mia_dpo.sequence_sample(Image.new("RGB", (8, 8), RED), [Image.new("RGB", (8, 8), BLUE)] * 2,
                                  "<image>\nWhat colour is it?", 2)
    assert aug.question == "Image1:<image>\nImage2:<image>\nImage3:<image>\nIn Image2, what colour is it?"
    assert [im.getpixel((0, 0)) for im in aug.images] == [BLUE, RED, BLUE] and aug.target == 2


def test_grid_geometry():
    assert mia_dpo.grid_cell_boxes(4) == [(0, 40, 448, 488), (488, 40, 936, 488), (0, 528, 448, 976),
                                          (488, 528, 936, 976)]
    assert mia_dpo.grid_canvas_size(4) == (936, 976)
    assert mia_dpo.grid_canvas_size(3) == (3 * 448 + 2 * 40, 488)
    assert mia_dpo.grid_canvas_size(9) == (3 * 448 + 2 * 40, 3 * 488)
    aug = mia_dpo.grid_collage(Image.new("RGB", (100, 50), RED), [Image.new("RGB", (60, 60), BLUE)] * 3,
                               "What is it?", 2)
    canvas = aug.images[0]
    assert canvas.size == (936, 976) and aug.question == "<image>\nIn Image2, what is it?"
    assert canvas.getpixel((488 + 5, 40 + 5)) == RED  # true image, top-left of cell 2, aspect kept: 448 x 224
    assert canvas.getpixel((488 + 5, 40 + 230)) == (255, 255, 255)  # white padding under it
    assert canvas.getpixel((5, 45)) == BLUE and canvas.getpixel((460, 300)) == (255, 255, 255)  # margin
    label = canvas.crop((488 + 20, 0, 488 + 200, 40))
    assert min(label.convert("L").getdata()) < 100  # "Image2" drawn above cell 2
    with pytest.raises(ValueError, match="grid collage holds"):
        mia_dpo.grid_cell_boxes(5)


def test_picture_in_picture_geometry():
    assert mia_dpo.pip_box((100, 80), (50, 50)) == (22, 12, 78, 68)  # fits 70x56, square -> 56x56, centred
    aug = mia_dpo.picture_in_picture(Image.new("RGB", (50, 50), RED), Image.new("RGB", (100, 80), BLUE),
                                     "What colour?", rng=random.Random(0))
    assert aug.images[0].getpixel((50, 40)) == RED and aug.images[0].getpixel((10, 5)) == BLUE
    assert aug.question.startswith("<image>\n") and aug.question.endswith(", what colour?")


#: nine distinct cell colours, far apart in RGB
CELL_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
                (240, 50, 230), (210, 245, 60), (0, 0, 128)]


def _seen(image_processor, image: Image.Image) -> torch.Tensor:
    """``image`` as the model sees it after the processor: ``[H, W, 3]`` on the 0..255 scale."""
    pixels = image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (image_processor.image_mean, image_processor.image_std))
    return ((pixels * std + mean) * 255).permute(1, 2, 0)


def _visible_share(seen: torch.Tensor, colour, box, side: int) -> float:
    """Pixels of ``colour`` in the processed image / the area the ``box`` of a ``side``-px square image should get."""
    scale = seen.shape[0] / side
    expected = (box[2] - box[0]) * scale * (box[3] - box[1]) * scale
    found = ((seen - torch.tensor(colour)).abs().amax(-1) < 16).sum().item()
    return found / expected


@pytest.mark.parametrize("count", sorted(mia_dpo.GRID_LAYOUTS))
def test_every_grid_cell_is_seen_through_llava_preprocessing(count):
    """LLaVA-1.5's image processor (shortest edge 336, centre crop) would cut cells off wide collages; padded to a
    square of its mean colour, every cell reaches the model whole."""
    from visalign.testing.clip import clip_image_processor

    image_processor = clip_image_processor(336)
    fill = mia_dpo.square_fill(image_processor)
    assert fill == tuple(int(m * 255) for m in image_processor.image_mean)
    cells = [Image.new("RGB", (64, 64), c) for c in CELL_COLOURS[:count]]
    aug = mia_dpo.pad_to_square(mia_dpo.grid_collage(cells[0], cells[1:], "what ?", 1), fill)
    square = aug.images[0]
    assert square.width == square.height == max(mia_dpo.grid_canvas_size(count))
    assert square.getpixel((0, 0)) == fill or square.getpixel((square.width - 1, square.height - 1)) == fill
    seen = _seen(image_processor, square)
    for n, (colour, box) in enumerate(zip(CELL_COLOURS, aug.boxes), start=1):
        assert square.getpixel(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)) == colour  # boxes moved along
        assert _visible_share(seen, colour, box, square.width) > 0.8, f"{count}-image grid: cell {n} not seen"


def test_picture_in_picture_on_a_wide_host_is_seen_whole():
    """A 4:1 host would lose three quarters of its area to the centre crop; padded, host and inset are seen whole."""
    from visalign.testing.clip import clip_image_processor

    image_processor = clip_image_processor(336)
    aug = mia_dpo.picture_in_picture(Image.new("RGB", (50, 50), RED), Image.new("RGB", (400, 100), BLUE), "what ?",
                                     rng=random.Random(0))
    aug = mia_dpo.pad_to_square(aug, mia_dpo.square_fill(image_processor))
    assert aug.images[0].size == (400, 400) and aug.boxes == [(165, 165, 235, 235)]  # 70x70 inset, centred
    seen = _seen(image_processor, aug.images[0])
    assert _visible_share(seen, RED, aug.boxes[0], 400) > 0.8
    host_outside_inset = (0, 0, 400, 100 - 70 * 70 / 400)  # the host's area less the inset's, as a box
    assert _visible_share(seen, BLUE, host_outside_inset, 400) > 0.8


def test_square_fill_only_where_the_processor_crops():
    from visalign.testing.vlm import tiny_llava, tiny_llava_next, tiny_qwen2_vl

    assert mia_dpo.square_fill(tiny_llava()[1]) is not None
    assert mia_dpo.square_fill(tiny_llava_next()[1]) is None  # any-resolution tiles keep the whole image
    assert mia_dpo.square_fill(tiny_qwen2_vl()[1]) is None  # dynamic resolution, no crop
    image = Image.new("RGB", (6, 6), RED)
    assert mia_dpo.expand_to_square(image, (1, 2, 3)) == (image, (0, 0))


def test_attention_ratio_on_constructed_maps():
    rows = torch.zeros(2, 12)
    rows[:, 1:5], rows[:, 6:10] = 0.1, 0.3
    spans = image_spans([0, 9, 9, 9, 9, 0, 9, 9, 9, 9, 0, 0], 9)
    assert spans == [(1, 4), (6, 4)]
    assert attention_ratio(rows, spans, "sequence", 1) == pytest.approx(0.25)
    grid = torch.full((1, 17), 0.5)
    amap = grid[0, 1:].view(4, 4)
    amap[:2, :2] = 1.0
    assert attention_ratio(grid, [(1, 16)], "grid", 1, grid=(2, 2)) == pytest.approx(4 / 10)
    assert attention_ratio(grid, [(1, 16)], "grid", 4, grid=(2, 2)) == pytest.approx(2 / 10)
    pip = torch.ones(3, 36)
    assert attention_ratio(pip, [(0, 36)], "pip", 1, pip_fraction=2 / 3) == pytest.approx(16 / 36)


def test_perplexity_thresholds_and_filters():
    scores = [torch.log(torch.tensor([[0.5, 0.25, 0.25]])), torch.log(torch.tensor([[0.1, 0.8, 0.1]]))]
    assert greedy_perplexity(scores) == pytest.approx(1 / math.sqrt(0.4))
    thresholds = MIASelectConfig().thresholds
    assert passes_threshold(0.8, "sequence", 2, thresholds) and not passes_threshold(0.7, "grid", 2, thresholds)
    assert passes_threshold(0.29, "grid", 9, thresholds) and not passes_threshold(0.8, "pip", 1, thresholds)
    with pytest.raises(ValueError, match="no grid threshold for 5 images"):
        passes_threshold(0.1, "grid", 5, thresholds)
    config = MIASelectConfig()
    assert drop_reason("red", "blue", 1.5, True, config) is None
    assert drop_reason("red", "red", 1.5, True, config) == "same_as_ground_truth"
    assert drop_reason("red", "", 1.5, True, config) == "empty"
    assert drop_reason("red", "blue", 1.05, True, config) == "low_perplexity"
    assert drop_reason("x" * 512, "blue", 2, True, config) == "ground_truth_too_long"
    assert drop_reason("red", "blue", 1.5, False, config) == "attention_ratio"


def test_attention_is_measured_on_the_training_prompt():
    """The selection's prompt is the trainer's: BOS first with training_format (the llava-hf template has none),
    the same ids as the collator's prompt, so the image-token positions of the ratios are those trained on."""
    from visalign.data.vlm import VisionPreferenceDataset
    from visalign.data.vlm_collator import VisionPreferenceCollator
    from visalign.testing.vlm import tiny_llava

    model, processor = tiny_llava(hf_format=True)
    model.set_attn_implementation("eager")
    images, prompt = [Image.new("RGB", (30, 30), RED)] * 2, "Image1:<image>\nImage2:<image>\nIn Image1, what ?"
    row = VisionPreferenceDataset([{"images": images, "prompt": prompt, "chosen": "red", "rejected": "blue"}])[0]
    batch = VisionPreferenceCollator(processor)([row])
    trained = batch["input_ids"][0][(batch["attention_mask"][0] - batch["completion_mask"][0]).bool()].tolist()
    for training_format in (True, False):
        *_, prompt_ids = mia_dpo_select.generate_with_attention(model, processor, images, prompt, layer=1,
                                                                max_new_tokens=1, training_format=training_format)
        assert prompt_ids == (trained if training_format else trained[1:])
    assert trained[0] == processor.tokenizer.bos_token_id


def test_selection_counts_each_drop_reason(tmp_path, monkeypatch):
    """Constructed answers, perplexities and attention maps (pip: one 5x5 map) -> exact per-reason counts; a sample
    failing several filters counts under the first one only."""
    from visalign.testing.vlm import tiny_llava

    model, processor = tiny_llava()
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    prompt_ids = [1, *[image_token] * 25, 2]
    cases = {  # question -> (ground truth, answer, greedy perplexity, attention only on the inset)
        "case0 ?": ("it is red .", "it is blue .", 2.0, False),  # kept
        "case1 ?": ("it is red .", " ", 2.0, False),  # empty
        "case2 ?": ("it is red .", "it is red .", 1.0, True),  # same_as_ground_truth (also low PPL, high ratio)
        "case3 ?": ("x" * 512, "it is blue .", 2.0, False),  # ground_truth_too_long
        "case4 ?": ("it is red .", "it is blue .", 1.1, False),  # low_perplexity (PPL must exceed 1.1)
        "case5 ?": ("it is red .", "it is blue .", 1.05, True),  # low_perplexity (also high ratio)
        "case6 ?": ("it is red .", "it is blue .", 2.0, True),  # attention_ratio
    }

    def scripted(model, processor, images, prompt, *, layer, max_new_tokens, training_format):
        _, answer, perplexity, on_inset = cases[prompt.rsplit(", ", 1)[1]]
        amap = torch.zeros(5, 5) if on_inset else torch.ones(5, 5)
        amap[1:4, 1:4] = 1.0  # the central 3x3 of 5x5 (pip_fraction 16/24): ratio 1 or 9/25
        rows = torch.cat([torch.zeros(1), amap.reshape(-1), torch.zeros(1)]).expand(2, -1)
        return answer, perplexity, rows, prompt_ids

    monkeypatch.setattr(mia_dpo_select, "generate_with_attention", scripted)
    samples = [SourceSample(Image.new("RGB", (20, 20), (30 * i, 0, 0)), question, gt, str(i))
               for i, (question, (gt, *_)) in enumerate(cases.items())]
    out = build_mia_dpo(model, processor, samples, tmp_path, kinds=(("pip", 1),))
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert selection == {"generated": 7, "kept": 1, "dropped": {
        "empty": 1, "same_as_ground_truth": 1, "ground_truth_too_long": 1, "low_perplexity": 2, "attention_ratio": 1}}
    rows = json.loads(out.read_text())
    assert [(r["id"], r["rejected"]) for r in rows] == [("0_pip", "it is blue .")]
    assert rows[0]["attention_ratio"] == pytest.approx(9 / 25)


def test_pipeline_writes_data_the_trainer_reads(tmp_path):
    from visalign.testing.vlm import save_tiny_llava
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from visalign.trainers.vlm import VLMDPOConfig, VLMDPOTrainer

    path = save_tiny_llava(tmp_path / "m")
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager")
    processor = AutoProcessor.from_pretrained(path)
    samples = [SourceSample(Image.new("RGB", (40, 40), c), "what colour is the square ?", f"it is {n} .", str(i))
               for i, (c, n) in enumerate(((RED, "red"), (BLUE, "blue"), (GREEN, "green")))]
    keep_all = {k: {n: 1.01 for n in v} for k, v in MIASelectConfig().thresholds.items()}
    config = MIASelectConfig(layer=1, max_new_tokens=3, min_perplexity=1.0, thresholds=keep_all)
    out = build_mia_dpo(model, processor, samples, tmp_path / "mia", kinds=(("sequence", 2), ("grid", 2), ("pip", 1)),
                       config=config)
    rows = json.loads(out.read_text())
    assert [r["kind"] for r in rows] == ["sequence", "grid", "pip"]
    selection = json.loads((out.parent / "selection.json").read_text())
    assert selection["generated"] == selection["kept"] == 3 and sum(selection["dropped"].values()) == 0
    assert isinstance(rows[0]["image"], list) and len(rows[0]["image"]) == 2
    grid = Image.open(tmp_path / "mia" / rows[1]["image"])  # 936x488 collage, padded: the processor crops
    assert grid.width == grid.height == 936 and grid.getpixel((0, 0)) == mia_dpo.square_fill(processor)
    assert all(0.0 <= r["attention_ratio"] <= 1.0 for r in rows)
    args = VLMDPOConfig(output_dir=str(tmp_path / "o"), per_device_batch_size=3, max_steps=1, save_steps=0,
                        image_folder=str(tmp_path / "mia"), use_lora=True, lora_r=2, learning_rate=1e-3)
    trainer = VLMDPOTrainer(model=str(path), args=args, train_dataset=str(out))
    assert trainer.train_dataset.schema == "mia_dpo"
    assert math.isfinite(trainer.train()["train_loss"])
