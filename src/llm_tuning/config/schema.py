"""The option machinery: a config field carries its help text and constraints (`option`), and a section is
built from plain values with names, types, choices and ranges checked (`build_section`). Validation, error
messages and docs/config.md all come from these declarations. Imports nothing of llm-tuning but its error type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import field
from typing import Any

from ..errors import UserError


def option(default: Any, help: str, choices: tuple = (), min: float | None = None, max: float | None = None):
    """A config field with its documentation and constraints (min/max are inclusive)."""
    metadata = {"help": help, "choices": choices, "min": min, "max": max}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def build_section(cls: type, section: str, values: dict, where: dict[str, str]):
    """Instantiate dataclass `cls` from `values`, checking names, types and constraints. `where` maps
    `section.key` to where it was set (file:line or the override), for messages."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        path = f"{section}.{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{section}.{close[0]}'?)" if close else ""
            raise UserError(f"unknown config key '{path}'{at(where, path)}{hint}; valid keys in '{section}': {', '.join(fields)}")
        kwargs[key] = _check_value(path, value, hints[key], fields[key].metadata, where)
    return cls(**kwargs)


def at(where: dict[str, str], path: str) -> str:
    """` (file:line)` where `path` was set, for a message; empty when unknown."""
    return f" ({where[path]})" if path in where else ""


def _check_value(path: str, value: Any, hint: Any, meta: typing.Mapping, where: dict[str, str]) -> Any:
    try:
        value = _coerce(value, hint)
    except TypeError as e:
        raise UserError(f"config key '{path}'{at(where, path)}: expected {e}, got {value!r}") from None
    choices = meta.get("choices") or ()
    if choices and value not in choices:
        raise UserError(f"config key '{path}'{at(where, path)}: {value!r} is not one of: {', '.join(map(str, choices))}")
    low, high = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}" if low is not None else f"<= {high}"
            raise UserError(f"config key '{path}'{at(where, path)}: {value!r} is out of range; it must be {bounds}")
    return value


def _coerce(value: Any, hint: Any) -> Any:
    """Return `value` as type `hint`, or raise TypeError naming the expected type."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(hint), hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise TypeError(type_name(hint))
        return [_coerce(item, item_type) for item in value]
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise TypeError(type_name(hint))
        return {_coerce(k, key_type): _coerce(v, value_type) for k, v in value.items()}
    if hint is float:
        return _coerce_float(value)
    if hint in (bool, str) and isinstance(value, hint):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in _TYPE_NAMES:
        raise TypeError(_TYPE_NAMES[hint])
    raise AssertionError(f"unsupported config type {hint}")


def _coerce_union(value: Any, options: tuple, hint: Any) -> Any:
    if value is None and type(None) in options:
        return None
    for option_type in options:
        if option_type is type(None):
            continue
        try:
            return _coerce(value, option_type)
        except TypeError:
            pass
    raise TypeError(type_name(hint))


def _coerce_float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    # YAML 1.1 reads `2e-4` (no dot) as a string; accept it as the number the user meant.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise TypeError("a number")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def type_name(hint: Any) -> str:
    """The type in words, for messages and the docs: "a list of strings or a string or null"."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(t) for t in typing.get_args(hint))
    if origin is list:
        return "a list of " + type_name(typing.get_args(hint)[0]).split(" ", 1)[1] + "s"
    if origin is dict:
        return "a mapping of names to " + type_name(typing.get_args(hint)[1]).split(" ", 1)[1] + "s"
    return _TYPE_NAMES[hint]
