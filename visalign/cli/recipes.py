"""`visalign recipes list|cp`: the shipped YAML presets (package data and lookup in `visalign.recipes`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from visalign.config_io import ConfigError, read_yaml_mapping
from visalign.recipes import recipe_description, recipe_file, recipe_names


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
