"""sio: synthetic in-distribution data for out-of-distribution detection.

The stages live in top-level folders (``generate/``, ``shards/``, ``train/``, ``evaluate/``) and
install as ``sio.generate``, ``sio.shards``, ``sio.train`` and ``sio.evaluate``. When sio is
imported straight from a checkout (``python -m sio`` in the repository root), the repository root
is added to this package's search path so the same names resolve to the same folders.
"""

from pathlib import Path

__version__ = "0.1.0"

_checkout_root = Path(__file__).resolve().parent.parent
if (_checkout_root / "pyproject.toml").is_file() and (_checkout_root / "train").is_dir():
    __path__.append(str(_checkout_root))  # noqa: F821 - a package's own __path__
