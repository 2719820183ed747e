"""Training-config validation: bad values fail when the config is built, naming the key (no model loads)."""

from __future__ import annotations

import pytest

from visalign.cli import train
from visalign.config_io import ConfigError, load_config
from visalign.models.lora import apply_lora, check_lora_targets
from visalign.testing import tiny_llama, tiny_sd_components, word_level_tokenizer
from visalign.trainers.diffusion import DiffusionConfig
from visalign.trainers.text import DPOConfig


@pytest.mark.parametrize("cls, overrides, pattern", [
    (DiffusionConfig, {"resolution": "36"}, r"DiffusionConfig\.resolution must be none or a positive multiple of 8"),
    (DPOConfig, {"adam_beta1": "1.5"}, r"DPOConfig\.adam_beta1 must be in \[0, 1\); got 1\.5"),
    (DPOConfig, {"adam_beta2": "-0.1"}, r"DPOConfig\.adam_beta2 must be in \[0, 1\)"),
    (DPOConfig, {"adam_epsilon": "-1"}, r"DPOConfig\.adam_epsilon must be > 0; got -1\.0"),
    (DPOConfig, {"seed": "-1"}, r"DPOConfig\.seed must be an integer in \[0, 2\*\*32\)"),
    (DPOConfig, {"beta": "1e300"}, r"DPOConfig\.beta must be > 0 and <= 1e\+06"),
    (DiffusionConfig, {"beta": "inf"}, r"DiffusionConfig\.beta must be > 0 and <= 1e\+06"),
])
def test_bad_values_fail_when_the_config_is_built(cls, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(cls, None, {"model": "no/such-model", **overrides})


def test_negative_numbers_on_the_command_line_are_values(capsys):
    # argparse's own negative-number pattern has no exponent: "-1e-4" was read as an unknown option.
    assert train.main(["--config", "quickstart", "--learning_rate", "-1e-4", "--print-config"]) == 2
    assert "learning_rate must be > 0; got -0.0001" in capsys.readouterr().err
    assert train.main(["--config", "quickstart", "--learning_rate", "2e-4", "--warmup_steps", "0",
                       "--print-config"]) == 0
    assert "learning_rate: 0.0002" in capsys.readouterr().out


def test_misspelled_lora_target_names_the_layers_that_exist():
    model = tiny_llama(word_level_tokenizer())
    with pytest.raises(ValueError, match=r"lora_target_modules \['q_prjo'\] match no layer of LlamaForCausalLM; "
                                         r"adaptable layer names are \[.*'q_proj'.*\]"):
        apply_lora(model, r=2, alpha=2, target_modules=["k_proj", "q_prjo"])  # peft alone adapts k_proj silently
    unet = tiny_sd_components()["unet"]
    check_lora_targets(unet, ["to_q", "to_out.0"])
    with pytest.raises(ValueError, match=r"\['to_kk'\] match no layer of UNet2DConditionModel.*'to_out\.0'"):
        check_lora_targets(unet, ["to_q", "to_kk"])
