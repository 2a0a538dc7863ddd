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
