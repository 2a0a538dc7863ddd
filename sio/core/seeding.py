"""Every random choice in sio is derived from explicit parts, never from global RNG state.

``derive_seed(seed, epoch, rank, worker, "real")`` gives the same 63-bit integer on every machine
and interpreter (it hashes the parts' text with SHA-256, not Python's salted ``hash``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from any sequence of ints and strings."""
    for part in parts:
        if not isinstance(part, (int, str)) or isinstance(part, bool):
            raise TypeError(f"seed parts are ints or strings, got {part!r}")
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def torch_generator(*parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def numpy_rng(*parts: int | str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))
