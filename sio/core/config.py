"""Typed, frozen config dataclasses from YAML: the parser and the checks every section uses.

``parse_dataclass`` builds a dataclass from a mapping, rejecting unknown keys and numbers out of
their field's bounds, and every error names its field path; ``load_yaml_dataclass`` adds the
file's name. Every YAML file sio reads goes through ``load_yaml``: a key given twice, an alias
expansion beyond ``MAX_YAML_NODES`` nodes (a "billion laughs") or an integer literal beyond
``MAX_INT_DIGITS`` digits is refused in one line. Values are shortened (``short``) before they
are formatted into a message. No inheritance, no templating: the file plus the dataclass
defaults is what runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import reprlib
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config value that cannot be used; the message starts with its source and field path."""


# Every int field's bounds unless its metadata says otherwise (``bounded``): a config integer is
# a count, a size, an index or a seed, and none of them needs more than 31 bits.
INT_BOUNDS = (0, 2**31 - 1)


def bounded(lo: float, hi: float, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field (with ``default``, if given) whose parsed value, or each item's for a
    tuple, must lie in ``lo..hi``: ``batch_size: int = bounded(1, 2**20, default=128)``."""
    return dataclasses.field(default=default, metadata={"bounds": (lo, hi)})


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple = 2, 4, 4, 4
_SHORT.maxset = _SHORT.maxfrozenset = 4
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 60, 60, 40
SHORT_LENGTH = 100  # characters of a value shown in an error message


def short_text(text: Any) -> str:
    """A string as it is (a path, a name) when it is one printable line of at most
    ``SHORT_LENGTH`` characters, its beginning when it is longer; anything else ``short``."""
    if not isinstance(text, str) or not text.isprintable():
        return short(text)
    return text if len(text) <= SHORT_LENGTH else text[: SHORT_LENGTH - 3] + "..."


def short(value: Any) -> str:
    """``repr(value)`` shortened to at most ``SHORT_LENGTH`` characters, in time and memory
    bounded whatever ``value`` holds (an alias bomb's shared lists, a huge integer). With
    ``short_text``, the way a value read from a file goes into a message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits>"
    text = _SHORT.repr(value)
    return text if len(text) <= SHORT_LENGTH else text[: SHORT_LENGTH - 3] + "..."


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


def _coerce(tp: Any, value: Any, path: str, bounds: tuple | None = None) -> Any:
    """``value`` as type ``tp``; ``bounds`` (lo, hi) limits a number (each item of a tuple)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: expected one of {list(choices)}, got {short(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, path, bounds)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {_described(value)}")
        (item_type, _) = typing.get_args(tp)
        return tuple(_coerce(item_type, v, f"{path}[{i}]", bounds) for i, v in enumerate(value))
    if tp is float:
        return _in_bounds(_coerce_float(value, path), bounds, path)
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_described(value)}")
    return _in_bounds(value, bounds or INT_BOUNDS, path) if tp is int else value


def _described(value: Any) -> str:
    return f"{short(value)} ({type(value).__name__})"


def _in_bounds(number: float, bounds: tuple | None, path: str) -> float:
    if bounds is not None and not bounds[0] <= number <= bounds[1]:
        lo, hi = bounds
        raise ConfigError(f"{path}: must be in {lo}..{hi}, got {short(number)}")
    return number


def _coerce_float(value: Any, path: str) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # an int beyond float's range
            number = float(value)
    elif isinstance(value, str) and len(value) <= MAX_INT_DIGITS:  # PyYAML reads ``5e-4``
        with contextlib.suppress(ValueError):  # (no dot) as a string
            number = float(value)
    if number is None or not math.isfinite(number):
        raise ConfigError(f"{path}: expected a finite number, got {_described(value)}")
    return number


def parse_dataclass(cls: type, data: Any, path: str):
    """Build ``cls`` from a mapping, rejecting unknown keys and numbers outside a field's
    ``bounds`` metadata (``bounded``; an int field without it: ``INT_BOUNDS``); errors carry
    ``path``. A key that ``cls.REMOVED_KEYS`` (a ClassVar mapping) names is refused with what
    replaced it; one that ``cls.RENAMED_KEYS`` ({old: new}) names is read as its new name, with
    a one-line note on stderr."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}expected a mapping of keys to values, got {short(data)}")
    data = _renamed(data, getattr(cls, "RENAMED_KEYS", {}), path)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    removed = getattr(cls, "REMOVED_KEYS", {})  # {key: what replaced it}
    for key in data:
        if key in removed:
            raise ConfigError(f"{path}.{key}: removed; {removed[key]}")
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{path}.{short_text(key)}: unknown key; known keys: {known}")
    required = [
        f.name
        for f in fields.values()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for key in required:
        if key not in data:
            raise ConfigError(f"{path}.{key}: missing; this key has no default")
    kwargs = {
        key: _coerce(hints[key], value, f"{path}.{key}", fields[key].metadata.get("bounds"))
        for key, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path}.{err}") from None


def _renamed(data: dict, renamed: dict[str, str], path: str) -> dict:
    """``data`` with each old key of ``renamed`` ({old: new}) given the new name, saying so on
    stderr in one line; an old key given beside its new name is refused, naming both."""
    for old, new in renamed.items():
        if old not in data:
            continue
        old_path, new_path = f"{path}.{old}".lstrip("."), f"{path}.{new}".lstrip(".")
        if new in data:
            raise ConfigError(
                f"{path}.{old}: the old name of {new_path}, which is given too; "
                f"give only {new_path}"
            )
        print(
            f"note: {old_path} is now {new_path} (read as it; rename it in your config)",
            file=sys.stderr,
            flush=True,
        )
        data = {new if key == old else key: value for key, value in data.items()}
    return data


MAX_YAML_NODES = 100_000  # nodes of a YAML file with every alias expanded where it is used
MAX_INT_DIGITS = 100  # characters of one integer (or float) literal


class _Refused(yaml.YAMLError):
    """A YAML file that parses but that sio refuses (a key given twice, an alias bomb)."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser if built
    """PyYAML's safe loader, refusing a mapping key given twice and an integer literal too long
    to be a config value (Python would spend quadratic time converting it)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}  # key: the line it was first given on
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # ``<<: *base``: explicit keys override merged ones
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = lines.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class refuses it
                if first is not None:
                    where = f"lines {first} and {line}" if first != line else f"line {line}"
                    raise _Refused(f"key {short(key)} given twice ({where})")
                lines[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        if len(node.value) > MAX_INT_DIGITS:
            line = node.start_mark.line + 1
            raise _Refused(f"line {line}: an integer of {len(node.value)} characters")
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose nodes, with every alias expanded, number over MAX_YAML_NODES, or
    that holds itself (``&a [*a]``). Linear in the nodes written: a shared node is sized once."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()  # nodes whose children are being sized: the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = _children(node)
        if children_done:
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            entered.discard(id(node))
            if sizes[id(node)] > MAX_YAML_NODES:
                line = node.start_mark.line + 1
                raise _Refused(
                    f"line {line}: aliases expand to over {MAX_YAML_NODES:,} values "
                    "(a YAML alias bomb?)"
                )
        elif id(node) not in sizes:
            if id(node) in entered:
                raise _Refused(f"line {node.start_mark.line + 1}: an alias that holds itself")
            entered.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def load_yaml(path: Path) -> Any:
    """The data of the YAML file ``path``: the one way sio reads YAML. Every error is one
    ConfigError line naming the file (and the line): unreadable, not YAML, a key given twice,
    an alias bomb, an integer literal of over MAX_INT_DIGITS characters."""
    try:
        text = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except _Refused as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.MarkedYAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(err)}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_text(str(err))}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _one_line(err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark or err.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + _text("; ".join(str(part) for part in (err.context, err.problem) if part))


def _text(message: str) -> str:
    """``message`` on one line, at most 200 characters."""
    text = " ".join(message.split())
    return text if len(text) <= 200 else text[:197] + "..."


def load_yaml_dataclass(cls: type, path: Path):
    """Parse a YAML file into ``cls``; every error names the file and the field path."""
    data = load_yaml(path)
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
