"""The `visalign` command: one static table of sub-commands, each imported only when it runs.

Keeping the imports lazy makes `visalign --help` fast (no torch import) and lets it work when a command's
optional dependencies, or the command itself, are missing. Every command module exposes `make_parser()` and
`main(argv) -> int`. A `visalign.errors.UserError` (bad config, data or model path) escaping a command is printed as
one line and exits 2. Multi-GPU: `accelerate launch -m visalign.cli.main train --config ...`.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Sequence

import visalign
from visalign.errors import UserError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("visalign.cli.train", "train from a recipe or YAML config, with --flag value overrides"),
    "recipes": ("visalign.cli.recipes", "list the shipped recipes or copy one to edit"),
    "env": ("visalign.cli.env", "print versions of visalign and its dependencies for bug reports"),
    "score": ("visalign.cli.score", "score images with a reward model"),
    "relabel": ("visalign.cli.relabel", "relabel preference pairs with a reward model"),
    "agreement": ("visalign.cli.agreement", "accuracy of a reward model against human preferences (3 protocols)"),
    "eval": ("visalign.cli.eval", "generate and score images, win rates with confidence intervals"),
    "label": ("visalign.cli.label", "collect pairwise human preferences in a local web page; annotator agreement"),
    "mia-dpo": ("visalign.cli.mia_dpo", "build MIA-DPO multi-image preference data from single-image QA rows"),
}


def make_parser() -> argparse.ArgumentParser:
    """Top-level parser; used for `--help`, `--version` and usage errors (commands parse their own flags)."""
    width = max(map(len, COMMANDS))
    table = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="visalign",
        description="Align generative models (diffusion, vision-language, text) with human preferences.",
        epilog=f"commands:\n{table}\n\nRun `visalign COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"visalign {visalign.__version__}")
    parser.add_argument("command", metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command")
    return parser


def _load(command: str):
    module_name = COMMANDS[command][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise RuntimeError(f"`visalign {command}` is not available in this version ({module_name} is missing)")
        raise RuntimeError(f"`visalign {command}` cannot run: missing dependency {exc.name!r} ({exc})") from exc
    except ImportError as exc:
        raise RuntimeError(f"`visalign {command}` cannot run: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command's `main`; returns its exit code (2 for an unknown command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    if argv[0].startswith("-"):
        parser.parse_args(argv)  # --help / --version / usage error: exits
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"visalign: error: unknown command {command!r}.{hint} Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        module = _load(command)
    except RuntimeError as exc:
        print(f"visalign: error: {exc}", file=sys.stderr)
        return 1
    try:
        return module.main(rest)
    except UserError as exc:  # bad config, data or model path: the message says what to pass instead
        print(f"visalign {command}: error: {one_line(exc)}", file=sys.stderr)
        return 2


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (newlines of multi-line library messages joined with ' ')."""
    return " ".join(str(exc).split())


def entry_point() -> None:
    """Console script `visalign`."""
    raise SystemExit(main())


if __name__ == "__main__":
    entry_point()
