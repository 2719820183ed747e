"""`visalign recipes list|cp`: the shipped YAML presets (package data under `visalign/recipes/`).

Each recipe's first line is `# description: <one line>`; its `method:` key picks the trainer family.
`visalign train --config NAME` finds recipes through `recipe_file` here.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.resources
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from visalign.config_io import ConfigError, read_yaml_mapping

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


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visalign recipes", description="List the shipped recipes or copy one to edit.", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="{list,cp}")
    sub.add_parser("list", help="name, method and description of every shipped recipe")
    cp = sub.add_parser("cp", help="copy a recipe to a file you can edit")
    cp.add_argument("name", help="recipe name, as shown by `visalign recipes list`")
    cp.add_argument("dest", nargs="?", default=".", help="destination file or folder (default: ./NAME.yaml)")
    cp.add_argument("--force", action="store_true", help="overwrite the destination if it exists")
    return parser


def _list() -> int:
    rows = []
    for name in recipe_names():
        with recipe_file(name) as path:
            method = read_yaml_mapping(path).get("method", "?")
            rows.append((name, str(method), recipe_description(path)))
    if not rows:
        print("no recipes shipped in this installation", file=sys.stderr)
        return 0
    widths = [max(len(row[i]) for row in rows + [("NAME", "METHOD", "")]) for i in range(2)]
    for name, method, description in [("NAME", "METHOD", "DESCRIPTION")] + rows:
        print(f"{name:<{widths[0]}}  {method:<{widths[1]}}  {description}".rstrip())
    return 0


def _copy(name: str, dest: str, force: bool) -> int:
    target = Path(dest)
    if target.is_dir():
        target = target / f"{name}.yaml"
    if target.exists() and not force:
        print(f"visalign recipes cp: error: {target} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    with recipe_file(name) as path:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    print(f"copied recipe {name!r} to {target}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `visalign recipes`; returns the exit code (2 for an unknown recipe name or an existing destination)."""
    args = make_parser().parse_args(argv)
    try:
        return _list() if args.action == "list" else _copy(args.name, args.dest, args.force)
    except ConfigError as exc:
        print(f"visalign recipes: error: {exc}", file=sys.stderr)
        return 2
