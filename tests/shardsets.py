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


def flat_set(folder, names, channels, size=8, step=30, count=6):
    """``count`` flat real images (image i all ``step * i``) of ``names`` in turn, shards of 4."""
    import numpy as np

    shape = (size, size) if channels == 1 else (size, size, 3)
    with ShardSetWriter(
        folder,
        kind="real",
        name="real",
        image_size=(size, size),
        channels=channels,
        class_names=tuple(names),
        shard_size=4,
    ) as writer:
        for i in range(count):
            writer.write(f"r{i}", np.full(shape, step * i, np.uint8), i % len(names), {})
    return folder
