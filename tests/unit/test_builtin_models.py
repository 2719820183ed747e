"""``builtin:NAME`` resolution: pass-through, code-built models, shipped assets, clear errors; missing paths and
uncached offline hub ids fail at once (``visalign.models.hub``)."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import constants as hub_constants
import pytest

from visalign.errors import NotFoundError
from visalign.models import builtin
from visalign.models.builtin import builtin_models, resolve_model


def test_hub_ids_and_paths_pass_through(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # online: the download is from_pretrained's
    assert resolve_model("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert resolve_model(tmp_path) == str(tmp_path)


@pytest.mark.parametrize("spec", ["./missing-model", "outputs/run/final", "/no/such/folder", "~/nope-model"])
def test_a_missing_path_fails_at_once_naming_it(spec, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # no network look-up even online
    with pytest.raises(NotFoundError, match=f"model '{re.escape(spec)}': no such file or folder; pass an existing"):
        resolve_model(spec)


def test_offline_hub_id_must_be_cached(tmp_path, monkeypatch):
    """Offline, an uncached id fails naming it and what to do; a cached snapshot (the hub cache layout) passes."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(NotFoundError, match=r"VAE 'org/vae' is not in the Hugging Face cache.*hf download org/vae"):
        resolve_model("org/vae", what="VAE")
    repo = tmp_path / "models--org--vae"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    assert resolve_model("org/vae") == "org/vae"


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(FileNotFoundError, match="builtin:nope.*builtin:tiny-llama"):
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
