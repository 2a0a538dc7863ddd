"""PyTorch datasets over shard sets, for notebooks and one's own training loops.

- ``ShardDataset(folder)``: map-style (``len``, ``dataset[i]``) over a *local* shard set; sample
  i is the i-th in shard order. A shard is decoded whole on first access and kept, so the set
  costs at most N·C·H·W bytes of memory (CIFAR-10's 50,000 images: 154 MB).
- ``ShardStream(location)``: iterable over a folder or an ``s3://`` / ``http(s)://`` prefix,
  streamed shard by shard; DataLoader workers take every ``num_workers``-th shard, so each
  sample comes once per pass; ``shuffle=True`` permutes shards and samples with (seed, epoch).

Both give (uint8 tensor C×H×W, int label), or ``transform(image)`` instead of the image: grey
sets stay one channel (nothing is converted to RGB or to float behind your back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from sio.core.seeding import numpy_rng
from sio.core.storage import is_url
from sio.shardset.format import ShardError
from sio.shardset.read import read_manifest, shard_chunks, shard_urls


def _shard_arrays(url: str, manifest, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Shard ``index`` decoded whole, checked against its manifest line before parsing."""
    shard = manifest.shards[index]
    images, labels = [], []
    chunks = shard_chunks(url, manifest.encoding, manifest.channels, shard.num_samples, shard)
    for chunk in chunks:
        images.append(chunk.images)
        labels.append(chunk.labels)
    return np.concatenate(images), np.concatenate(labels)


class ShardDataset(Dataset):
    """Map-style dataset of a local shard set: ``dataset[i]`` is (image, label) of sample i."""

    def __init__(self, folder: str | Path, transform: Callable | None = None):
        if is_url(folder):
            raise ShardError(
                f"{folder}: ShardDataset indexes local shard sets; stream a remote one with "
                "ShardStream (or copy it to a folder)"
            )
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.transform = transform
        self._urls = shard_urls(self.folder, self.manifest)
        counts = [s.num_samples for s in self.manifest.shards]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest.class_names)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int):
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"{self.folder}: index {index} out of range for {size} samples")
        index %= size
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        if shard not in self._decoded:
            self._decoded[shard] = _shard_arrays(self._urls[shard], self.manifest, shard)
        images, labels = self._decoded[shard]
        image = torch.from_numpy(images[index - self._starts[shard]].copy())
        label = int(labels[index - self._starts[shard]])
        return (image if self.transform is None else self.transform(image)), label


class ShardStream(IterableDataset):
    """Iterable dataset streaming a shard set (folder or URL prefix) shard by shard."""

    def __init__(
        self,
        location: str | Path,
        *,
        shuffle: bool = False,
        seed: int = 0,
        transform: Callable | None = None,
    ):
        self.location = location
        self.manifest = read_manifest(location)
        self.shuffle, self.seed, self.transform = shuffle, seed, transform
        self.epoch = 0

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest.class_names)

    def __len__(self) -> int:
        return self.manifest.num_samples

    def set_epoch(self, epoch: int) -> None:
        """The pass whose order ``shuffle`` draws (call before each epoch's iteration)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator:
        urls = shard_urls(self.location, self.manifest)
        order = np.arange(len(urls))
        if self.shuffle:
            order = numpy_rng(self.seed, "stream", self.epoch).permutation(len(urls))
        worker = get_worker_info()
        if worker is not None:
            order = order[worker.id :: worker.num_workers]
        for shard in order.tolist():
            images, labels = _shard_arrays(urls[shard], self.manifest, shard)
            within = np.arange(len(images))
            if self.shuffle:
                within = numpy_rng(self.seed, "stream", self.epoch, shard).permutation(len(images))
            for i in within.tolist():
                image = torch.from_numpy(images[i].copy())
                yield (image if self.transform is None else self.transform(image)), int(labels[i])
