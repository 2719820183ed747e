"""Layering (DESIGN.md "The axes as objects"): ``visalign/cli/`` is the roof; the library (``visalign``,
``reward_models``), ``pipelines/`` and ``bench/`` never import it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("visalign", "reward_models", "pipelines", "bench")
#: The command line itself, and ``python -m visalign``, which only starts it.
ROOF = ("visalign/cli/", "visalign/__main__.py")


def _imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``tree`` (also inside functions), relative imports resolved against
    ``package``, ``from X import Y`` read as ``X.Y`` (Y may be a module)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def cli_imports(root: Path) -> list[str]:
    """``path:line: module`` for each import of ``visalign.cli`` outside the roof, under ``root``."""
    bad = []
    for top in LIBRARY:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith(ROOF):
                continue
            package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
            for line, module in _imported_modules(ast.parse(path.read_text(encoding="utf-8"), rel), package):
                if module == "visalign.cli" or module.startswith("visalign.cli."):
                    bad.append(f"{rel}:{line}: {module}")
    return bad


def test_library_never_imports_the_cli():
    bad = cli_imports(ROOT)
    assert not bad, ("the library imports visalign.cli (move what it needs into the library and let the CLI import "
                     f"that): {bad}")


def test_scan_sees_every_import_form(tmp_path):
    package = tmp_path / "visalign" / "trainers"
    package.mkdir(parents=True)
    (package / "a.py").write_text("import visalign.cli.score\n")
    (package / "b.py").write_text("def f():\n    from visalign.cli.recipes import recipe_file\n")
    (package / "c.py").write_text("from visalign import cli\nfrom visalign import config_io\n")
    (package / "d.py").write_text("from ..cli import eval\nfrom ..clip import x\n")
    (tmp_path / "visalign" / "cli").mkdir()
    (tmp_path / "visalign" / "cli" / "train.py").write_text("from visalign.cli.main import one_line\n")
    assert cli_imports(tmp_path) == ["visalign/trainers/a.py:1: visalign.cli.score",
                                     "visalign/trainers/b.py:2: visalign.cli.recipes.recipe_file",
                                     "visalign/trainers/c.py:1: visalign.cli",
                                     "visalign/trainers/d.py:1: visalign.cli.eval"]
