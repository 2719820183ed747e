"""The shapes VLM learns MIA-DPO's multi-image sequence questions, and the alignment bench's MIA-DPO row runs end to
end on the shipped model: selection by ``build_mia_dpo``, training on its JSON, exactness on held-out sequences."""

from __future__ import annotations

import json

from transformers import AutoProcessor

from tests.helpers.scripts import ROOT, load_bench, load_script
from visalign.shapes.vqa import examples


def unknown_tokens(processor, item) -> int:
    text = processor.apply_chat_template(item.messages, add_generation_prompt=True)
    ids = processor(images=item.images, text=[text], return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    return ids.tolist().count(processor.tokenizer.unk_token_id)


def test_quick_training_reports_single_and_sequence_accuracy_and_knows_the_sequence_words(tmp_path):
    script = load_script(ROOT / "scripts" / "train_shapes_vlm.py", "train_shapes_vlm")
    assert script.main(["--out", str(tmp_path / "vlm"), "--quick"]) == 0
    metrics = json.loads((tmp_path / "vlm" / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == set(metrics["sequence_accuracy"]) == {"colour", "shape", "describe", "all"}
    processor = AutoProcessor.from_pretrained(tmp_path / "vlm")
    single, sequence = examples(1, seed=0)[0], examples(1, seed=0, num_images=(3,))[0]
    # the chat roles ("user :", "assistant :") are outside the vocabulary either way; the image labels are not
    assert unknown_tokens(processor, sequence) == unknown_tokens(processor, single)


def test_the_mia_dpo_row_selects_pairs_trains_and_scores_held_out_sequences(tmp_path, monkeypatch):
    bench = load_bench("alignment")
    monkeypatch.setattr(bench, "VLM_TRAIN_QUESTIONS", 24)
    monkeypatch.setattr(bench, "VLM_HELD_OUT", 6)
    monkeypatch.setattr(bench, "VLM_TRAINING", {**bench.VLM_TRAINING, "max_steps": 2, "per_device_batch_size": 2})
    row = bench.run_vlm_method("mia-dpo", tmp_path, seed=0)
    selection = json.loads((tmp_path / "mia-data" / "selection.json").read_text())
    assert selection["generated"] == 24 and selection["kept"] + sum(selection["dropped"].values()) == 24
    pairs = json.loads((tmp_path / "mia-data" / "mia_dpo.json").read_text())
    assert len(pairs) == selection["kept"] > 0
    assert all(isinstance(p["image"], list) and len(p["image"]) in bench.MIA_SEQUENCE_IMAGES for p in pairs)
    assert all(p["prompt"].count("<image>") == len(p["image"]) and p["chosen"] != p["rejected"] for p in pairs)
    assert row["method"] == "mia-dpo" and 0.0 <= row["reward_before"] <= 1.0 and 0.0 <= row["reward_after"] <= 1.0
    assert (tmp_path / "mia-dpo" / "adapter_model.safetensors").exists()
