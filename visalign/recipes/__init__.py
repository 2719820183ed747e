"""The shipped YAML presets (package data in this folder) and their lookup.

Each recipe's first line is ``# description: <one line>``; its ``method:`` key picks the trainer family.
``recipe_file(NAME_OR_PATH)`` is how ``visalign train --config`` (and ``visalign recipes``) find one.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.resources
from collections.abc import Iterator
from pathlib import Path

from visalign.config_io import ConfigError

_DESCRIPTION_PREFIX = "# description:"


def _recipes_dir():
    return importlib.resources.files("visalign") / "recipes"


def recipe_names() -> list[str]:
    """Names of the shipped recipes (file names without `.yaml`), sorted."""
    folder = _recipes_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _unknown_recipe(name: str) -> ConfigError:
    names = recipe_names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(
        f"unknown recipe {name!r}.{hint} Shipped recipes: {', '.join(names) or 'none'}; "
        "or give the path of a YAML file."
    )


@contextlib.contextmanager
def recipe_file(name_or_path: str | Path) -> Iterator[Path]:
    """Yield a filesystem path for a YAML file path or a shipped recipe name (raises `ConfigError` if neither)."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        yield candidate
        return
    text = str(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in text or "\\" in text:
        raise ConfigError(f"{text}: config file not found")
    resource = _recipes_dir() / f"{text}.yaml"
    if not resource.is_file():
        raise _unknown_recipe(text)
    with importlib.resources.as_file(resource) as path:
        yield path


def recipe_description(path: Path) -> str:
    """The text after `# description:` on the recipe's first line ('' if absent)."""
    with open(path, encoding="utf-8") as f:
        first = f.readline().strip()
    return first[len(_DESCRIPTION_PREFIX) :].strip() if first.startswith(_DESCRIPTION_PREFIX) else ""
