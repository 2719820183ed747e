"""visalign.config_io: precedence defaults < YAML < overrides, coercion from annotations, errors naming key and file."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from visalign.config_io import (
    ConfigError,
    add_config_arguments,
    config_to_dict,
    given_overrides,
    load_config,
    read_yaml_mapping,
    save_config,
)


@dataclass
class ToyConfig:
    model: str = field(default="tiny", metadata={"help": "model id or folder"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    max_steps: int = 10
    bf16: bool = False
    output_dir: Path = Path("out")
    run_name: str | None = None
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    resolution: tuple[int, int] = (64, 64)
    reference: Literal["frozen_copy", "disable_adapter", "none"] = "disable_adapter"
    precision: Literal["fp32", "bf16"] | None = None
    post_init_calls: int = field(default=0, init=False)

    def __post_init__(self):
        self.post_init_calls += 1
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"loss_weights has {len(self.loss_weights)} entries but loss_type has {len(self.loss_type)}"
            )


@dataclass
class RequiredConfig:
    dataset: str
    beta: float = 0.1


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- precedence


def test_no_yaml_no_overrides_gives_defaults():
    assert load_config(ToyConfig, None) == ToyConfig()


def test_precedence_defaults_then_yaml_then_overrides(tmp_path):
    yaml_path = write(tmp_path, "model: from-yaml\nmax_steps: 50\nbf16: true\nrun_name: yaml-run\n")
    # max_steps only in YAML; model in YAML and overrides; learning_rate only in overrides; bf16 overridden to False;
    # run_name set to none; loss_type untouched (default).
    config = load_config(
        ToyConfig, yaml_path, {"model": "from-cli", "learning_rate": "3e-5", "bf16": "false", "run_name": "none"}
    )
    assert (config.model, config.max_steps, config.learning_rate) == ("from-cli", 50, 3e-5)
    assert config.bf16 is False and config.run_name is None
    assert config.loss_type == ["sigmoid"] and config.output_dir == Path("out")


def test_override_equal_to_default_still_beats_yaml(tmp_path):
    # TRL #1733: an override that happens to equal the dataclass default must still win over the YAML.
    yaml_path = write(tmp_path, "max_steps: 50\nreference: frozen_copy\n")
    config = load_config(ToyConfig, yaml_path, ["max_steps=10", "reference=disable_adapter"])
    assert config.max_steps == 10 and config.reference == "disable_adapter"


def test_post_init_runs_once_on_merged_values(tmp_path):
    # The YAML alone is inconsistent (2 weights, 1 loss); the override makes it consistent.
    yaml_path = write(tmp_path, "loss_weights: [0.8, 0.2]\n")
    config = load_config(ToyConfig, yaml_path, {"loss_type": "sigmoid,bco_pair"})
    assert config.loss_weights == [0.8, 0.2] and config.post_init_calls == 1
    with pytest.raises(ConfigError, match=r"invalid ToyConfig .*config\.yaml.*loss_weights has 2 entries"):
        load_config(ToyConfig, yaml_path)


def test_override_keys_accept_dashes():
    assert load_config(ToyConfig, None, ["max-steps=7", "loss-type=a,b"]).loss_type == ["a", "b"]


# ---------------------------------------------------------------- coercion


@pytest.mark.parametrize(
    "key, raw, expected",
    [
        ("learning_rate", "1e-5", 1e-5),
        ("learning_rate", "2", 2.0),
        ("max_steps", "12", 12),
        ("max_steps", "1e3", 1000),
        *[("bf16", text, True) for text in ("true", "True", "yes", "1", "on")],
        *[("bf16", text, False) for text in ("false", "FALSE", "no", "0", "off")],
        ("run_name", "null", None),
        ("run_name", "None", None),
        ("run_name", "my-run", "my-run"),
        ("output_dir", "ckpt/a", Path("ckpt/a")),
        ("loss_type", "sigmoid, sft", ["sigmoid", "sft"]),
        ("loss_type", "", []),
        ("loss_weights", "0.8,0.2e0", [0.8, 0.2]),
        ("loss_weights", "none", None),
        ("resolution", "512,768", (512, 768)),
        ("reference", "none", "none"),  # a Literal choice spelled "none" stays a string
        ("precision", "bf16", "bf16"),
        ("precision", "null", None),
    ],
)
def test_override_strings_are_coerced_from_annotations(key, raw, expected):
    overrides = {key: raw}
    if key == "loss_weights" and expected:
        overrides["loss_type"] = "a,b"
    value = getattr(load_config(ToyConfig, None, overrides), key)
    assert value == expected and type(value) is type(expected)


def test_yaml_values_are_coerced(tmp_path):
    # PyYAML reads 1e-5 (no dot) as a string and yes/no as booleans; both must land as the annotated type.
    yaml_path = write(
        tmp_path,
        "learning_rate: 1e-5\nmax_steps: 1e2\nbf16: yes\nrun_name: ~\nloss_type: [sigmoid, sft]\n"
        "loss_weights: [1, 0.5]\nresolution: [32, 48]\noutput_dir: runs/x\n",
    )
    config = load_config(ToyConfig, yaml_path)
    assert config.learning_rate == 1e-5 and type(config.learning_rate) is float
    assert config.max_steps == 100 and config.bf16 is True and config.run_name is None
    assert config.loss_type == ["sigmoid", "sft"] and config.loss_weights == [1.0, 0.5]
    assert type(config.loss_weights[0]) is float
    assert config.resolution == (32, 48) and config.output_dir == Path("runs/x")


def test_typed_python_overrides_pass_through():
    config = load_config(ToyConfig, None, {"learning_rate": 0.5, "bf16": True, "loss_type": ["a"], "max_steps": 3})
    assert (config.learning_rate, config.bf16, config.loss_type, config.max_steps) == (0.5, True, ["a"], 3)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("learning_rte: 1\n", r"config\.yaml: unknown key 'learning_rte' for ToyConfig; did you mean 'learning_rate'"),
        ("zzz: 1\n", r"config\.yaml: unknown key 'zzz' for ToyConfig$"),
        ("max_steps: 2.5\n", r"config\.yaml: key 'max_steps': expected an integer, got 2\.5"),
        ("learning_rate: fast\n", r"config\.yaml: key 'learning_rate': expected a number .*got 'fast'"),
        ("bf16: maybe\n", r"config\.yaml: key 'bf16': expected a boolean"),
        ("model: 123\n", r"config\.yaml: key 'model': expected a string \(quote it in YAML\), got 123"),
        ("reference: copy\n", r"config\.yaml: key 'reference': expected one of frozen_copy, disable_adapter, none"),
        ("resolution: [1, 2, 3]\n", r"config\.yaml: key 'resolution': expected 2 values"),
        ("loss_weights: [0.1, x]\n", r"config\.yaml: key 'loss_weights': .*list item: expected a number"),
        ("model: a\nbf16: [true\n", r"config\.yaml:3:1: malformed YAML"),
        ("model: a\n  bad: indent\n", r"config\.yaml:2:\d+: malformed YAML"),
        ("- model\n- bf16\n", r"config\.yaml: a config must be a flat mapping .*got a list"),
        ("just a string\n", r"config\.yaml: a config must be a flat mapping .*got a str"),
        ("optimizer:\n  lr: 1\n", r"config\.yaml: key 'optimizer' holds a nested value"),
        ("loss_type: [[a]]\n", r"config\.yaml: key 'loss_type' holds a nested value"),
        ("max_steps: 1\nbf16: 1\nmax_steps: 2\n", r"config\.yaml:3: duplicate key 'max_steps' \(first given on line 1"),
    ],
)
def test_bad_yaml_errors_name_file_and_key(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(ToyConfig, write(tmp_path, text))


def test_bad_override_errors_name_key():
    with pytest.raises(ConfigError, match=r"overrides: unknown key 'max_stpes' .*did you mean 'max_steps'"):
        load_config(ToyConfig, None, ["max-stpes=3"])
    with pytest.raises(ConfigError, match=r"overrides: key 'bf16': expected a boolean .*got 'si'"):
        load_config(ToyConfig, None, {"bf16": "si"})
    with pytest.raises(ConfigError, match=r"override 'max_steps' is not of the form key=value"):
        load_config(ToyConfig, None, ["max_steps"])
    with pytest.raises(ConfigError, match=r"overrides: key 'run_name': expected a string .*or none/null, got 3"):
        load_config(ToyConfig, None, {"run_name": 3})


def test_missing_file_and_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(ToyConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"RequiredConfig: missing required key\(s\) dataset"):
        load_config(RequiredConfig, write(tmp_path, "beta: 0.2\n"))
    assert load_config(RequiredConfig, None, ["dataset=./pairs"]) == RequiredConfig("./pairs")


def test_ignore_keys_skips_caller_keys_only(tmp_path):
    yaml_path = write(tmp_path, "method: dpo\nmax_steps: 3\n")
    assert load_config(ToyConfig, yaml_path, ignore_keys=("method",)).max_steps == 3
    with pytest.raises(ConfigError, match="unknown key 'method'"):
        load_config(ToyConfig, yaml_path)


def test_empty_yaml_is_empty_mapping(tmp_path):
    assert read_yaml_mapping(write(tmp_path, "# only a comment\n")) == {}
    assert load_config(ToyConfig, write(tmp_path, "")) == ToyConfig()


# ---------------------------------------------------------------- saving


def test_config_to_dict_is_flat_and_yaml_safe():
    config = ToyConfig(output_dir=Path("a/b"), resolution=(8, 16), loss_type=["x"], run_name=None)
    expected = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    expected.update(output_dir="a/b", resolution=[8, 16])
    assert config_to_dict(config) == expected  # init=False field post_init_calls is left out
    with pytest.raises(TypeError, match="expects a dataclass instance"):
        config_to_dict(ToyConfig)


def test_save_then_load_round_trips(tmp_path):
    config = ToyConfig(
        model="m", learning_rate=1e-5, max_steps=3, bf16=True, output_dir=Path("o"), run_name=None,
        loss_type=["sigmoid", "sft"], loss_weights=[0.8, 1.0], resolution=(32, 48), precision="bf16",
    )
    path = save_config(config, tmp_path / "sub" / "config.yaml")
    assert path == tmp_path / "sub" / "config.yaml"
    assert load_config(ToyConfig, path) == config
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]  # no temporary file left behind


def test_save_replaces_existing_file(tmp_path):
    path = write(tmp_path, "garbage: [", "config.yaml")
    save_config(ToyConfig(max_steps=4), path)
    assert load_config(ToyConfig, path).max_steps == 4


# ---------------------------------------------------------------- argparse


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_config_arguments(parser, ToyConfig)
    return parser


def test_flags_default_to_not_given():
    assert given_overrides(make_parser().parse_args([]), ToyConfig) == {}


def test_flags_accept_underscores_and_dashes_and_stay_strings():
    args = make_parser().parse_args(["--max-steps", "10", "--learning_rate", "1e-4", "--loss-type", "a,b", "--bf16"])
    assert given_overrides(args, ToyConfig) == {
        "max_steps": "10", "learning_rate": "1e-4", "loss_type": "a,b", "bf16": "true"
    }


def test_flags_then_load_config_gives_cli_precedence(tmp_path):
    yaml_path = write(tmp_path, "max_steps: 50\nbf16: true\n")
    args = make_parser().parse_args(["--max_steps", "10", "--bf16", "false"])
    config = load_config(ToyConfig, yaml_path, given_overrides(args, ToyConfig))
    assert config.max_steps == 10 and config.bf16 is False


def test_literal_flags_have_choices(capsys):
    parser = make_parser()
    assert given_overrides(parser.parse_args(["--precision", "none"]), ToyConfig) == {"precision": "none"}
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--reference", "copy"])
    assert exc.value.code == 2
    assert "--reference: invalid choice: 'copy'" in capsys.readouterr().err


def test_help_shows_metadata_help_and_defaults():
    text = " ".join(make_parser().format_help().split())
    assert "--learning_rate FLOAT, --learning-rate FLOAT AdamW learning rate (default: 0.0001)" in text
    assert "--loss_type A,B,..., --loss-type A,B,... (default: sigmoid)" in text
    assert "--bf16 [{true,false}] (default: false)" in text
    assert "--reference {frozen_copy,disable_adapter,none} (default: disable_adapter)" in text
    assert "--precision {fp32,bf16,none,null} (default: none)" in text
    assert "--post_init_calls" not in text  # init=False fields are not configurable


@dataclass
class _AliasedConfig:
    loss_type: str = field(default="sigmoid", metadata={"help": "the loss", "aliases": ("loss",)})


def test_field_aliases_become_flags():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, _AliasedConfig)
    assert given_overrides(parser.parse_args(["--loss", "ipo"]), _AliasedConfig) == {"loss_type": "ipo"}
    assert given_overrides(parser.parse_args(["--loss-type", "hinge"]), _AliasedConfig) == {"loss_type": "hinge"}
