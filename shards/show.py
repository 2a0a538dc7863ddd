"""``sio shards show``: a grid of sample images per class of a shard set, as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sio.core.files import atomic_path
from sio.shardset import iter_samples, read_manifest


def sample_grid(shard_set: str | Path, per_class: int = 8, scale: int = 0) -> np.ndarray:
    """The first ``per_class`` images of each class (one row per class, in class order; a
    class with fewer leaves its row's rest black), 1-pixel gaps, each image enlarged ``scale``
    times (0: to about 64 pixels). uint8 H×W (grey sets) or H×W×3."""
    manifest = read_manifest(shard_set)
    height, width = manifest.image_size
    scale = scale or max(1, 64 // max(height, width))
    rows: list[list[np.ndarray]] = [[] for _ in manifest.class_names]
    for image, label, _ in iter_samples(shard_set):
        if len(rows[label]) < per_class:
            rows[label].append(image)
        if all(len(r) == per_class for r in rows):
            break
    cell_h, cell_w = height * scale + 1, width * scale + 1
    grid = np.zeros((manifest.channels, len(rows) * cell_h + 1, per_class * cell_w + 1), np.uint8)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            big = image.repeat(scale, axis=1).repeat(scale, axis=2)
            top, left = 1 + r * cell_h, 1 + c * cell_w
            grid[:, top : top + height * scale, left : left + width * scale] = big
    return grid[0] if manifest.channels == 1 else grid.transpose(1, 2, 0)


def write_grid(shard_set: str | Path, out: str | Path, per_class: int = 8, scale: int = 0) -> Path:
    """``sample_grid`` saved as a PNG (grey sets as grey, mode L)."""
    out = Path(out)
    with atomic_path(out) as partial:
        Image.fromarray(sample_grid(shard_set, per_class, scale)).save(partial, format="PNG")
    return out
