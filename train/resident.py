"""Resident mode (``train.resident: true``): shard sets loaded once into memory, batches composed
there by index, exactly the streaming path's batches.

Each source becomes one uint8 N x C x H x W tensor plus its labels and keys, in host memory or,
when training on a GPU, in GPU memory (a set that does not fit is refused). The samples of step
t are the streaming path's (passes.py: the same seeded passes, the same positions, the same
``rank_share`` slices), and composition, augmentation and the method's transform are its
``assemble``: streaming and resident runs of one seed see the same batches. Batches are built in
the training process (no DataLoader workers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sio.shardset import Check, ShardError, ShardRef
from sio.train.cache import Fetcher, cache_folder
from sio.train.compose import assemble
from sio.train.passes import PassOrders, slice_start
from sio.train.rowcache import ShardLoader
from sio.train.sources import LocatedSet
from sio.train.spec import MixSpec, resolve_streams
from sio.train.stream import SharedEpoch

HOST_SHARE, GPU_SHARE = 0.8, 0.5  # of the available host memory, of the free GPU memory


@dataclass(frozen=True)
class ResidentSet:
    images: torch.Tensor  # uint8 N x C x H x W
    labels: torch.Tensor  # int64 N
    keys: tuple[str, ...] = ()  # each sample's key (a record's images: from its meta.json)


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


def load_resident(source: LocatedSet, device, fetcher: Fetcher | None = None) -> ResidentSet:
    """Every image, label and key of a shard set (either encoding, any location), read once,
    each shard checked against the manifest's sha256, labels and image shape. Given the run's
    ``fetcher`` (the trainer's), shards come through the node's decoded cache under its
    ``cache_dir`` (rowcache.py): a PNG set is decoded once per node, not once per run."""
    manifest = source.manifest
    count, channels = manifest.num_samples, manifest.channels
    shape = (count, channels, *manifest.image_size)
    check_fits(int(np.prod(shape)), device, source.location)
    decoded = cache_folder(fetcher.cache_dir) if fetcher is not None else None
    fetcher = fetcher or Fetcher(None, None, 600.0)
    loader = ShardLoader(fetcher, decoded, fetcher.cache_limit)
    check = Check(channels, tuple(manifest.image_size), len(manifest.class_names))
    images, labels, keys = np.empty(shape, np.uint8), np.empty(count, np.int64), []
    filled = 0
    for url, shard in zip(source.urls, manifest.shards, strict=True):
        ref = ShardRef(url, shard.num_samples, shard.sha256 or "")
        loaded = loader.load(ref, manifest.encoding, check)
        if filled + len(loaded.keys) > count:
            raise ShardError(f"{url}: more samples than the manifest lists")
        for index in loaded.broken:
            loaded.sample(index)  # its ShardError
        end = filled + len(loaded.keys)
        images[filled:end], labels[filled:end] = loaded.images, loaded.labels
        filled = end
        keys += loaded.keys.tolist()
    return ResidentSet(
        torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device), tuple(keys)
    )


class ResidentBatches:
    """One epoch of batches per iteration (from the epoch's first step), like
    ``MixedBatches`` through a DataLoader.

    ``sets`` maps each source (``real``, ``synthetic``, extras) to its ResidentSet; ``counts``
    maps it to the samples every rank takes per batch (the global batch's part is their sum).
    """

    def __init__(self, spec: MixSpec, epoch: SharedEpoch, sets: dict, counts: dict):
        self.spec, self.epoch, self.sets, self.counts = spec, epoch, sets, counts
        self.streams = resolve_streams(spec, counts)
        self.device = next(iter(sets.values())).images.device
        self.orders = {name: PassOrders(s.layout, spec.seed) for name, s in self.streams.items()}

    def __len__(self) -> int:
        return self.spec.steps_per_epoch

    def _take(self, name: str, step: int):
        stream, data = self.streams[name], self.sets[name]
        start = slice_start(step, stream.shares, self.spec.rank)
        _, ids = self.orders[name].positions(start, stream.shares[self.spec.rank])
        index = torch.from_numpy(ids).to(data.images.device)
        keys = [data.keys[i] for i in ids.tolist()] if data.keys else []
        # index_select: see assemble's note on torch's advanced indexing of uint8 batches
        return data.images.index_select(0, index), data.labels.index_select(0, index), keys

    def batch(self, step: int) -> dict:
        parts = {name: self._take(name, step) for name in self.streams}
        batch = assemble(self.spec, self.streams, parts, step)
        return {**batch, "faults": [], "fetched": 0}

    def __iter__(self):
        spec = self.spec
        epoch, first = self.epoch.get(), self.epoch.first_step
        for step in range(first, spec.steps_per_epoch):
            yield self.batch(epoch * spec.steps_per_epoch + step)
