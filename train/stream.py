"""Streaming real and synthetic shard sets into batches of exact composition.

Each DataLoader worker builds its own real and synthetic webdataset streams (never webdataset's
``RandomMix``, whose weights are probabilities) and takes exactly ``n_real`` and ``n_syn``
samples from them for every batch it owns. A stream walks the shard list in a fresh random order
on every pass, forever (nothing is split over ranks or workers, so no worker ever runs dry), with
a sample shuffle buffer before decoding. Shards are read from paths or ``s3://``/``http(s)://``
URLs, in either encoding (per-sample PNG, or records of many images, each record's images in a
seeded random order). Every random choice comes from (seed, epoch, rank, worker, source); the
epoch reaches persistent workers through shared memory, because webdataset's own epoch counters
reset in forked workers.

A corrupt sample, record or shard raises a ShardError naming the URL and member, or with
``on_error="skip"`` is skipped and counted: each batch carries ``skipped`` (samples, records,
shards skipped since the worker's previous batch) for the epoch log.

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

from sio.core.seeding import numpy_rng, python_rng, torch_generator
from sio.shardset import ShardError, decode_record, decode_sample
from sio.shardset.tario import check_count, tar_samples
from sio.train.augment import base_augment
from sio.train.mixing import compose, worker_steps

SKIP_KINDS = ("samples", "records", "shards")


class SharedEpoch:
    """The current epoch, visible to persistent DataLoader workers."""

    def __init__(self, epoch: int = 0):
        self._value = multiprocessing.Value("i", epoch)

    def set(self, epoch: int) -> None:
        self._value.value = epoch

    def get(self) -> int:
        return self._value.value


class Faults:
    """A worker's policy for corrupt data: raise (``skip=False``) or skip and count."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.counts = dict.fromkeys(SKIP_KINDS, 0)

    def handle(self, error: ShardError, kind: str) -> None:
        if not self.skip:
            raise error
        self.counts[kind] += 1

    def take(self) -> torch.Tensor:
        """The counts since the last call, as an int64 tensor (samples, records, shards)."""
        counts = torch.tensor([self.counts[k] for k in SKIP_KINDS], dtype=torch.int64)
        self.counts = dict.fromkeys(SKIP_KINDS, 0)
        return counts


def _endless(urls: list[str], rng, faults: Faults, read) -> Iterator:
    """The items of ``read(url)`` over endless passes, each in a fresh random shard order; a
    broken shard goes to ``faults``. A whole pass without one item is an error (skipping alone
    would loop for ever)."""
    while True:
        produced = 0
        for url in rng.sample(urls, len(urls)):
            try:
                for item in read(url):
                    produced += 1
                    yield item
            except ShardError as error:
                faults.handle(error, "shards")
        if not produced:
            raise ShardError(f"a whole pass over {len(urls)} shards (e.g. {urls[0]}) gave nothing")


def _png_reader(expected: dict):
    def read(url: str) -> Iterator[dict]:
        count = 0
        for sample in tar_samples(url):
            count += 1
            yield sample
        check_count(url, count, expected.get(url))

    return read


def _decoded(samples, channels: int, faults: Faults, limit: int):
    """Decoded (image, label) items; ``limit`` failures in a row (a whole set's worth) are an
    error even when skipping."""
    failures = 0
    for sample in samples:
        try:
            image, label, _ = decode_sample(sample, channels)
        except ShardError as error:
            faults.handle(error, "samples")
            failures += 1
            if failures >= limit:
                raise ShardError(f"{failures} samples in a row are undecodable: {error}") from error
            continue
        failures = 0
        yield image, label


def _record_reader(order_rng, channels: int, faults: Faults, expected: dict):
    """(image, label) items of a records shard, each record in a random order."""

    def read(url: str) -> Iterator[tuple]:
        count, skipped = 0, False
        for sample in tar_samples(url):
            try:
                images, labels = decode_record(sample, channels)
            except ShardError as error:
                faults.handle(error, "records")
                skipped = True
                continue
            count += len(images)
            order = order_rng.permutation(len(images))
            yield from zip(images[order], labels[order].tolist(), strict=True)
        if not skipped:
            check_count(url, count, expected.get(url))

    return read


@dataclass(frozen=True)
class SourceStream:
    """How one worker reads one shard set."""

    urls: tuple[str, ...]
    channels: int
    shuffle_buffer: int
    encoding: str = "png"
    expected: tuple[tuple[str, int], ...] = ()  # images per shard URL, from the manifest

    def items(self, seed_parts: tuple, faults: Faults) -> Iterator[tuple[np.ndarray, int]]:
        rng, expected = python_rng(*seed_parts, "shards"), dict(self.expected)
        buffer = self.shuffle_buffer
        shuffle = wds.shuffle(
            buffer, initial=min(buffer, 100), rng=python_rng(*seed_parts, "shuffle")
        )
        urls = list(self.urls)
        if self.encoding == "records":
            order = numpy_rng(*seed_parts, "records")
            read = _record_reader(order, self.channels, faults, expected)
            return shuffle(_endless(urls, rng, faults, read))
        samples = shuffle(_endless(urls, rng, faults, _png_reader(expected)))
        limit = sum(expected.get(url, 0) for url in urls) or 100_000
        return _decoded(samples, self.channels, faults, limit)


def source_batches(
    stream: SourceStream, batch_size: int, seed_parts: tuple, faults: Faults
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (uint8 images, labels) batches of exactly ``batch_size`` from one shard set."""
    items = stream.items(seed_parts, faults)
    while True:
        batch = [next(items) for _ in range(batch_size)]
        images = torch.from_numpy(np.stack([b[0] for b in batch]))
        yield images, torch.tensor([b[1] for b in batch], dtype=torch.int64)


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
    # source name -> "png" | "records" (absent: png); shard URL -> images (absent: unchecked)
    encodings: tuple[tuple[str, str], ...] = ()
    expected: tuple[tuple[str, int], ...] = ()
    on_error: str = "raise"  # or "skip"

    def stream(self, name: str, urls: tuple[str, ...]) -> SourceStream:
        return SourceStream(
            urls=tuple(urls),
            channels=self.channels,
            shuffle_buffer=self.shuffle_buffer,
            encoding=dict(self.encodings).get(name, "png"),
            expected=self.expected,
        )


def check_spec(spec: MixSpec) -> None:
    if spec.n_real and not spec.real_urls:
        raise ValueError("n_real > 0 needs a real shard set")
    if spec.n_syn and not spec.synthetic_urls:
        raise ValueError("n_syn > 0 needs a synthetic shard set")
    if spec.on_error not in ("raise", "skip"):
        raise ValueError(f"on_error is 'raise' or 'skip', got {spec.on_error!r}")
    for name, urls, count in spec.extras:
        if count < 1 or not urls or name in ("real", "synthetic"):
            raise ValueError(f"extra source {name!r} needs shards and a count >= 1")


def assemble(spec: MixSpec, parts, generators, step: int) -> dict:
    """One batch from its real part, synthetic part and extras: composed and shuffled, the
    recipe's augmentation, then the method's transform. ``parts`` is (real, synthetic,
    {name: extra images}), ``generators`` (compose, method)."""
    (real_images, real_labels), (syn_images, syn_labels), extras = parts
    generator, method_generator = generators
    images, order, is_synthetic = compose(real_images, syn_images, generator)
    labels = torch.cat([real_labels, syn_labels])
    batch = {
        "images": augment(spec, images, generator),
        "labels": labels[order.to(labels.device)],
        "is_synthetic": is_synthetic,
        "step": step,
    }
    for name, extra in extras.items():
        batch[name] = augment(spec, extra, method_generator)
    if spec.transform is not None:
        batch = spec.transform(batch, method_generator)
    return batch


def augment(spec: MixSpec, images: torch.Tensor, generator) -> torch.Tensor:
    return base_augment(
        images,
        generator,
        padding=spec.crop_padding,
        hflip=spec.hflip,
        resized_crop=spec.resized_crop,
    )


class MixedBatches(IterableDataset):
    """One epoch of batches per iteration: dicts with ``images`` (uint8, or float in [0, 1]
    after a PixMix transform), ``labels``, ``is_synthetic``, the global ``step``, ``skipped``,
    one entry per extra source and what the transform adds. Use with
    ``DataLoader(batch_size=None)``."""

    def __init__(self, spec: MixSpec, epoch: SharedEpoch):
        super().__init__()
        check_spec(spec)
        self.spec = spec
        self.epoch = epoch

    def _source(self, name, urls, count, parts, faults):
        if count == 0:
            shape = (0, self.spec.channels, *self.spec.image_size)
            empty = (torch.zeros(shape, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
            while True:
                yield empty
        yield from source_batches(self.spec.stream(name, urls), count, (*parts, name), faults)

    def __iter__(self):
        spec = self.spec
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = self.epoch.get()
        parts = (spec.seed, epoch, spec.rank, worker)
        faults = Faults(spec.on_error == "skip")
        real = self._source("real", spec.real_urls, spec.n_real, parts, faults)
        synthetic = self._source("synthetic", spec.synthetic_urls, spec.n_syn, parts, faults)
        extras = {name: self._source(name, urls, n, parts, faults) for name, urls, n in spec.extras}
        generators = (torch_generator(*parts, "compose"), torch_generator(*parts, "method"))
        for step in worker_steps(spec.steps_per_epoch, worker, num_workers):
            batch_parts = (
                next(real),
                next(synthetic),
                {name: next(source)[0] for name, source in extras.items()},
            )
            batch = assemble(spec, batch_parts, generators, epoch * spec.steps_per_epoch + step)
            yield {**batch, "skipped": faults.take()}
