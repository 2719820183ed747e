"""``builtin:NAME`` resolution: pass-through, code-built models, shipped assets, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from visalign.models import builtin
from visalign.models.builtin import builtin_models, resolve_model


def test_hub_ids_and_paths_pass_through(tmp_path):
    assert resolve_model("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert resolve_model(tmp_path) == str(tmp_path)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="builtin:nope.*builtin:tiny-llama"):
        resolve_model("builtin:nope")


def test_code_model_is_built_once_into_the_cache(tmp_path, monkeypatch):
    calls = []

    def save(folder: Path) -> None:
        calls.append(folder)
        (folder / "config.json").write_text("{}")

    monkeypatch.setenv("VISALIGN_CACHE", str(tmp_path))
    monkeypatch.setitem(builtin.CODE_MODELS, "toy", save)
    first, second = resolve_model("builtin:toy"), resolve_model("builtin:toy")
    assert first == second == str(tmp_path / "builtin" / "toy")
    assert len(calls) == 1 and (tmp_path / "builtin" / "toy" / "config.json").is_file()
    assert "toy" in builtin_models()


def test_shipped_model_resolves_to_its_asset_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "ASSETS", tmp_path)
    monkeypatch.setitem(builtin.SHIPPED_MODELS, "toy-sd", "scripts/make_toy.py --out visalign/assets/toy-sd")
    with pytest.raises(FileNotFoundError, match="not installed.*scripts/make_toy.py"):
        resolve_model("builtin:toy-sd")
    (tmp_path / "toy-sd").mkdir()
    (tmp_path / "toy-sd" / "model_index.json").write_text("{}")
    assert resolve_model("builtin:toy-sd") == str(tmp_path / "toy-sd")
