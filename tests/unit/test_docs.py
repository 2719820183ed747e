"""The user docs in ``docs/`` against the code: the generated loss table is current, every ``visalign ...`` command
line shown parses with its command's own parser (``visalign train`` resolves the whole config with
``--print-config``; nothing loads or trains), every recipe named ships, Python snippets compile and links resolve.

Command lines are read from ``bash``/``sh``/``console`` code blocks and from inline code spans. Placeholders are
written in capitals (``NAME``, ``[DEST]``): such a command line is parsed but not run, and a capitalised recipe name
is not looked up. ``visalign recipes cp`` lines are run (in a temporary folder) before a page's other commands, so a
page may copy a recipe and then train from the copy.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from visalign.cli import main as cli_main
from visalign.cli import recipes as cli_recipes
from visalign.losses import LOSSES

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted(DOCS.glob("*.md"))
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
PLACEHOLDER = re.compile(r"^\[?[A-Z][A-Z_]*\]?$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str
    argv: tuple[str, ...]  # what follows `visalign`

    @property
    def has_placeholder(self) -> bool:
        return any(PLACEHOLDER.match(arg) for arg in self.argv)

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _visalign_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after ``visalign``, ``python -m visalign`` or ``accelerate launch ... -m visalign[.cli.main]``."""
    if tokens and tokens[0] == "visalign":
        return tokens[1:]
    for i, token in enumerate(tokens[:-1]):
        if token == "-m" and tokens[i + 1] in ("visalign", "visalign.cli.main") and tokens[0] in ("python",
                                                                                                    "accelerate"):
            return tokens[i + 2:]
    return None


def _code_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(language, first line number, body)`` of each fenced block."""
    return [(m.group(1), _line_of(text, m.start(2)), m.group(2)) for m in FENCE.finditer(text)]


def commands(page: Path) -> list[Command]:
    text = page.read_text(encoding="utf-8")
    found = []
    for language, start, body in _code_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        joined = re.sub(r"\\\n", " ", body)  # line continuations
        offsets = [start + i for i, line in enumerate(body.split("\n")) if not line.endswith("\\")]
        for number, line in zip(offsets, joined.split("\n")):
            argv = _visalign_argv(shlex.split(line, comments=True))
            if argv is not None:
                found.append(Command(page.name, number, line.strip(), tuple(argv)))
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for match in INLINE.finditer(prose):
        span = match.group(1)
        if not (span.startswith("visalign ") or " -m visalign" in span):
            continue
        argv = _visalign_argv(shlex.split(span))
        if argv is not None:
            found.append(Command(page.name, _line_of(prose, match.start()), span, tuple(argv)))
    return found


ALL_COMMANDS = [command for page in PAGES for command in commands(page)]


def _exit_code(function, argv: list[str]) -> int:
    try:
        result = function(argv)
    except SystemExit as exc:  # argparse: --help exits 0, a usage error 2
        return int(exc.code or 0)
    return result if isinstance(result, int) else 0


def _copy_recipes(page: str) -> None:
    """Run the page's `visalign recipes cp` lines in the current folder (overwriting earlier copies)."""
    for command in ALL_COMMANDS:
        if command.page == page and command.argv[:2] == ("recipes", "cp") and not command.has_placeholder:
            argv = [*command.argv[1:], *(["--force"] if "--force" not in command.argv else [])]
            assert cli_recipes.main(argv) == 0, f"{command}: copying the recipe failed"


def test_pages_exist_and_show_commands():
    assert {p.name for p in PAGES} >= {"index.md", "losses.md", "text.md", "vlm.md", "rewards.md", "cli.md"}
    assert len(ALL_COMMANDS) > 20


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_command_line_parses(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = list(command.argv)
    if not argv:
        return  # the program is named, not called
    if argv[0].startswith("-"):
        assert _exit_code(cli_main.main, argv) == 0, f"{command}: {capsys.readouterr().err}"
        return
    name, rest = argv[0], argv[1:]
    if PLACEHOLDER.match(name):
        assert _exit_code(cli_main.make_parser().parse_args, argv) == 0, str(command)
        return
    assert name in cli_main.COMMANDS, f"{command}: unknown command {name!r}; commands: {list(cli_main.COMMANDS)}"
    if not rest:
        return  # the command is named, not called
    module = importlib.import_module(cli_main.COMMANDS[name][0])
    if name == "train":
        _copy_recipes(command.page)
        function, argv = module.main, [*rest, "--print-config"]  # resolves and validates the config, loads nothing
    else:
        function, argv = module.make_parser().parse_args, rest
    code = _exit_code(function, argv)
    assert code == 0, f"{command}: exit code {code}\n{capsys.readouterr().err}"


def named_recipes(page: Path) -> list[tuple[str, str]]:
    """``(recipe, where)`` for each recipe a page names: after ``--config`` or ``recipes cp``, and in the backticked
    cells of a table column headed "recipe" or "recipes"."""
    names = []
    for command in (c for c in ALL_COMMANDS if c.page == page.name):
        argv = list(command.argv)
        for i, arg in enumerate(argv[:-1]):
            value = argv[i + 1]
            if arg == "--config" and "/" not in value and not value.endswith((".yaml", ".yml")):
                names.append((value, str(command)))
        if argv[:2] == ["recipes", "cp"] and len(argv) > 2:
            names.append((argv[2], str(command)))
    column = None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("|"):
            column = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if column is None:
            column = next((i for i, cell in enumerate(cells) if cell.lower() in ("recipe", "recipes")), -1)
            continue
        if 0 <= column < len(cells):
            names += [(name, f"{page.name}:{number}") for name in INLINE.findall(cells[column])]
    return [(name, where) for name, where in names if not PLACEHOLDER.match(name)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_recipes_ship(page):
    shipped = set(cli_recipes.recipe_names())
    missing = [f"{name} ({where})" for name, where in named_recipes(page) if name not in shipped]
    assert not missing, f"recipes named in {page.name} that do not ship: {missing}; shipped: {sorted(shipped)}"


def test_recipe_tables_are_found():
    """The table reader sees the recipe columns (so the check above is not vacuous)."""
    names = {name for page in PAGES for name, _ in named_recipes(page)}
    assert {"llm-dpo", "llm-mpo", "rlhfv-dense-dpo", "mia-dpo", "quickstart", "text-quickstart"} <= names


def _generator():
    spec = importlib.util.spec_from_file_location("gen_losses_table", DOCS / "gen_losses_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loss_table_matches_the_registry():
    gen = _generator()
    page = (DOCS / "losses.md").read_text(encoding="utf-8")
    assert gen.page_table(page) == gen.losses_table(), "docs/losses.md is stale: run python docs/gen_losses_table.py"
    assert gen.main(["--check"]) == 0


def test_loss_table_has_one_row_per_loss():
    rows = [line for line in _generator().losses_table().splitlines()[2:]]
    assert [re.match(r"\| `([^`]+)` \|", row).group(1) for row in rows] == list(LOSSES)
    assert "`label_smoothing` 0.001 (a number in (0, 1))" in rows[list(LOSSES).index("exo_pair")]


def test_every_loss_says_what_beta_multiplies():
    """Beyond the generated table, each loss appears in the hand-written β table, so a new loss needs its docs."""
    text = (DOCS / "losses.md").read_text(encoding="utf-8")
    section = text.split("## What β multiplies", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in LOSSES if f"`{name}`" not in section]
    assert not missing, f"docs/losses.md 'What β multiplies' does not mention {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_snippets_compile(page):
    text = page.read_text(encoding="utf-8")
    for language, start, body in _code_blocks(text):
        if language == "python":
            compile(body, f"{page.name}:{start}", "exec")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file) if file else page
        assert path.exists(), f"{page.name}: link {target!r}: {path} does not exist"
        if anchor and path.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text(encoding="utf-8")), re.MULTILINE)
            assert anchor in {_anchor(h) for h in headings}, f"{page.name}: link {target!r}: no such heading"
