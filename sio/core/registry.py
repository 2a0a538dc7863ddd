"""Named parts: one registry per kind (detectors, generators, models, training methods)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps the lower-case names used in ``pipeline.yaml`` and on the CLI to classes."""

    def __init__(self, kind: str, *, name_attribute: str | None = None):
        """``name_attribute``: an attribute that ``register`` sets on each entry to its name, so
        a registered class knows its registry key without repeating it."""
        self.kind = kind
        self.name_attribute = name_attribute
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if name != name.lower() or not name:
            raise ValueError(f"{self.kind} names are lower-case and non-empty, got {name!r}")

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            if self.name_attribute is not None:
                setattr(entry, self.name_attribute, name)
            return entry

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
