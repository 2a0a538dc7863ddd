"""Lazy package attributes (PEP 562): a stage's public API, imported on first use.

``import sio.train.config`` must not load torch models, nor ``sio --help`` every stage, so a
stage's ``__init__`` names its public attributes and the module each lives in, and the module is
imported when the attribute is first read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a public name to the
    module that defines it."""

    def getattr_(name: str) -> object:
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(module), name)

    def dir_() -> list[str]:
        return sorted(exports)

    return getattr_, dir_
