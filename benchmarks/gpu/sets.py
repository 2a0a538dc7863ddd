"""The real and synthetic shard sets of the trainer and loader sections, in both encodings,
written through the shard-set contract's one writer (``ShardSetWriter``)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from gpu.harness import CLASSES, Bench


def natural(n: int, side: int, seed: int) -> np.ndarray:
    from sio.shards.samplefiles import natural_images

    return natural_images(n, side, seed=seed)  # N x H x W x 3


def write_set(folder: Path, images: np.ndarray, kind: str, size: dict, encoding: str) -> Path:
    """A shard set of ``images`` (``shard`` per shard; records of ``record`` images)."""
    from sio.shardset import ShardSetWriter

    with ShardSetWriter(
        folder,
        kind=kind,
        name=kind,
        image_size=(size["image"],) * 2,
        channels=3,
        class_names=[str(c) for c in range(CLASSES)],
        shard_size=size["shard"],
        provenance={"benchmark": "benchmarks/gpu"},
        encoding=encoding,
        record_size=size["record"],
    ) as writer:
        for i, image in enumerate(images):
            writer.write(f"{kind}-{i:08d}", image, i % CLASSES, {"source": kind, "index": i})
    return folder


class Sets:
    """The real and synthetic sets, written on first use (a run cut short may need none)."""

    def __init__(self, bench: Bench, root: Path):
        self.bench, self.root, self._sets = bench, root, {}

    def get(self, encoding: str) -> tuple[Path, Path]:
        if encoding not in self._sets:
            size, start = self.bench.size, time.perf_counter()
            self._sets[encoding] = tuple(
                write_set(
                    self.root / f"{kind}-{encoding}",
                    natural(size[kind], size["image"], seed),
                    kind,
                    size,
                    encoding,
                )
                for kind, seed in (("real", 0), ("synthetic", 1))
            )
            took = time.perf_counter() - start
            self.bench.data.setdefault("shard_sets_written_s", {})[encoding] = took
        return self._sets[encoding]
