"""Typed, frozen config dataclasses from YAML: the parser and the checks every section uses.

``parse_dataclass`` builds a dataclass from a mapping, rejecting unknown keys, and every error
names its field path; ``load_yaml_dataclass`` adds the file's name. No inheritance, no
templating: the file plus the dataclass defaults is what runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config value that cannot be used; the message starts with its source and field path."""


def check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field_name}: {message}")


def check_alpha(alpha: float, field_name: str = "alpha") -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(
            f"{field_name}: must be in [0, 1] (the real fraction of each batch), got {alpha}"
        )
    return alpha


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r} ({type(value).__name__})")
        (item_type, _) = typing.get_args(tp)
        return tuple(_coerce(item_type, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is float:
        return _coerce_float(value, path)
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        got = f"{value!r} ({type(value).__name__})"
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {got}")
    return value


def _coerce_float(value: Any, path: str) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):  # PyYAML reads ``5e-4`` (no dot) as a string
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None or not math.isfinite(number):
        raise ConfigError(
            f"{path}: expected a finite number, got {value!r} ({type(value).__name__})"
        )
    return number


def parse_dataclass(cls: type, data: Any, path: str):
    """Build ``cls`` from a mapping, rejecting unknown keys; errors carry ``path``. A key that
    ``cls.REMOVED_KEYS`` (a ClassVar mapping) names is refused with what replaced it."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}expected a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    removed = getattr(cls, "REMOVED_KEYS", {})  # {key: what replaced it}
    for key in data:
        if key in removed:
            raise ConfigError(f"{path}.{key}: removed; {removed[key]}")
        if key not in known:
            raise ConfigError(f"{path}.{key}: unknown key; known keys: {', '.join(known)}")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for key in required:
        if key not in data:
            raise ConfigError(f"{path}.{key}: missing; this key has no default")
    kwargs = {key: _coerce(hints[key], value, f"{path}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path}.{err}") from None


def load_yaml_dataclass(cls: type, path: Path):
    """Parse a YAML file into ``cls``; every error names the file and the field path."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return parse_dataclass(cls, data, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {str(err).lstrip('.')}") from None


def to_dict(config: Any) -> dict:
    """The resolved config as JSON-ready data (tuples become lists)."""

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))
