"""Resident mode (``train.resident: true``): shard sets loaded once into memory, batches composed
there by index, with the streaming path's exact composition.

Each source becomes one uint8 N x C x H x W tensor plus its labels, in host memory or, when
training on a GPU, in GPU memory (a set that does not fit is refused). A source is drawn as a
sequence of passes: pass k is a random permutation of the set seeded by (seed, source, k), the
same on every rank. Global step s takes positions [s·n, (s+1)·n) of that sequence for a source
with n samples per global batch, and rank r takes its share of them (``rank_share``), so every
image is used once per pass, the ranks' parts never overlap, and the batches depend on the step
alone: a resumed run repeats them. Composition, the within-batch shuffle, the augmentation and
the method's transform are the streaming path's (``assemble``), drawing from generators seeded
by (seed, epoch, rank). Batches are built in the training process (no DataLoader workers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sio.core.seeding import torch_generator
from sio.shardset import ShardError, shard_chunks
from sio.train.sources import ShardSource
from sio.train.stream import SKIP_KINDS, MixSpec, SharedEpoch, assemble

HOST_SHARE, GPU_SHARE = 0.8, 0.5  # of the available host memory, of the free GPU memory


@dataclass(frozen=True)
class ResidentSet:
    images: torch.Tensor  # uint8 N x C x H x W
    labels: torch.Tensor  # int64 N


def _available_bytes(device: torch.device) -> tuple[int | None, float, str]:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], GPU_SHARE, "free GPU memory"
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None, HOST_SHARE, "available host memory"
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024, HOST_SHARE, "available host memory"
    return None, HOST_SHARE, "available host memory"


def check_fits(nbytes: int, device, what: str) -> None:
    available, share, where = _available_bytes(torch.device(device))
    if available is not None and nbytes > share * available:
        raise ValueError(
            f"{what}: {nbytes / 1e9:.2f} GB of images do not fit in {share:.0%} of the "
            f"{available / 1e9:.2f} GB of {where}; set train.resident: false to stream it"
        )


def load_resident(source: ShardSource, device) -> ResidentSet:
    """Every image and label of a shard set (either encoding, any location), read once."""
    manifest = source.manifest
    count, channels = manifest.num_samples, manifest.channels
    shape = (count, channels, *manifest.image_size)
    check_fits(int(np.prod(shape)), device, source.location)
    images, labels = np.empty(shape, np.uint8), np.empty(count, np.int64)
    filled = 0
    for url, shard in zip(source.urls, manifest.shards, strict=True):
        for chunk in shard_chunks(url, manifest.encoding, channels, shard.num_samples):
            end = filled + len(chunk.images)
            if end > count:
                raise ShardError(f"{url}: more samples than the manifest lists")
            images[filled:end], labels[filled:end] = chunk.images, chunk.labels
            filled = end
    return ResidentSet(torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device))


class ResidentBatches:
    """One epoch of batches per iteration, like ``MixedBatches`` through a DataLoader.

    ``sets`` maps each source (``real``, ``synthetic``, extras) to its ResidentSet; ``counts``
    maps it to the samples every rank takes per batch (the global batch's part is their sum).
    """

    def __init__(self, spec: MixSpec, epoch: SharedEpoch, sets: dict, counts: dict):
        self.spec, self.epoch, self.sets, self.counts = spec, epoch, sets, counts
        self.device = next(iter(sets.values())).images.device
        self._orders: dict[tuple[str, int], torch.Tensor] = {}

    def __len__(self) -> int:
        return self.spec.steps_per_epoch

    def _order(self, name: str, passes: torch.Tensor) -> torch.Tensor:
        size = len(self.sets[name].labels)
        for k in torch.unique(passes).tolist():
            if (name, k) not in self._orders:
                self._orders = {
                    key: order
                    for key, order in self._orders.items()
                    if key[0] != name or key[1] >= k - 1
                }
                generator = torch_generator(self.spec.seed, "resident", name, k)
                self._orders[name, k] = torch.randperm(size, generator=generator)
        return torch.stack([self._orders[name, k] for k in torch.unique(passes).tolist()])

    def _take(self, name: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        counts = self.counts.get(name, ())
        total, rank = sum(counts), self.spec.rank
        if not total:
            shape = (0, self.spec.channels, *self.spec.image_size)
            empty = torch.zeros(shape, dtype=torch.uint8, device=self.device)
            return empty, torch.zeros(0, dtype=torch.int64, device=self.device)
        data = self.sets[name]
        start = step * total + sum(counts[:rank])
        positions = torch.arange(start, start + counts[rank])
        passes, offsets = positions // len(data.labels), positions % len(data.labels)
        orders = self._order(name, passes)
        rows = passes - passes.min()
        index = orders[rows, offsets].to(data.images.device)
        return data.images[index], data.labels[index]

    def __iter__(self):
        spec = self.spec
        epoch = self.epoch.get()
        parts = (spec.seed, epoch, spec.rank, 0)
        generators = (torch_generator(*parts, "compose"), torch_generator(*parts, "method"))
        extras = [name for name in self.counts if name not in ("real", "synthetic")]
        for step in range(spec.steps_per_epoch):
            global_step = epoch * spec.steps_per_epoch + step
            batch_parts = (
                self._take("real", global_step),
                self._take("synthetic", global_step),
                {name: self._take(name, global_step)[0] for name in extras},
            )
            batch = assemble(spec, batch_parts, generators, global_step)
            yield {**batch, "skipped": torch.zeros(len(SKIP_KINDS), dtype=torch.int64)}
