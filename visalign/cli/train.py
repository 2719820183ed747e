"""`visalign train --config NAME_OR_PATH [--flag value ...]`: train from a recipe or YAML file.

`method:` in the YAML (or `--method` when the YAML has none) picks the trainer family in `METHODS`; the
`--flag value` pairs are that family's config fields, with precedence defaults < YAML < command line.
Without `--config` the shipped `quickstart` recipe runs. The whole config is resolved and validated before
any model loads; `--print-config` prints it as YAML (itself a valid `--config` file) and stops there.

Exit codes: 0 success, 2 usage, config, data or model-path error (one line on stderr naming the key, file or
model and the fix), 1 runtime failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import yaml

from visalign.cli.main import one_line
from visalign.config_io import ConfigError, add_config_arguments, config_to_dict, given_overrides, load_config
from visalign.config_io import read_yaml_mapping
from visalign.errors import UserError
from visalign.recipes import recipe_file
from visalign.trainers.methods import METHODS as LIBRARY_METHODS

DEFAULT_RECIPE = "quickstart"

# method -> ("module:FamilyConfig", "module:run"), from the library's table (`visalign.trainers.methods`); `run(config)
# -> dict` of final metrics. Imported on use only.
METHODS: dict[str, tuple[str, str]] = {name: (method.config, method.run) for name, method in LIBRARY_METHODS.items()}


def import_object(spec: str) -> Any:
    """Import `pkg.module:Name`; a missing module or name raises `ImportError` naming the spec."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"{module_name} has no attribute {attr!r} (needed for {spec})") from None


def make_parser(
    config_cls: type | None = None, method: str | None = None, resolved: Any = None
) -> argparse.ArgumentParser:
    """The `visalign train` parser; with `config_cls`, one `--flag` per field of that trainer family's config, its
    help showing the values of `resolved` (the config the recipe and the given flags resolve to) when given."""
    parser = argparse.ArgumentParser(
        prog="visalign train",
        description="Train from a shipped recipe or a YAML config; `--flag value` pairs override its keys. "
        f"Methods: {', '.join(METHODS)}.",
        allow_abbrev=False,
        add_help=config_cls is not None,
    )
    parser.add_argument(
        "--config", metavar="NAME_OR_PATH", default=DEFAULT_RECIPE,
        help=f"shipped recipe name (see `visalign recipes list`) or YAML file (default: {DEFAULT_RECIPE})",
    )
    if config_cls is None or "method" not in {f.name for f in dataclasses.fields(config_cls)}:
        parser.add_argument(
            "--method", choices=list(METHODS), default=argparse.SUPPRESS,
            help="trainer family, overriding the YAML's `method:`",
        )
    parser.add_argument(
        "--print-config", action="store_true",
        help="print the resolved config as YAML and exit without loading any model",
    )
    if config_cls is not None:
        if method is not None:
            parser.description += f" Options below are for method {method!r} ({config_cls.__name__})."
        if resolved is not None:
            parser.description += " Defaults shown are the values this run would use (recipe and flags applied)."
        add_config_arguments(parser, config_cls, resolved)
    return parser


def _pick_method(yaml_method: Any, cli_method: str | None, config_path: str) -> str:
    method = cli_method or yaml_method
    if method is None:
        raise ConfigError(f"{config_path}: no `method:` key; add one or pass --method ({', '.join(METHODS)})")
    if not isinstance(method, str) or method not in METHODS:
        close = difflib.get_close_matches(str(method), list(METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{config_path}: key 'method': unknown method {method!r}{hint} (known: {', '.join(METHODS)})")
    return method


def _config_class(method: str) -> type:
    spec = METHODS[method][0]
    try:
        return import_object(spec)
    except ImportError as exc:
        raise ConfigError(f"method {method!r} is not available: cannot import {spec} ({exc})") from exc


def _unknown_options_message(unknown: list[str], parser: argparse.ArgumentParser) -> str:
    flags = [flag for action in parser._actions for flag in action.option_strings]
    first = next((arg for arg in unknown if arg.startswith("-")), unknown[0])
    close = difflib.get_close_matches(first.split("=")[0], flags, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unrecognized arguments: {' '.join(unknown)}{hint}"


def show_info_logs() -> None:
    """Print visalign's INFO log lines (resumed from which checkpoint, ties dropped, validation images) to stderr;
    Python's default shows warnings only."""
    package = logging.getLogger("visalign")
    if not any(isinstance(h, _StderrHandler) for h in package.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        package.addHandler(handler)
    package.setLevel(logging.INFO)


class _StderrHandler(logging.Handler):
    """Writes each record to the ``sys.stderr`` of the moment (a replaced stream, as in tests, is followed)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def _fail(message: str) -> int:
    print(f"visalign train: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run `visalign train`; returns the exit code (argparse usage errors and --help exit via SystemExit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    base, _ = make_parser().parse_known_args(argv)
    wants_help = any(arg in ("-h", "--help") for arg in argv)
    try:
        with recipe_file(base.config) as config_path:
            yaml_method = read_yaml_mapping(config_path).get("method")
            method = _pick_method(yaml_method, getattr(base, "method", None), str(config_path))
            config_cls = _config_class(method)
            parser = make_parser(config_cls, method)
            args, unknown = parser.parse_known_args([arg for arg in argv if arg not in ("-h", "--help")])
            if unknown:
                raise ConfigError(_unknown_options_message(unknown, parser))
            config = load_config(config_cls, config_path, given_overrides(args, config_cls), ignore_keys=("method",))
        if wants_help:
            make_parser(config_cls, method, config).print_help()
            return 0
    except ConfigError as exc:
        if wants_help:
            make_parser().print_help()
            print(f"\n(method options unavailable: {exc})")
            return 0
        return _fail(str(exc))

    if args.print_config:
        print(yaml.safe_dump({"method": method, **config_to_dict(config)}, sort_keys=False), end="")
        return 0
    try:
        run = import_object(METHODS[method][1])
    except ImportError as exc:
        return _fail(f"method {method!r} is not available: {exc}")
    show_info_logs()
    try:
        result = run(config)
    except KeyboardInterrupt:
        print("visalign train: interrupted", file=sys.stderr)
        return 1
    except UserError as exc:  # bad data or model path found after the config was read: one line, exit 2
        return _fail(one_line(exc))
    except Exception as exc:  # noqa: BLE001 - any failure of a run is reported with its traceback
        traceback.print_exc()
        print(f"visalign train: training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for key, value in (result or {}).items():
        print(f"{key}: {value}")
    return 0
