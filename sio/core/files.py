"""Small file helpers shared by the stages: checksums and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text under a temporary name of this writer's own, then rename: readers never see
    half a file, and writers racing on one file (torchrun ranks) never share a temporary."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, data) -> None:
    """JSON (sorted keys, indented) written as ``write_text_atomic`` does."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
