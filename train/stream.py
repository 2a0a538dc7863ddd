"""Streaming real and synthetic shard sets into batches of exact composition.

Each DataLoader worker builds its own real and synthetic webdataset streams (never webdataset's
``RandomMix``, whose weights are probabilities) and takes exactly ``n_real`` and ``n_syn``
samples from them for every batch it owns. A stream walks the shard list in a fresh random order
on every pass, forever, with a sample shuffle buffer before decoding. Every random choice comes
from (seed, epoch, rank, worker, source); the epoch reaches persistent workers through shared
memory, because webdataset's own epoch counters reset in forked workers.

A training method may add sources (OE's outliers, PixMix's mixing pictures: ``extras``, each
with its own stream, count and augmentation, outside the real/synthetic composition) and a
batch ``transform`` (CutMix, PixMix, RandAugment); both draw from their own generators, so the
ID composition and the real/synthetic streams are the same with every method.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from sio.seeding import python_rng, torch_generator
from sio.shards import ShardError, decode_sample

from .augment import base_augment
from .mixing import compose, worker_steps


class SharedEpoch:
    """The current epoch, visible to persistent DataLoader workers."""

    def __init__(self, epoch: int = 0):
        self._value = multiprocessing.Value("i", epoch)

    def set(self, epoch: int) -> None:
        self._value.value = epoch

    def get(self) -> int:
        return self._value.value


def _raise_with_url(error: Exception) -> bool:
    raise ShardError(f"cannot read shard: {error}") from error


def _shard_passes(urls: list[str], rng) -> Iterator[dict]:
    while True:
        for url in rng.sample(urls, len(urls)):
            yield {"url": url}


def source_batches(
    urls: list[str], batch_size: int, *, channels: int, shuffle_buffer: int, seed_parts: tuple
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (uint8 images, labels) batches of exactly ``batch_size`` from one shard set."""
    samples = wds.tarfile_to_samples(handler=_raise_with_url)(
        _shard_passes(urls, python_rng(*seed_parts, "shards"))
    )
    samples = wds.shuffle(
        shuffle_buffer, initial=min(shuffle_buffer, 100), rng=python_rng(*seed_parts, "shuffle")
    )(samples)
    while True:
        decoded = [decode_sample(next(samples), channels) for _ in range(batch_size)]
        images = torch.from_numpy(np.stack([d[0] for d in decoded]))
        yield images, torch.tensor([d[1] for d in decoded], dtype=torch.int64)


@dataclass(frozen=True)
class MixSpec:
    real_urls: tuple[str, ...]
    synthetic_urls: tuple[str, ...]
    n_real: int
    n_syn: int
    channels: int
    image_size: tuple[int, int]
    steps_per_epoch: int
    seed: int
    rank: int = 0
    shuffle_buffer: int = 1000
    crop_padding: int = 0
    hflip: bool = False
    resized_crop: int = 0
    # (name, urls, samples per batch) of each extra source; labels are dropped
    extras: tuple[tuple[str, tuple[str, ...], int], ...] = ()
    # the method's batch transform: transform(batch, generator) -> batch
    transform: Callable | None = None


class MixedBatches(IterableDataset):
    """One epoch of batches per iteration: dicts with ``images`` (uint8, or float in [0, 1]
    after a PixMix transform), ``labels``, ``is_synthetic``, the global ``step``, one entry per
    extra source and what the transform adds. Use with ``DataLoader(batch_size=None)``."""

    def __init__(self, spec: MixSpec, epoch: SharedEpoch):
        super().__init__()
        if spec.n_real and not spec.real_urls:
            raise ValueError("n_real > 0 needs a real shard set")
        if spec.n_syn and not spec.synthetic_urls:
            raise ValueError("n_syn > 0 needs a synthetic shard set")
        for name, urls, count in spec.extras:
            if count < 1 or not urls or name in ("real", "synthetic"):
                raise ValueError(f"extra source {name!r} needs shards and a count >= 1")
        self.spec = spec
        self.epoch = epoch

    def _source(self, urls, count, parts, name):
        if count == 0:
            shape = (0, self.spec.channels, *self.spec.image_size)
            empty = (torch.zeros(shape, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
            while True:
                yield empty
        yield from source_batches(
            list(urls),
            count,
            channels=self.spec.channels,
            shuffle_buffer=self.spec.shuffle_buffer,
            seed_parts=(*parts, name),
        )

    def __iter__(self):
        spec = self.spec
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = self.epoch.get()
        parts = (spec.seed, epoch, spec.rank, worker)
        real = self._source(spec.real_urls, spec.n_real, parts, "real")
        synthetic = self._source(spec.synthetic_urls, spec.n_syn, parts, "synthetic")
        extras = {name: self._source(urls, n, parts, name) for name, urls, n in spec.extras}
        generator = torch_generator(*parts, "compose")
        method_generator = torch_generator(*parts, "method")
        for step in worker_steps(spec.steps_per_epoch, worker, num_workers):
            real_images, real_labels = next(real)
            syn_images, syn_labels = next(synthetic)
            images, order, is_synthetic = compose(real_images, syn_images, generator)
            batch = {
                "images": self._augment(images, generator),
                "labels": torch.cat([real_labels, syn_labels])[order],
                "is_synthetic": is_synthetic,
                "step": epoch * spec.steps_per_epoch + step,
            }
            for name, source in extras.items():
                batch[name] = self._augment(next(source)[0], method_generator)
            if spec.transform is not None:
                batch = spec.transform(batch, method_generator)
            yield batch

    def _augment(self, images, generator):
        spec = self.spec
        return base_augment(
            images,
            generator,
            padding=spec.crop_padding,
            hflip=spec.hflip,
            resized_crop=spec.resized_crop,
        )
