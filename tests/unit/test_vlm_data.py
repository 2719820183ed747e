"""Vision preference rows and the collator's layout, as exact tensors on the tiny LLaVA processor."""

import pytest
import torch
from PIL import Image

from visalign.data.vlm import VisionPreferenceDataset, detect_schema, prompt_to_messages, template_moves_images_first
from visalign.data.vlm_collator import VisionPreferenceCollator, flush_left
from visalign.testing.vlm import LLAVA_HF_CHAT_TEMPLATE, tiny_llava, tiny_qwen2_vl


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


def _sequences(batch) -> tuple[list[list[int]], list[list[int]]]:
    """Per row: the unpadded token ids, and the completion's."""
    mask, completion = batch["attention_mask"].bool(), batch["completion_mask"].bool()
    return ([ids[m].tolist() for ids, m in zip(batch["input_ids"], mask)],
            [ids[m].tolist() for ids, m in zip(batch["input_ids"], completion)])


def test_training_format_on_the_llava_hf_template():
    """LLaVA-1.5 trained on ``<s>USER: <image>\\n... ASSISTANT: answer</s>``; the llava-hf template renders neither
    BOS nor EOS. training_format adds both (and no second BOS when the template writes one); off, the template's text
    is fed as it is (TRL 1.16)."""
    _, processor = tiny_llava(hf_format=True)
    tok = processor.tokenizer
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    row = VisionPreferenceDataset([{"images": [Image.new("RGB", (30, 30), (255, 0, 0))],
                                    "prompt": [{"role": "user", "content": "what colour ?"}],
                                    "chosen": [{"role": "assistant", "content": "red"}],
                                    "rejected": [{"role": "assistant", "content": "it is blue"}]}], name="rows")[0]
    prompt = ids("USER:") + [tok.convert_tokens_to_ids("<image>")] * 25 + ids("what colour ? ASSISTANT:")
    for training_format, bos, eos in ((True, [tok.bos_token_id], [tok.eos_token_id]), (False, [], [])):
        collator = VisionPreferenceCollator(processor, training_format=training_format)
        sequences, completions = _sequences(collator([row]))
        assert sequences == [bos + prompt + ids("red") + eos, bos + prompt + ids("it is blue") + eos]
        assert completions == [ids("red") + eos, ids("it is blue") + eos]
    assert collator.render(row, 1)[1] == " red "  # the template's text: the turn ends with a space
    assert VisionPreferenceCollator(processor).render(row, 1)[1] == " red</s>"  # as LLaVA's "ASSISTANT: red</s>"
    processor.chat_template = "{{ bos_token }}" + LLAVA_HF_CHAT_TEMPLATE
    sequences, _ = _sequences(VisionPreferenceCollator(processor)([row]))
    assert sequences[0][:2] == [tok.bos_token_id, *ids("USER:")]  # one BOS, the template's


def test_multi_image_placeholders_stay_in_place_under_the_llava_hf_template():
    """llava-hf's template renders all image parts before the text, which would turn MIA-DPO's
    ``Image1: <image>\nImage2: <image>`` into ``<image>\n<image>\nImage1: Image2:``; the placeholders go into the
    text as the image token instead, in place, as LLaVA's own conversation format has them."""
    _, processor = tiny_llava(hf_format=True)
    assert template_moves_images_first(processor)
    image = Image.new("RGB", (30, 30), (255, 0, 0))
    row = VisionPreferenceDataset([{"images": [image, image], "prompt": "red <image> blue <image> what colour ?",
                                    "chosen": "red", "rejected": "blue"}], name="rows")[0]
    collator = VisionPreferenceCollator(processor)
    assert collator.render(row, 2)[0] == "USER: red <image> blue <image> what colour ? ASSISTANT:"
    tok = processor.tokenizer
    sequences, _ = _sequences(collator([row]))
    image_id = tok.convert_tokens_to_ids("<image>")
    red, blue = (tok.convert_tokens_to_ids(w) for w in ("red", "blue"))
    first_image = sequences[0].index(image_id)
    assert sequences[0][first_image - 1] == red and blue in sequences[0][first_image:]
    assert not template_moves_images_first(tiny_qwen2_vl()[1])


def test_training_format_keeps_qwen2_vl_turns():
    """Qwen2-VL's template closes each turn with <|im_end|> and its tokenizer adds no BOS: training_format changes
    nothing (no second end-of-turn token)."""
    _, processor = tiny_qwen2_vl()
    tok = processor.tokenizer
    row = VisionPreferenceDataset([{"images": [Image.new("RGB", (56, 56), (255, 0, 0))], "prompt": "what colour ?",
                                    "chosen": "red", "rejected": "it is blue"}], name="rows")[0]
    batches = [VisionPreferenceCollator(processor, training_format=flag)([row]) for flag in (True, False)]
    for key in ("input_ids", "attention_mask", "completion_mask"):
        torch.testing.assert_close(batches[0][key], batches[1][key])
    sequences, completions = _sequences(batches[0])
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert completions[0] == tok("red", add_special_tokens=False)["input_ids"] + [im_end]
    assert sequences[0][0] == tok.convert_tokens_to_ids("<|im_start|>")
