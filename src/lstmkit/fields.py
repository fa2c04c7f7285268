"""Typed config fields shared by every config dataclass: their descriptions (one place, read by
`--help`), coercion of command-line strings, type and choice checks, and validated overrides
that name where a bad value came from."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from lstmkit.errors import UserError

Config = TypeVar("Config")

# `from __future__ import annotations` makes field types strings.
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "tuple[int, ...]": tuple}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def described(default: Any, help: str, choices: tuple[str, ...] = ()) -> Any:
    """A dataclass field carrying its description and allowed values, for `--help`."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def field_names(config_class: type) -> list[str]:
    """The fields a config file or `--flag` may set."""
    return [f.name for f in dataclasses.fields(config_class)]


def flag_helps(config_class: type) -> dict[str, str]:
    """Each field's `--help` text: its description, allowed values and default."""
    return {f.name: flag_help(f) for f in dataclasses.fields(config_class)}


def flag_help(f: dataclasses.Field) -> str:
    allowed = f.metadata.get("choices", ())
    values = f"one of {', '.join(allowed)}; " if allowed else ""
    if f.type in ("bool", bool):
        values = "true or false; "
    text = f"{f.metadata.get('help', '')} ({values}default: {show_value(f.default)})"
    return text.replace("%", "%%")  # argparse formats help strings with %


def show_value(value: Any) -> str:
    """A field value as one would type it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if value == "":
        return '""'
    return str(value)


def apply_overrides(config: Config, overrides: Mapping[str, Any], source: str) -> Config:
    """`config` with `overrides` (strings from the command line, or typed values) applied; an
    unknown field or bad value names `source` (and the config's FIELD_KIND, if it has one)."""
    what = getattr(type(config), "FIELD_KIND", "config field")
    known = {f.name: f.type for f in dataclasses.fields(config)}
    coerced = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in known:
            raise UserError(f"{source}: unknown {what} {key!r}")
        coerced[name] = coerce(name, value, known[name], source)
    try:
        return dataclasses.replace(config, **coerced)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None


def coerce(name: str, value: Any, annotation: Any, source: str) -> Any:
    """A command-line string (or a JSON/TOML value) as the field's type; checks follow."""
    typ = _TYPES.get(annotation, annotation)
    if not isinstance(value, str):
        if typ is tuple and isinstance(value, list):
            return tuple(value)
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value  # the dataclass's own checks judge it
    try:
        if typ is tuple:
            return tuple(int(part) for part in value.split(","))
        if typ is bool:
            if value.lower() in _TRUE + _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        return typ(value)
    except ValueError:
        pass
    kind = {tuple: "comma-separated sizes like 128,64", bool: "true or false"}.get(
        typ, getattr(typ, "__name__", str(typ)))
    raise UserError(f"{source}: config field {name} must be {kind}, got {shown(value)}")


def check_types(config: Any) -> None:
    """Raise UserError for the first field whose value is not of its declared type, then for
    the first outside the allowed values its field declares (see `described`)."""
    for f in dataclasses.fields(config):
        check_type(f.name, getattr(config, f.name), f.type)
    for f in dataclasses.fields(config):
        if f.metadata.get("choices"):
            check_choice(f.name, getattr(config, f.name), f.metadata["choices"])


def check_type(name: str, value: Any, annotation: Any) -> None:
    typ = _TYPES.get(annotation, annotation)
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is tuple:
        ok = isinstance(value, tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:
        ok = isinstance(value, typ)
    if not ok:
        raise UserError(f"config field {name} must be {getattr(typ, '__name__', typ)}, "
                        f"got {shown(value)}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"config field {name} must be one of {', '.join(choices)}, got "
                        f"{shown(value)}")


SHOWN_CHARS = 100  # a value quoted in an error line: enough to recognise it, never a flood


def shown(value: Any) -> str:
    """`repr(value)`, cut to SHOWN_CHARS so that one error stays one readable line."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # a deep list; an int past str()'s digit limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


SEED_LIMIT = 2 ** 63  # torch.manual_seed and numpy both take [0, 2**63)


def check_seed(seed: int) -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise UserError(f"config field seed must be in [0, 2**63), got {shown(seed)}")
