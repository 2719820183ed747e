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


# ------------------------------------------------------------------------------------------------ model families

#: Where family-specific code lives (``visalign.models.families``), and the module that keeps the old public names.
FAMILY_PACKAGE = "visalign/models/families/"
#: ``visalign.models.diffusion`` defines ``SD``/``SDXL`` from the adapters, for callers that import them from there.
FAMILY_NAME_REEXPORT = "visalign/models/diffusion.py"
FAMILY_NAMES = ("SD", "SDXL")


def _names(node: ast.AST) -> set[str]:
    """The identifiers an expression reads (``components.family`` gives ``family``)."""
    return {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node)
            if isinstance(n, (ast.Name, ast.Attribute))}


def family_branches(root: Path) -> list[str]:
    """``path:line: what`` for each family branch outside ``visalign/models/families/``: a comparison with a
    ``family`` value or a family constant, a comparison with a registered family's name (``"sd"``, ``"sdxl"``), or a
    use or import of the ``SD``/``SDXL`` constants (``visalign/models/diffusion.py`` may define them); one per line."""
    from visalign.models.families import FAMILIES

    found: dict[tuple[str, int], str] = {}
    for path in sorted((root / "visalign").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(FAMILY_PACKAGE):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), rel)):
            what = None
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                literals = {o.value for o in operands if isinstance(o, ast.Constant)}
                if set().union(*map(_names, operands)) & {"family", *FAMILY_NAMES} or literals & set(FAMILIES):
                    what = f"compares a family ({ast.unparse(node)})"
            elif rel != FAMILY_NAME_REEXPORT:
                if isinstance(node, ast.Name) and node.id in FAMILY_NAMES:
                    what = f"uses {node.id}"
                elif isinstance(node, ast.ImportFrom) and {a.name for a in node.names} & set(FAMILY_NAMES):
                    what = f"imports {sorted({a.name for a in node.names} & set(FAMILY_NAMES))}"
            if what is not None:
                found.setdefault((rel, node.lineno), what)
    return [f"{rel}:{line}: {what}" for (rel, line), what in sorted(found.items())]


def test_no_family_branch_outside_the_family_adapters():
    bad = family_branches(ROOT)
    assert not bad, ("family-specific code outside visalign/models/families (ask components.adapter, a "
                     f"visalign.models.families.DiffusionFamily, instead): {bad}")


def test_family_scan_sees_every_branch_form(tmp_path):
    files = {
        "evaluation/a.py": "if components.family == 'sdxl':\n    pass\n",
        "evaluation/b.py": "from visalign.models.diffusion import SDXL, encode_images\nx = family != SDXL\n",
        "evaluation/c.py": "tag = 'xl' if name == 'sdxl' else 'sd'\nok = kind == 'text'\n",
        "evaluation/d.py": "guidance = {SD: 7.5}[family]\n",
        "models/families/sdxl.py": "x = family == 'sdxl'\n",
    }
    for name, text in files.items():
        (tmp_path / "visalign" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "visalign" / name).write_text(text)
    assert family_branches(tmp_path) == [
        "visalign/evaluation/a.py:1: compares a family (components.family == 'sdxl')",
        "visalign/evaluation/b.py:1: imports ['SDXL']",
        "visalign/evaluation/b.py:2: compares a family (family != SDXL)",
        "visalign/evaluation/c.py:1: compares a family (name == 'sdxl')",
        "visalign/evaluation/d.py:1: uses SD",
    ]
