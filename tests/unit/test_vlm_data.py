"""Vision preference rows and the collator's layout, as exact tensors on the tiny LLaVA processor."""

import pytest
import torch
from PIL import Image

from visalign.data.vlm import VisionPreferenceDataset, detect_schema, prompt_to_messages
from visalign.data.vlm_collator import VisionPreferenceCollator, flush_left
from visalign.testing.vlm import tiny_llava


def test_prompt_to_messages_keeps_image_positions():
    assert prompt_to_messages("Image1:<image>\nIn Image1, what ?", 1) == [{"role": "user", "content": [
        {"type": "text", "text": "Image1:"}, {"type": "image"}, {"type": "text", "text": "\nIn Image1, what ?"}]}]
    assert prompt_to_messages("what ?", 2)[0]["content"][:2] == [{"type": "image"}, {"type": "image"}]


def test_schema_detection_and_errors():
    assert detect_schema(["text", "image", "idx"]) == "rlhfv"
    assert detect_schema(["image", "prompt", "chosen", "rejected"], {"image": ["a.png"]}) == "mia_dpo"
    assert detect_schema(["images", "prompt", "chosen", "rejected"], {"images": [Image.new("RGB", (2, 2))]}) == "trl"
    with pytest.raises(ValueError, match=r"train is missing \['image or images'\]"):
        detect_schema(["prompt", "chosen", "rejected"], name="train")
    with pytest.raises(ValueError, match="rows row 0: column 'chosen' is an empty completion"):
        VisionPreferenceDataset([{"image": "a.png", "prompt": "q", "chosen": " ", "rejected": "b"}], name="rows")[0]


def test_flush_left():
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    ids = torch.tensor([[9, 9, 5, 6], [9, 7, 8, 9]])
    out_mask, out_ids = flush_left(mask, ids)
    assert out_mask.tolist() == [[0, 1, 1], [1, 1, 0]] and out_ids.tolist() == [[9, 5, 6], [7, 8, 9]]


def test_layout_left_padded_prompt_right_padded_completion():
    _, processor = tiny_llava()
    tok = processor.tokenizer
    rows = [{"images": [Image.new("RGB", (30, 30), (255, 0, 0))], "prompt": "what colour ?", "chosen": "red",
             "rejected": "it is blue"},
            {"images": [Image.new("RGB", (30, 30), (0, 0, 255))], "prompt": "what colour is the shape ?",
             "chosen": "blue", "rejected": "red"}]
    data = VisionPreferenceDataset(rows, name="rows")
    batch = VisionPreferenceCollator(processor)([data[0], data[1]])
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    image = [tok.convert_tokens_to_ids("<image>")] * 25
    pad = tok.pad_token_id
    prompt0 = ids("user :") + image + ids("what colour ? assistant :")
    prompt1 = ids("user :") + image + ids("what colour is the shape ? assistant :")
    gap = len(prompt1) - len(prompt0)
    end = ids("</s>")
    expected = [
        [pad] * gap + prompt0 + ids("red") + end + [pad, pad],
        prompt1 + ids("blue") + end + [pad, pad],
        [pad] * gap + prompt0 + ids("it is blue") + end,
        prompt1 + ids("red") + end + [pad, pad],
    ]
    assert batch["input_ids"].tolist() == expected
    assert batch["attention_mask"].tolist() == [[int(t != pad) for t in row] for row in expected]
    width = len(expected[0])
    assert batch["completion_mask"][0].tolist() == [0] * (gap + len(prompt0)) + [1, 1, 0, 0]
    assert batch["completion_mask"][2].tolist() == [0] * (width - 4) + [1, 1, 1, 1]
    assert batch["pixel_values"].shape == (4, 3, 30, 30)
    torch.testing.assert_close(batch["pixel_values"][0], batch["pixel_values"][2])
