"""Tiny grey shard sets for tests: one writer call instead of the same eight lines per file."""

from __future__ import annotations

from sio.shardset import ShardSetWriter


def grey_writer(folder, kind, class_names, shard_size, image_size=(8, 8)) -> ShardSetWriter:
    """A ``ShardSetWriter`` for a grey set named after its ``kind`` (real or synthetic)."""
    return ShardSetWriter(
        folder,
        kind=kind,
        name=kind,
        image_size=image_size,
        channels=1,
        class_names=tuple(class_names),
        shard_size=shard_size,
    )


def two_class_set(folder):
    """16 grey 8x8 real samples of classes a (dark) and b (bright) in shards of 8: ``folder``."""
    import numpy as np

    rng = np.random.default_rng(0)
    with grey_writer(folder, "real", ("a", "b"), 8) as writer:
        for i in range(16):
            image = rng.integers(0, 60, (8, 8)) + 150 * (i % 2)
            writer.write(f"real-{i:04d}", image.astype(np.uint8), i % 2, {"i": i})
    return folder
