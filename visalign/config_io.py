"""Dataclass configs <-> flat YAML <-> command-line flags.

One place turns user text into typed config values, with the precedence every visalign command uses:

    dataclass defaults  <  YAML file  <  overrides (command line or a dict)

Values are coerced from the dataclass field annotations (`int`, `float` incl. `1e-5`, `bool` from
true/false/yes/no/1/0, `str`, `Path`, `X | None` from `none`/`null`, `list[X]`/`tuple[X, ...]` from YAML lists
or comma-separated strings, `Literal[...]` choices). Errors name the key and where the value came from.

Command-line flags built by `add_config_arguments` default to "not given" (`argparse.SUPPRESS`), so only flags
the user typed override the YAML -- even when the typed value equals the dataclass default. TRL's `TrlParser`
got this wrong once (trl#1733: a CLI value equal to the default lost against the YAML) and still does for a
launcher flag (trl#7031); our tests pin the behaviour down.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import types
import typing
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from visalign.errors import UserError

__all__ = [
    "ConfigError",
    "add_config_arguments",
    "config_to_dict",
    "given_overrides",
    "load_config",
    "read_yaml_mapping",
    "save_config",
]

T = TypeVar("T")

_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}
_NONE = {"none", "null", "~"}
_NEGATIVE_NUMBER = re.compile(r"^-\.?\d")


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message names the key and the file or source (CLI: exit 2)."""


# ----------------------------------------------------------------------------------------------------------
# dataclass -> dict -> YAML


def config_to_dict(config: Any) -> dict[str, Any]:
    """Flat dict of a dataclass instance's init fields, with YAML-safe values.

    Paths become strings, tuples become lists; nested mappings or objects are refused (configs are flat). Fields
    read by other methods than the config's (``metadata["methods"]``, always at their defaults) are left out.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config_to_dict expects a dataclass instance, got {type(config).__name__}")
    return {
        f.name: _to_plain(getattr(config, f.name), f"{type(config).__name__}.{f.name}")
        for f in dataclasses.fields(config)
        if f.init and in_method_scope(f, config)
    }


def in_method_scope(f: dataclasses.Field, config: Any) -> bool:
    """Whether the config's ``method`` reads field ``f``: every field without a ``metadata["methods"]`` scope, and a
    scoped one under a method it names."""
    scope = f.metadata.get("methods")
    return scope is None or getattr(config, "method", None) in scope


def _to_plain(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_to_plain(v, where) for v in value]
    raise TypeError(f"{where}: value of type {type(value).__name__} cannot be written to a flat YAML config")


def save_config(config: Any, path: str | Path) -> Path:
    """Write `config` as flat YAML to `path` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # same folder, so the rename is atomic
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------------------------------------
# YAML -> dict


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping_no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(
                f"{loader.name}:{line}: duplicate key {key!r} (first given on line {seen[key]})"
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_duplicates)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping (scalars and lists of scalars); an empty file is an empty mapping.

    Raises `ConfigError` naming the file (and line) for a missing file, malformed YAML, a document that is
    not a mapping, or a nested value.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from exc
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: malformed YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a config must be a flat mapping of `key: value` lines, got a {type(data).__name__}"
        )
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {key!r} is not a string")
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, (dict, list)) for v in items):
            raise ConfigError(
                f"{path}: key {key!r} holds a nested value; configs are flat (scalars and lists of scalars)"
            )
    return data


# ----------------------------------------------------------------------------------------------------------
# dict -> dataclass


def load_config(
    cls: type[T],
    yaml_path: str | Path | None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    ignore_keys: Sequence[str] = (),
) -> T:
    """Build `cls` from its defaults, then the YAML file, then `overrides` (later wins).

    `overrides` is a mapping of field name to value (strings are parsed as on the command line) or a sequence
    of `"key=value"` strings; dashes in override keys are read as underscores. `ignore_keys` are YAML keys
    consumed by the caller (e.g. `method` for `visalign train`) that are not fields of `cls`. The dataclass's
    `__post_init__` runs once, on the merged values; its `ValueError`/`TypeError` becomes a `ConfigError`.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"load_config expects a dataclass type, got {cls!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    if yaml_path is not None:
        for key, raw in read_yaml_mapping(yaml_path).items():
            if key in ignore_keys and key not in fields:
                continue
            _check_known(key, fields, cls, str(yaml_path))
            values[key] = _coerce(raw, hints[key], key, str(yaml_path))
            sources[key] = str(yaml_path)

    for key, raw in _override_items(overrides):
        _check_known(key, fields, cls, "overrides")
        values[key] = _coerce(raw, hints[key], key, "overrides")
        sources[key] = "overrides"

    missing = [
        name
        for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" (config file {yaml_path})" if yaml_path is not None else ""
        raise ConfigError(f"{cls.__name__}: missing required key(s) {', '.join(missing)}{where}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        given = ", ".join(sorted(set(sources.values()))) or "defaults only"
        raise ConfigError(f"invalid {cls.__name__} (values from: {given}): {exc}") from exc


def _override_items(overrides: Sequence[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    elif isinstance(overrides, str):
        raise TypeError("overrides must be a mapping or a sequence of 'key=value' strings, not one string")
    else:
        items = []
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {item!r} is not of the form key=value")
            items.append((key.strip(), value))
    return [(key.replace("-", "_"), value) for key, value in items]


def _check_known(key: str, fields: Mapping[str, dataclasses.Field], cls: type, where: str) -> None:
    if key in fields:
        return
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{where}: unknown key {key!r} for {cls.__name__}{hint}")


def _coerce(value: Any, annotation: Any, key: str, where: str) -> Any:
    """Coerce a YAML or command-line value to `annotation`; errors name `key` and `where` it came from."""
    try:
        return _convert(value, annotation)
    except _BadValue as exc:
        raise ConfigError(f"{where}: key {key!r}: {exc}, got {value!r}") from None


class _BadValue(Exception):
    """Internal: a value that does not fit an annotation; the message says what was expected."""


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _convert(value: Any, annotation: Any) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if annotation is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        raise _BadValue("expected none/null")
    if origin in (Union, types.UnionType):
        return _convert_union(value, args)
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
            if isinstance(value, str) and value.strip() == str(choice):
                return choice
        raise _BadValue(f"expected one of {', '.join(map(str, args))}")
    if origin in (list, tuple) or annotation in (list, tuple):
        return _convert_sequence(value, origin or annotation, args)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _BadValue("expected a boolean (true/false/yes/no/1/0)")
    if annotation is int:
        return _convert_int(value)
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _BadValue("expected a number (e.g. 0.1 or 1e-5)")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _BadValue("expected a string (quote it in YAML)")
    if annotation is Path:
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
        raise _BadValue("expected a path")
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise _BadValue(f"unsupported field type {_type_name(annotation)} for a flat config")


def _convert_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)  # "1e4" steps
            except ValueError:
                pass
    if isinstance(number, float) and number.is_integer():
        return int(number)
    raise _BadValue("expected an integer")


def _convert_union(value: Any, args: tuple) -> Any:
    """`X | None` accepts none/null; other members are tried in order, list members first for list-like input."""
    members = [a for a in args if a is not type(None)]
    if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
        return None
    listy = isinstance(value, (list, tuple)) or (isinstance(value, str) and "," in value)
    if listy:
        members.sort(key=lambda a: typing.get_origin(a) not in (list, tuple) and a not in (list, tuple))
    errors = []
    for member in members:
        try:
            return _convert(value, member)
        except _BadValue as exc:
            errors.append(str(exc))
    if type(None) in args:
        errors.append("none/null")
    raise _BadValue(" or ".join(errors))


def _convert_sequence(value: Any, container: type, args: tuple) -> list | tuple:
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")] if value.strip() else []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise _BadValue("expected a list (YAML list or comma-separated values)")
    if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(items) != len(args):
            raise _BadValue(f"expected {len(args)} values")
        return tuple(_convert(v, a) for v, a in zip(items, args))
    item_type = args[0] if args else Any
    try:
        converted = [_convert(v, item_type) for v in items]
    except _BadValue as exc:
        raise _BadValue(f"list item: {exc}") from None
    return tuple(converted) if container is tuple else converted


# ----------------------------------------------------------------------------------------------------------
# dataclass -> argparse flags


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, shown: Any = None) -> None:
    """Add one `--flag` per init field of `cls` (both `--a_b` and `--a-b`), all defaulting to "not given".

    Values stay strings here; `load_config` coerces them, so the command line and the YAML share one set of
    rules and error messages. Read the given flags back with `given_overrides(namespace, cls)`. Booleans also
    accept a bare flag (`--bf16` means `--bf16 true`); lists take one comma-separated value. The help shows each
    field's value in `shown` (an instance of `cls`, e.g. the config a recipe resolves to), else the class default;
    with `shown`, fields read by other methods than its `method` (`metadata["methods"]`) are left out.
    """
    hints = typing.get_type_hints(cls)
    # argparse reads "-1e-4" as an option, since its negative-number pattern lacks exponents; no config flag starts
    # with a digit, so every negative number is a value here.
    parser._negative_number_matcher = _NEGATIVE_NUMBER
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if not f.init or (shown is not None and not in_method_scope(f, shown)):
            continue
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        flags += [f"--{alias}" for alias in f.metadata.get("aliases", ())]  # e.g. --loss for loss_type
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _help_text(f, shown)}
        annotation = hints[f.name]
        choices = _literal_choices(annotation)
        if choices is not None:
            kwargs["choices"] = choices
        elif _is_bool(annotation):
            kwargs.update(nargs="?", const="true", metavar="{true,false}")
        else:
            kwargs["metavar"] = _metavar(annotation)
        group.add_argument(*flags, **kwargs)


def given_overrides(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` the user actually gave on the command line (flags from `add_config_arguments`)."""
    return {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if hasattr(namespace, f.name)}


def _help_text(f: dataclasses.Field, shown_config: Any = None) -> str:
    text = f.metadata.get("help", "").strip()
    if shown_config is not None:
        shown = _format_default(getattr(shown_config, f.name))
    elif f.default is not dataclasses.MISSING:
        shown = _format_default(f.default)
    elif f.default_factory is not dataclasses.MISSING:
        shown = _format_default(f.default_factory())
    else:
        shown = None
    suffix = "(required)" if shown is None else f"(default: {shown})"
    return f"{text} {suffix}".strip().replace("%", "%%")


def _format_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(_format_default, value)) or '""'
    return str(value)


def _is_optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType) and type(None) in typing.get_args(annotation)


def _non_none_members(annotation: Any) -> list:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _literal_choices(annotation: Any) -> list[str] | None:
    members = _non_none_members(annotation)
    if len(members) != 1 or typing.get_origin(members[0]) is not Literal:
        return None
    choices = [str(c) for c in typing.get_args(members[0])]
    return choices + sorted(_NONE - {"~"}) if _is_optional(annotation) else choices


def _is_bool(annotation: Any) -> bool:
    return _non_none_members(annotation) == [bool]


def _metavar(annotation: Any) -> str:
    members = _non_none_members(annotation)
    if any(typing.get_origin(m) in (list, tuple) or m in (list, tuple) for m in members):
        name = "A,B,..."
    else:
        name = "|".join(_type_name(m).upper() for m in members)
    return name + ("|none" if _is_optional(annotation) else "")
