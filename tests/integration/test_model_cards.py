"""A written model card's code runs as written and the card carries the run's metrics (issue 21)."""

from __future__ import annotations

import re

from visalign.trainers.text import DPOConfig, DPOTrainer


def test_text_lora_card_runs_and_holds_the_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = DPOConfig(output_dir="out", model="builtin:tiny-llama", dataset="builtin:synthetic-preferences",
                     max_steps=2, per_device_batch_size=4, use_lora=True, lora_r=4, lora_alpha=4, report_to="none",
                     save_steps=0)
    result = DPOTrainer(args=args).train()
    assert "saved the trained model to out" in capsys.readouterr().out
    card = (tmp_path / "out" / "README.md").read_text()
    assert str(tmp_path) not in card and "base_model:" not in card  # no absolute path, no hub id for a built-in
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)  # the card's code, as written, from the folder the run was started in
    assert type(namespace["model"]).__name__ == "PeftModelForCausalLM"
    assert "## Results" in card and f"| `train_loss` | {result['train_loss']:.6g} |" in card
