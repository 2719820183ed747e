"""The `visalign` command line, in-process: dispatch, recipes, env and `train` config resolution (no model loads)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml

import visalign
from visalign.cli import env, main, recipes, train
from visalign.config_io import read_yaml_mapping


@dataclass
class ToyTrainConfig:
    model: str = field(default="tiny", metadata={"help": "model id or folder"})
    beta: float = field(default=0.1, metadata={"help": "DPO beta"})
    max_steps: int = 10
    bf16: bool = False
    run_name: str | None = None
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    reference: Literal["frozen_copy", "disable_adapter"] = "disable_adapter"

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


RUNS: list[ToyTrainConfig] = []


def toy_run(config: ToyTrainConfig) -> dict:
    if config.model == "explode":
        raise RuntimeError("tiny model exploded")
    RUNS.append(config)
    return {"steps": config.max_steps, "final_loss": 0.5}


@pytest.fixture
def toy_method(monkeypatch):
    RUNS.clear()
    monkeypatch.setitem(train.METHODS, "toy", (f"{__name__}:ToyTrainConfig", f"{__name__}:toy_run"))
    return RUNS


@pytest.fixture
def recipe_dir(tmp_path, monkeypatch):
    """A recipes folder standing in for the shipped package data."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "quickstart.yaml").write_text("# description: the smallest run\nmethod: toy\nmax_steps: 2\n")
    (folder / "toy-lora.yaml").write_text("# description: toy with LoRA\nmethod: toy\nbeta: 0.5\n")
    (folder / "notes.txt").write_text("not a recipe")
    monkeypatch.setattr("visalign.recipes._recipes_dir", lambda: folder)
    return folder


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def print_config(argv: list[str], capsys) -> dict:
    assert train.main([*argv, "--print-config"]) == 0, capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def defaults_of(cls) -> dict:
    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(cls)
    }


# ---------------------------------------------------------------- visalign (dispatch)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, (_, text) in main.COMMANDS.items():
        assert f"  {name}" in out and text in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"visalign {visalign.__version__}"


def test_unknown_command_suggests(capsys):
    assert main.main(["trian"]) == 2
    assert "unknown command 'trian'. Did you mean 'train'?" in capsys.readouterr().err


def test_no_command_prints_usage(capsys):
    assert main.main([]) == 2
    assert "usage: visalign" in capsys.readouterr().err


def test_missing_command_module_says_so(monkeypatch, capsys):
    monkeypatch.setitem(main.COMMANDS, "ghost", ("visalign.cli.ghost", "not written yet"))
    assert main.main(["ghost", "--x"]) == 1
    err = capsys.readouterr().err
    assert "`visalign ghost` is not available in this version (visalign.cli.ghost is missing)" in err


def test_dispatch_passes_remaining_arguments(toy_method, tmp_path, capsys):
    path = write_yaml(tmp_path, "method: toy\n")
    assert main.main(["train", "--config", str(path), "--max-steps", "3"]) == 0
    assert [c.max_steps for c in toy_method] == [3]


def test_console_script_help_is_lazy():
    # `visalign --help` must not import torch or any command module.
    code = (
        "import sys\n"
        "from visalign.cli.main import entry_point\n"
        "try:\n    entry_point()\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
        "print('LOADED', sorted(m for m in ('torch', 'diffusers', 'visalign.cli.train') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: visalign" in result.stdout and "LOADED []" in result.stdout


@pytest.mark.parametrize("argv", [["--help"], ["--config", "sdxl-dpo-lora", "--help"],
                                  ["--config", "llava-dpo", "--print-config"]])
def test_train_help_and_print_config_do_not_import_heavy_modules(argv):
    # peft (which loads bitsandbytes) and diffusers cost seconds at import; resolving a config needs neither.
    code = (
        "import sys\n"
        "from visalign.cli.main import main\n"
        f"assert main(['train', *{argv!r}]) == 0\n"
        "print('LOADED', sorted(m for m in ('peft', 'diffusers', 'bitsandbytes') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout[-500:]


def test_lr_scheduler_names_match_transformers():
    from transformers import SchedulerType

    from visalign.trainers.config import LR_SCHEDULERS

    assert LR_SCHEDULERS == tuple(s.value for s in SchedulerType)


# ---------------------------------------------------------------- visalign env


def test_env_prints_installed_versions(capsys):
    assert env.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"- visalign: {visalign.__version__}"
    assert any(line.startswith(f"- torch: {torch.__version__} (CUDA available: ") for line in lines)
    for label, dist in env.PACKAGES:
        try:
            expected = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            expected = "not installed"
        assert f"- {label}: {expected}" in lines
    assert f"- python: {sys.version.split()[0]}" in lines


# ---------------------------------------------------------------- visalign recipes


def test_recipes_list(recipe_dir, capsys):
    assert recipes.main(["list"]) == 0
    rows = [line.split(None, 2) for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        ["NAME", "METHOD", "DESCRIPTION"],
        ["quickstart", "toy", "the smallest run"],
        ["toy-lora", "toy", "toy with LoRA"],
    ]


def test_recipes_cp_refuses_to_overwrite(recipe_dir, tmp_path, capsys):
    dest = tmp_path / "work"
    dest.mkdir()
    assert recipes.main(["cp", "toy-lora", str(dest)]) == 0
    copied = dest / "toy-lora.yaml"
    assert copied.read_text() == (recipe_dir / "toy-lora.yaml").read_text()
    copied.write_text("method: toy\n# my edits\n")
    assert recipes.main(["cp", "toy-lora", str(copied)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert copied.read_text() == "method: toy\n# my edits\n"
    assert recipes.main(["cp", "toy-lora", str(copied), "--force"]) == 0
    assert copied.read_text() == (recipe_dir / "toy-lora.yaml").read_text()


def test_recipes_cp_unknown_name(recipe_dir, tmp_path, capsys):
    assert recipes.main(["cp", "toy-lra", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'toy-lra'. Did you mean 'toy-lora'?" in err and "quickstart, toy-lora" in err
    assert list(tmp_path.glob("*.yaml")) == []


# ---------------------------------------------------------------- visalign train: precedence


def test_defaults_then_yaml_then_cli(toy_method, tmp_path, capsys):
    path = write_yaml(
        tmp_path,
        "method: toy\nmodel: from-yaml\nbeta: 0.5\nbf16: true\nrun_name: yaml-run\n"
        "loss_type: [sigmoid, sft]\nmax_steps: 7\n",
    )
    resolved = print_config(
        ["--config", str(path), "--bf16", "false", "--run-name", "none", "--loss-type", "ipo,sft", "--beta", "0.1",
         "--loss_weights", "1,0.5"],
        capsys,
    )
    expected = {"method": "toy", **defaults_of(ToyTrainConfig)}
    expected.update(
        model="from-yaml",      # YAML only
        max_steps=7,            # YAML only
        bf16=False,             # CLI false over YAML true
        run_name=None,          # CLI none over YAML string
        loss_type=["ipo", "sft"],  # CLI list over YAML list
        beta=0.1,               # CLI value equal to the default still beats the YAML's 0.5
        loss_weights=[1.0, 0.5],  # CLI only
    )
    assert resolved == expected
    assert toy_method == []  # --print-config never runs the trainer


def test_bare_boolean_flag_and_dash_or_underscore(toy_method, tmp_path, capsys):
    path = write_yaml(tmp_path, "method: toy\n")
    resolved = print_config(["--config", str(path), "--bf16", "--max_steps", "4", "--run-name", "r"], capsys)
    assert (resolved["bf16"], resolved["max_steps"], resolved["run_name"]) == (True, 4, "r")


def test_printed_config_is_a_valid_config(toy_method, tmp_path, capsys):
    path = write_yaml(tmp_path, "method: toy\nbeta: 0.3\nloss_type: [a, b]\nloss_weights: [0.5, 0.5]\n")
    first = print_config(["--config", str(path), "--max-steps", "9"], capsys)
    path.write_text(yaml.safe_dump(first))
    assert print_config(["--config", str(path)], capsys) == first


def test_runs_the_method_and_prints_its_result(toy_method, tmp_path, capsys):
    path = write_yaml(tmp_path, "method: toy\nmax_steps: 3\n")
    assert train.main(["--config", str(path), "--reference", "frozen_copy"]) == 0
    assert toy_method == [ToyTrainConfig(max_steps=3, reference="frozen_copy")]
    assert capsys.readouterr().out.splitlines() == ["steps: 3", "final_loss: 0.5"]


def test_method_from_command_line_when_yaml_has_none(toy_method, tmp_path, capsys):
    path = write_yaml(tmp_path, "beta: 0.2\n")
    assert print_config(["--config", str(path), "--method", "toy"], capsys)["beta"] == 0.2
    assert train.main(["--config", str(path)]) == 2
    assert "run.yaml: no `method:` key; add one or pass --method" in capsys.readouterr().err


def test_recipe_by_name_and_quickstart_default(toy_method, recipe_dir, capsys):
    assert print_config(["--config", "toy-lora"], capsys)["beta"] == 0.5
    assert print_config([], capsys)["max_steps"] == 2  # quickstart.yaml


def test_help_lists_the_family_flags(toy_method, tmp_path, capsys):
    path = write_yaml(tmp_path, "method: toy\n")
    assert train.main(["--config", str(path), "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--beta FLOAT DPO beta (default: 0.1)" in out and "--loss-type" in out and "--print-config" in out
    assert "method 'toy' (ToyTrainConfig)" in out


def test_help_shows_the_values_that_will_run(toy_method, tmp_path, capsys):
    # The recipe's values, then the flags given beside --help, replace the class defaults in the help text.
    path = write_yaml(tmp_path, "method: toy\nbeta: 0.5\nmax_steps: 2000\nloss_type: [ipo, sft]\n")
    assert train.main(["--config", str(path), "--max_steps", "7", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "DPO beta (default: 0.5)" in out and "--max_steps INT, --max-steps INT (default: 7)" in out
    assert "(default: ipo,sft)" in out and "(default: tiny)" in out  # model: not in the recipe, class default
    assert toy_method == []


# ---------------------------------------------------------------- visalign train: errors before any model loads


@pytest.mark.parametrize(
    "yaml_text, argv, pattern",
    [
        ("method: toy\nbta: 0.1\n", [], r"run\.yaml: unknown key 'bta' for ToyTrainConfig; did you mean 'beta'\?"),
        ("method: toy\n", ["--beta", "high"], r"overrides: key 'beta': expected a number .*got 'high'"),
        ("method: toy\n", ["--bta", "0.1"], r"unrecognized arguments: --bta 0\.1; did you mean --beta\?"),
        ("method: toy\nbeta: -1\n", [], r"invalid ToyTrainConfig .*run\.yaml.*beta must be > 0, got -1\.0"),
        ("method: dpp\n", [], r"run\.yaml: key 'method': unknown method 'dpp'; did you mean 'dpo'\?"),
        ("method: toy\nbeta: [1\n", [], r"run\.yaml:3:1: malformed YAML"),
        ("method: toy\nlora:\n  r: 4\n", [], r"run\.yaml: key 'lora' holds a nested value"),
    ],
)
def test_config_errors_exit_2_naming_the_key(toy_method, tmp_path, capsys, yaml_text, argv, pattern):
    path = write_yaml(tmp_path, yaml_text)
    assert train.main(["--config", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visalign train: error: ")
    assert re.search(pattern, err), err
    assert toy_method == []


def test_missing_config_file_and_unknown_recipe(toy_method, recipe_dir, tmp_path, capsys):
    assert train.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err
    assert train.main(["--config", "toy-lor"]) == 2
    assert "unknown recipe 'toy-lor'. Did you mean 'toy-lora'?" in capsys.readouterr().err


def test_unavailable_method_is_a_config_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(train.METHODS, "later", ("visalign.trainers.not_yet:Config", "visalign.trainers.not_yet:run"))
    assert train.main(["--config", str(write_yaml(tmp_path, "method: later\n"))]) == 2
    assert "method 'later' is not available: cannot import visalign.trainers.not_yet:Config" in capsys.readouterr().err


def test_runtime_failure_exits_1(toy_method, tmp_path, capsys):
    path = write_yaml(tmp_path, "method: toy\nmodel: explode\n")
    assert train.main(["--config", str(path)]) == 1
    assert "training failed: RuntimeError: tiny model exploded" in capsys.readouterr().err


# ---------------------------------------------------------------- the real tables


@pytest.mark.parametrize("method", sorted(train.METHODS))
def test_every_method_resolves(method):
    config_spec, run_spec = train.METHODS[method]
    module = config_spec.partition(":")[0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not written yet")
    assert dataclasses.is_dataclass(train.import_object(config_spec))
    assert callable(train.import_object(run_spec))


@pytest.mark.parametrize("name", recipes.recipe_names())
def test_every_shipped_recipe_has_description_and_known_method(name):
    with recipes.recipe_file(name) as path:
        assert recipes.recipe_description(path), f"{name}.yaml: first line must be `# description: ...`"
        method = read_yaml_mapping(path).get("method")
    assert method in train.METHODS, f"{name}.yaml: method {method!r} is not in visalign.cli.train.METHODS"


def test_validation_prompts_none_alone_turns_validation_off(capsys):
    # sdxl-dpo-lora sets validation_steps 250; `--validation_prompts none` must not also need `--validation_steps 0`.
    resolved = print_config(["--config", "sdxl-dpo-lora", "--validation_prompts", "none"], capsys)
    assert resolved["validation_prompts"] is None and resolved["validation_steps"] == 250
