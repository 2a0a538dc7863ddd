"""The one "was this made the same way?" check.

Every output that can be resumed, skipped or reused (a stage folder, a benchmark's shard sets,
a generation job, a training checkpoint, an activations cache) records the definition it was
made from as plain JSON data, and compares it here with what is asked for now: the dotted paths
that differ, less those that may change (``ignore``).
"""

from __future__ import annotations

from collections.abc import Iterable


def differences(recorded, current, ignore: Iterable[str] = (), path: str = "") -> list[str]:
    """Dotted paths at which two JSON-like definitions differ, in sorted order; a path in
    ``ignore`` (or below one) is not a difference."""
    ignore = tuple(ignore)
    if any(path == i or path.startswith(i + ".") for i in ignore if path):
        return []
    if isinstance(recorded, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(recorded) | set(current)):
            sub = f"{path}.{key}" if path else str(key)
            found += differences(recorded.get(key), current.get(key), ignore, sub)
        return found
    return [] if recorded == current else [path or "(root)"]


def _at(definition, path: str):
    for part in path.split(".") if path != "(root)" else ():
        definition = definition.get(part) if isinstance(definition, dict) else None
    return definition


def describe(recorded, current, paths: list[str], limit: int = 6) -> str:
    """``field = old, not new`` for the first ``limit`` differing paths."""
    shown = [f"{p} = {_at(recorded, p)!r}, not {_at(current, p)!r}" for p in paths[:limit]]
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return "; ".join(shown) + more


def require_same(
    what: str,
    recorded,
    current,
    *,
    remedy: str,
    ignore: Iterable[str] = (),
    error: type[Exception] = ValueError,
) -> None:
    """Raise ``error`` naming ``what``, the changed fields and the ``remedy`` unless the two
    definitions agree outside ``ignore``."""
    changed = differences(recorded, current, ignore)
    if changed:
        raise error(f"{what} (changed: {describe(recorded, current, changed)}); {remedy}")
