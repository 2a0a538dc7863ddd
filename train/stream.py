"""Streaming real and synthetic shard sets into batches of exact composition, elastically.

Which samples step t holds is decided by ``passes.py``: each source is consumed as consecutive
seeded permutations of the whole set, the global batch at step t takes the next ``n`` positions
of each source, and rank r its ``rank_share`` slice. Everything random about a global batch is a
function of (seed, t) alone: the samples, the order of the batch (one permutation of the global
batch, each rank keeping its own samples in that order) and the augmentation draws (made for the
whole global part of a source, each rank applying its slice). So 1 or W ranks, 0 or w
DataLoader workers give the same global batches. Through DataLoader workers a ``StreamLoader``
runs one stream of steps from where it starts on, across epochs: while the main process ends
one epoch (validation, a checkpoint) the workers make the next one's first items, so no epoch
starts cold and the workers never wait at an epoch's end for each other (an epoch that does not
follow on, after a resume or an abandoned one, starts a new stream). Its steps are cut into
items of a few consecutive steps (``steps_per_item``: a DataLoader's per-item work, in the
worker and in the main process, is then paid once for several small batches) which the workers
take as they are ready (claims.py: a worker slowed by a shared core or a slow fetch makes fewer,
none waits for another's turn), never too far past the batch the main process yields;
``StreamLoader`` unpacks them and yields each epoch's batches in step order.

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
``keys``, those of its images in batch order. A worker sends an item (one or a few steps'
batches) through its ring of shared slots (ring.py): their tensors written into a slot the main
process has mapped since the slot's first use, so only a slot number and the small values cross
the DataLoader's queue.

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
from sio.train.mixing import StepItems
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
    """The current epoch and its first step, shared by the processes that iterate it."""

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
    stream and what the transform adds. In DataLoader workers an iteration makes the items of
    the stream a ``StreamLoader`` started (lists of a few consecutive steps' batches, taken
    and sent as the workers are ready): iterate it with ``StreamLoader``, which gives one
    batch per step, in order, an epoch per iteration."""

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

    def ready(self, steps: range) -> bool:
        """Whether the global batches of ``steps`` need no shard decoded: each shard they
        touch is in this process's readers or published in the node's decoded cache (a
        worker makes an epoch the main process is not in yet only then, claims.py)."""
        readers = self.readers()
        for name, stream in self.streams.items():
            total = sum(stream.shares)
            if not readers[name].ready(steps.start * total, len(steps) * total):
                return False
        return True

    def steps_per_item(self, num_steps: int, num_workers: int) -> int:
        """Consecutive steps a DataLoader worker sends as one item: batches up to ``ITEM_BYTES``
        of images together (the DataLoader's per-item work, ~0.5 ms of a worker's and ~0.2 ms
        of the main process's, is then paid once for them), while ``num_steps`` (an epoch) has
        an item for each worker; 1 for batches of large images. A batch transform may leave float
        images (PixMix): with one, a pixel counts 4 bytes."""
        spec = self.spec
        height, width = spec.image_size
        samples = spec.n_real + spec.n_syn + sum(count for _, _, count in spec.extras)
        pixel = 1 if spec.transform is None else 4
        batch_bytes = max(1, samples) * spec.channels * height * width * pixel
        by_size = min(MAX_STEPS_PER_ITEM, ITEM_BYTES // batch_bytes)
        return max(1, min(by_size, num_steps // max(1, num_workers)))

    def __iter__(self):
        """In this process one epoch, every step; in a DataLoader worker the items it takes of
        the stream StreamLoader started. The claims' generation is fixed here (the DataLoader
        calls this once per worker and iteration: when the worker starts, and on each
        iteration's resume), so an iterator left from an abandoned stream, whenever it runs,
        takes nothing of the next."""
        info = get_worker_info()
        if info is not None:
            return self._worker_items(info, self._worker_generation())  # counted at once
        start, num_steps = self.epoch_steps()
        return (self.batch(start + step) for step in range(num_steps))

    def _worker_generation(self) -> int | None:
        """The claims' generation of this iteration, counted in the worker: the one
        StreamLoader started before the worker was made, then one more per iteration
        (StreamLoader starts one generation per stream, and each stream is one iteration of
        its DataLoader). None without claims."""
        if self.claims is None:
            return None
        pid = os.getpid()
        if self._counted is None or self._counted[0] != pid:
            self._counted = (pid, self.generation)
        else:
            self._counted = (pid, self._counted[1] + 1)
        return self._counted[1]

    def _worker_items(self, info, generation: int | None):
        if generation is None:
            raise RuntimeError(
                "MixedBatches in DataLoader workers: iterate it with StreamLoader, which "
                "shares out the stream's items and puts them back in step order"
            )
        span = self.claims.span(generation)
        if span is None:  # a later stream started before this iterator first ran
            return
        epoch = self.spec.steps_per_epoch
        group = self.steps_per_item(epoch, info.num_workers)
        items = StepItems(*span, info.num_workers, group, epoch)
        ahead = AHEAD_ITEMS * max(1, info.num_workers) * group
        ready = self.ready if self.folder is not None else None  # decoded cache: see claims.py
        while (index := self.claims.take(generation, items, ahead, ready)) is not None:
            batches, steps = [], items.at(index)
            try:
                for step in steps:
                    batches.append(self.batch(step))
            except (ShardError, TransportError) as error:  # any other: the DataLoader's own way
                kind = "transport" if isinstance(error, TransportError) else "shard"
                trace = traceback.format_exc()
                failed = {"error": str(error), "kind": kind, "traceback": trace}
                yield [*batches, {**failed, "step": steps.start + len(batches)}]
                return
            yield self.ring().pack(batches)
            del batches

    def epoch_steps(self) -> tuple[int, int]:
        """(global step of the epoch's first batch, number of steps left in the epoch)."""
        epoch, first = self.epoch.get(), self.epoch.first_step
        return epoch * self.spec.steps_per_epoch + first, self.spec.steps_per_epoch - first


class StreamLoader:
    """The batches of ``batches``, one epoch per iteration (the one its ``SharedEpoch`` says,
    from its first step), one per step, in order: in this process (``num_workers`` 0) or
    through a DataLoader of ``num_workers`` persistent workers.

    The workers make one stream of steps from where an epoch starts, on into the next epochs
    (up to ``end_step``, the run's last step + 1, when given), each taking the next item when
    it is ready (claims.py), never one starting far past the batch being yielded; the batches
    are put back in step order here and an error a worker sent is raised when its step comes
    (``in_step_order``). An epoch that starts elsewhere (a resume, the one after an epoch left
    part-way) starts a new stream; an epoch left part-way ends its stream at once, and so does
    ``close`` (the workers then take no more of it)."""

    def __init__(
        self,
        batches: MixedBatches,
        num_workers: int = 0,
        pin_memory: bool = False,
        end_step: int | None = None,
    ):
        self.batches = batches
        self.loader = batches
        self.end_step = end_step
        self._stream = None  # the running stream's batches in step order, from step _next
        self._next = None
        self._iterations = 0  # only the latest iteration takes batches from the stream
        self._stop = None  # ends the running stream's claims when this loader is gone
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
        start, num_steps = self.batches.epoch_steps()
        if self.end_step is not None and start + num_steps > self.end_step:
            raise ValueError(
                f"the epoch's steps {start}..{start + num_steps - 1} run past this loader's "
                f"end_step {self.end_step}"
            )
        if self.loader is self.batches:
            return iter(self.batches)
        if self._stream is None or self._next != start:
            self._restart(start, start + num_steps)
        else:
            self.batches.claims.announce(self.batches.generation, start + num_steps)
        self._iterations += 1
        return self._epoch(self._iterations, num_steps)

    def close(self) -> None:
        """End the running stream: its workers take no more of its items (the next iteration
        starts a new stream)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
            self.batches.claims.stop(self.batches.generation)  # started or not

    def _restart(self, start: int, epoch_end: int) -> None:
        self.close()
        claims = self.batches.claims
        generation = self.batches.generation = claims.start(start, self.end_step, epoch_end)
        self._stream = in_step_order(iter(self.loader), claims, generation, start, self.end_step)
        self._next = start
        if self._stop is not None:
            self._stop.detach()
        # the workers take no more once this loader is gone (before they are shut down)
        self._stop = weakref.finalize(self, claims.stop, generation)

    def _epoch(self, iteration: int, num_steps: int):
        """``num_steps`` batches of the running stream, while no later iteration took over;
        left part-way (closed, failed, dropped), the stream ends."""
        done = False
        try:
            for _ in range(num_steps):
                if iteration != self._iterations or self._stream is None:  # taken over, closed
                    return
                batch = next(self._stream)
                self._next += 1
                yield batch
            done = True
        finally:
            if not done and iteration == self._iterations:
                self.close()


def raise_worker_error(batch: dict) -> None:
    """Raise the error a DataLoader worker sent as a batch: its message alone (the worker's
    traceback rides on the exception as ``worker_traceback``, for the log and ``--debug``)."""
    error_class = TransportError if batch.get("kind") == "transport" else ShardError
    error = error_class(batch["error"])
    error.worker_traceback = batch.get("traceback", "")
    raise error


def in_step_order(items, claims: ItemClaims, generation: int, start: int, end: int | None):
    """The batches of the workers' ``items`` (each a list of consecutive steps' batches, in
    the order they were made) one per step from ``start`` to ``end`` (None: as long as they
    come), in order; the error a worker met is raised at its step. ``claims`` learns how far
    the stream has been yielded, and that it ended (finished, failed or closed: no worker
    takes another item of it)."""
    waiting, step = {}, start
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
                claims.advance(generation, step)
                yield batch
        if end is None or step != end or waiting:  # items went missing: never silently short
            of = "" if end is None else f" of {start}..{end - 1}"
            raise RuntimeError(f"the workers' items ended at step {step}{of}")
    finally:
        claims.stop(generation)
