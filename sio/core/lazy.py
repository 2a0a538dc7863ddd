"""Lazy package attributes (PEP 562): a stage's public API, imported on first use.

``import sio.train.config`` must not load torch models, nor ``sio --help`` every stage, so a
stage's ``__init__`` names its public attributes and the module each lives in, and the module is
imported when the attribute is first read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(
    package: str, modules: dict[str, tuple]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``: ``modules`` maps each
    module to the public names it defines; a ``(public, attribute)`` pair exports the module's
    ``attribute`` as ``public`` (where ``attribute`` is also a submodule's name, which Python
    binds on the package once that submodule is imported)."""
    exports = {}
    for module, names in modules.items():
        for name in names:
            public, attribute = (name, name) if isinstance(name, str) else name
            exports[public] = (module, attribute)

    def getattr_(name: str) -> object:
        try:
            module, attribute = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(module), attribute)

    def dir_() -> list[str]:
        return sorted(exports)

    return getattr_, dir_, sorted(exports)
