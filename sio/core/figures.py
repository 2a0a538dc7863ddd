"""The one way a figure is saved: the named file (a PNG, or whatever its suffix says) and the
same figure as PDF and SVG beside it (``log.png``, ``log.pdf``, ``log.svg``) for a paper, each
written atomically, cropped to what is drawn (``bbox_inches="tight"``: a legend placed outside
the axes is kept) unless the figure's own layout holds it, rasters at ``DPI``."""

from __future__ import annotations

from pathlib import Path

from sio.core.files import atomic_path

VECTOR_FORMATS = ("pdf", "svg")
DPI = 200


def figure_paths(path: str | Path) -> list[Path]:
    """``path`` and its PDF and SVG siblings (a path already ending in one of them: once)."""
    path = Path(path)
    siblings = [path.with_suffix(f".{fmt}") for fmt in VECTOR_FORMATS]
    return [path, *[p for p in siblings if p != path]]


def save_figure(figure, path: str | Path, tight: bool = True) -> Path:
    """Write matplotlib ``figure`` to ``path`` and to its PDF and SVG siblings; returns
    ``path``. The format of ``path`` is its suffix (PNG without one). ``tight=False`` keeps
    the figure's own size (a figure whose layout already holds its legends)."""
    for target in figure_paths(path):
        fmt = target.suffix.lstrip(".").lower() or "png"
        with atomic_path(target) as tmp:  # a killed run leaves no half-written figure
            figure.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight" if tight else None)
    return Path(path)
