"""Streaming real and synthetic shard sets into batches of exact composition, elastically.

Which samples step t holds is decided by ``passes.py``: each source is consumed as consecutive
seeded permutations of the whole set, the global batch at step t takes the next ``n`` positions
of each source, and rank r its ``rank_share`` slice. Everything random about a global batch is a
function of (seed, t) alone: the samples, the order of the batch (one permutation of the global
batch, each rank keeping its own samples in that order) and the augmentation draws (made for the
whole global part of a source, each rank applying its slice). So 1 or W ranks, 0 or w
DataLoader workers give the same global batches. An epoch's steps are cut into items of a few
consecutive steps (``steps_per_item``: a DataLoader's per-item work, in the worker and in the
main process, is then paid once for several small batches) which the workers take as they are
ready (claims.py: a worker slowed by a shared core or a slow fetch makes fewer, none waits for
another's turn); ``StreamLoader`` unpacks them and yields the batches in step order.

A ``PassReader`` (passreader.py, one per stream and process or worker) loads the shards its
positions fall in, whole, as decoded rows into a small LRU (a pass group is a few shards, see
passes.py). A shard with a sha256 is read, checked and decoded once per node: the first process
to need it writes its rows to the node's decoded cache under ``cache_dir`` and every worker and
rank maps them from there (rowcache.py); its bytes come from the path, or for
``s3://``/``http(s)://`` through the node-local shard cache (cache.py), transport errors retried
up to ``read_timeout``, each fetch cut off after ``fetch_deadline``. Decoding and its checks
(sha256 before parsing, sample count, images of the manifest's channels and size, labels in
[0, K)) are the contract's ``decode_shard``. Composition and augmentation: compose.py; the spec
and its resolved streams: spec.py.

A corrupt sample, record or shard raises a ShardError naming the URL and member, or with
``on_error="skip"`` is replaced by the next readable sample of the same pass and counted: each
batch carries ``faults`` (kind, key) pairs, which the loop dedupes into the epoch's counts. A
transport outage is never skipped. In a DataLoader worker an error travels as the last entry
of an item, ``{"error": message, "kind", "traceback", "step"}`` after the item's earlier
batches, and is raised when its step comes, so the user sees the message without the worker's
traceback, where one process would stop. Each batch also carries ``ids``: the key of every
real and synthetic sample (a record's images: their keys in its meta.json), for the trace, and
``keys``, those of its images in batch order. A worker
sends an item (one or a few steps' batches) through its ring of shared slots (ring.py): their
tensors written into a slot the main process has mapped since the slot's first use, so only a
slot number and the small values cross the DataLoader's queue.

A training method may add sources (OE's outliers, PixMix's pictures: ``extras``, consumed the
same way, outside the real/synthetic composition) and a batch ``transform`` (CutMix, PixMix,
RandAugment) drawing from its own generator (per step and rank: it acts on the rank's batch).
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
import weakref

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sio.core.storage import TransportError
from sio.shardset import Check, ShardError
from sio.train.cache import Fetcher, cache_folder
from sio.train.claims import ItemClaims
from sio.train.compose import assemble
from sio.train.mixing import epoch_items
from sio.train.passes import slice_start
from sio.train.passreader import SKIP_KINDS, Faults, PassReader, skip_counts
from sio.train.ring import SlotRing
from sio.train.rowcache import ShardLoader
from sio.train.spec import MixSpec, check_spec, resolve_streams

__all__ = [
    "SKIP_KINDS",
    "Fetcher",
    "MixSpec",
    "MixedBatches",
    "SharedEpoch",
    "StreamLoader",
    "raise_worker_error",
    "skip_counts",
]


ITEM_BYTES = 8 * 2**20  # images a DataLoader worker sends as one item, at most (if > 1 batch)
MAX_STEPS_PER_ITEM = 16
AHEAD_ITEMS = 4  # per worker: how far (in items) a worker may run past the main process


class SharedEpoch:
    """The current epoch and its first step, visible to persistent DataLoader workers."""

    def __init__(self, epoch: int = 0, first_step: int = 0):
        self._value = multiprocessing.Value("i", epoch)
        self._first = multiprocessing.Value("i", first_step)

    def set(self, epoch: int, first_step: int = 0) -> None:
        self._value.value = epoch
        self._first.value = first_step

    def get(self) -> int:
        return self._value.value

    @property
    def first_step(self) -> int:
        return self._first.value


class MixedBatches(IterableDataset):
    """One epoch of batches per iteration (from the epoch's ``first_step``): dicts with
    ``images`` (uint8, or float in [0, 1] after a PixMix transform), ``labels``,
    ``is_synthetic``, the global ``step``, ``ids``, ``faults``, ``fetched`` (bytes),
    ``shard_reads``, ``shard_decodes`` and ``shard_cached`` (rowcache.Counts), one entry per extra
    stream and what the transform adds. In DataLoader workers each item is a list of a few
    consecutive steps' batches, taken and sent as the workers are ready: iterate it with
    ``StreamLoader``, which gives one batch per step, in order."""

    def __init__(self, spec: MixSpec, epoch: SharedEpoch):
        super().__init__()
        check_spec(spec)
        self.spec = spec
        self.epoch = epoch
        self.streams = resolve_streams(spec)
        self.folder = cache_folder(spec.cache_dir) if spec.decoded_cache else None
        self._readers = None
        self._ring: SlotRing | None = None
        self.claims: ItemClaims | None = None  # set by StreamLoader, shared with its workers
        self.generation = 0  # the claims' generation StreamLoader started last (copied by workers)
        self._counted: tuple[int, int] | None = None  # in a worker: (its pid, its generation)

    def readers(self) -> dict[str, PassReader]:
        if self._readers is None:
            spec = self.spec
            fetcher = Fetcher(
                spec.cache_dir, spec.cache_limit, spec.read_timeout, spec.fetch_deadline
            )
            self.loader = ShardLoader(fetcher, self.folder, spec.cache_limit)
            self.faults = Faults(spec.on_error == "skip")
            self._readers = {}
            for name, stream in self.streams.items():
                classes = spec.num_classes if name in ("real", "synthetic") else None
                check = Check(spec.channels, tuple(spec.image_size), classes)
                self._readers[name] = PassReader(stream, spec.seed, check, self.loader, self.faults)
        return self._readers

    def ring(self) -> SlotRing:
        """This worker process's slots (a fork starts without the parent's)."""
        if self._ring is None or self._ring.token[0] != os.getpid():
            self._ring = SlotRing()
        return self._ring

    def batch(self, step: int) -> dict:
        """The batch of global step ``step`` on this rank."""
        spec, readers = self.spec, self.readers()
        parts = {}
        for name, stream in self.streams.items():
            start = slice_start(step, stream.shares, spec.rank)
            parts[name] = readers[name].take(start, stream.shares[spec.rank])
        batch = assemble(spec, self.streams, parts, step)
        fetched, self.loader.fetcher.fetched = self.loader.fetcher.fetched, 0
        counts = self.loader.counts.take()
        return {**batch, "faults": self.faults.take(), "fetched": fetched, **counts}

    def steps_per_item(self, num_steps: int, num_workers: int) -> int:
        """Consecutive steps a DataLoader worker sends as one item: batches up to ``ITEM_BYTES``
        of images together (the DataLoader's per-item work, ~0.5 ms of a worker's and ~0.3 ms
        of the main process's, is then paid once for them), while the epoch has an item for
        each worker; 1 for batches of large images. A batch transform may leave float
        images (PixMix): with one, a pixel counts 4 bytes."""
        spec = self.spec
        height, width = spec.image_size
        samples = spec.n_real + spec.n_syn + sum(count for _, _, count in spec.extras)
        pixel = 1 if spec.transform is None else 4
        batch_bytes = max(1, samples) * spec.channels * height * width * pixel
        by_size = min(MAX_STEPS_PER_ITEM, ITEM_BYTES // batch_bytes)
        return max(1, min(by_size, num_steps // max(1, num_workers)))

    def __iter__(self):
        """One epoch: in this process every step, in a DataLoader worker the items it takes.
        The epoch, and in a worker the claims' generation, are fixed here (the DataLoader
        calls this once per worker and iteration: when the worker starts, and on each
        iteration's resume), so an iterator left from an abandoned epoch, whenever it runs,
        takes nothing of the next."""
        info = get_worker_info()
        generation = None if info is None else self._worker_generation()  # first: nothing skips it
        start, num_steps = self.epoch_steps()
        if info is None:
            return (self.batch(start + step) for step in range(num_steps))
        return self._worker_items(info, start, num_steps, generation)

    def _worker_generation(self) -> int | None:
        """The claims' generation of this iteration, counted in the worker: the one
        StreamLoader started before the worker was made, then one more per iteration
        (StreamLoader starts one generation per iteration). None without claims."""
        if self.claims is None:
            return None
        pid = os.getpid()
        if self._counted is None or self._counted[0] != pid:
            self._counted = (pid, self.generation)
        else:
            self._counted = (pid, self._counted[1] + 1)
        return self._counted[1]

    def _worker_items(self, info, start: int, num_steps: int, generation: int | None):
        if generation is None:
            raise RuntimeError(
                "MixedBatches in DataLoader workers: iterate it with StreamLoader, which "
                "shares out the epoch's items and puts them back in step order"
            )
        group = self.steps_per_item(num_steps, info.num_workers)
        items = epoch_items(num_steps, info.num_workers, group)
        ahead = AHEAD_ITEMS * max(1, info.num_workers) * group
        while (index := self.claims.take(generation, items, ahead)) is not None:
            batches = []
            try:
                for step in items[index]:
                    batches.append(self.batch(start + step))
            except (ShardError, TransportError) as error:  # any other: the DataLoader's own way
                kind = "transport" if isinstance(error, TransportError) else "shard"
                trace = traceback.format_exc()
                failed = {"error": str(error), "kind": kind, "traceback": trace}
                yield [*batches, {**failed, "step": start + items[index].start + len(batches)}]
                return
            yield self.ring().pack(batches)
            del batches

    def epoch_steps(self) -> tuple[int, int]:
        """(global step of the epoch's first batch, number of steps left in the epoch)."""
        epoch, first = self.epoch.get(), self.epoch.first_step
        return epoch * self.spec.steps_per_epoch + first, self.spec.steps_per_epoch - first


class StreamLoader:
    """The batches of ``batches`` through a DataLoader of ``num_workers`` persistent workers
    (0: in this process), one per step in order, one epoch per iteration. The workers take the
    epoch's items (a few consecutive steps each) as they are ready (claims.py) and send them as
    they are made; the batches are put back in step order here, and an error a worker sent is
    raised when its step comes (``in_step_order``)."""

    def __init__(self, batches: MixedBatches, num_workers: int = 0, pin_memory: bool = False):
        self.batches = batches
        self.loader = batches
        if num_workers:
            if batches.claims is not None:
                raise ValueError(
                    "this MixedBatches already streams through another StreamLoader's workers: "
                    "give each StreamLoader its own"
                )
            batches.claims = ItemClaims()
            self.loader = DataLoader(
                batches,
                batch_size=None,
                num_workers=num_workers,
                persistent_workers=True,
                pin_memory=pin_memory,
                in_order=False,  # items come as they are made; in_step_order orders them
            )

    def __iter__(self):
        if self.loader is self.batches:
            return iter(self.batches)
        claims = self.batches.claims
        generation = self.batches.generation = claims.start()
        start, num_steps = self.batches.epoch_steps()
        batches = in_step_order(iter(self.loader), start, num_steps, claims, generation)
        # ended however the iterator goes: exhausted, failed, closed, or dropped unstarted
        weakref.finalize(batches, claims.stop, generation)
        return batches


def raise_worker_error(batch: dict) -> None:
    """Raise the error a DataLoader worker sent as a batch: its message alone (the worker's
    traceback rides on the exception as ``worker_traceback``, for the log and ``--debug``)."""
    error_class = TransportError if batch.get("kind") == "transport" else ShardError
    error = error_class(batch["error"])
    error.worker_traceback = batch.get("traceback", "")
    raise error


def in_step_order(items, start: int, num_steps: int, claims: ItemClaims, generation: int):
    """The batches of the workers' ``items`` (each a list of consecutive steps' batches, in
    the order they were made) one per step from ``start``, in order; the error a worker met
    is raised at its step. ``claims`` learns how far the epoch has been yielded, and that it
    ended (finished, failed or abandoned: no worker takes another item of it)."""
    waiting, step, end = {}, start, start + num_steps
    try:
        for item in items:
            for batch in item:
                if batch["step"] < step or batch["step"] in waiting:
                    raise RuntimeError(f"step {batch['step']} came twice from the workers")
                waiting[batch["step"]] = batch
            while step in waiting:
                batch = waiting.pop(step)
                if "error" in batch:
                    raise_worker_error(batch)
                step += 1
                claims.advance(generation, step - start)
                yield batch
        if step != end or waiting:  # a worker's items went missing: never silently short
            raise RuntimeError(f"the workers' items ended at step {step} of {start}..{end - 1}")
    finally:
        claims.stop(generation)
