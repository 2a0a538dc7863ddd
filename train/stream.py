"""Streaming real and synthetic shard sets into batches of exact composition, elastically.

Which samples step t holds is decided by ``passes.py``: each source is consumed as consecutive
seeded permutations of the whole set, the global batch at step t takes the next ``n`` positions
of each source, and rank r its ``rank_share`` slice. Everything random about a global batch is a
function of (seed, t) alone: the samples, the order of the batch (one permutation of the global
batch, each rank keeping its own samples in that order) and the augmentation draws (made for the
whole global part of a source, each rank applying its slice). So 1 or W ranks, 0 or w
DataLoader workers give the same global batches; steps are dealt to workers in turn.

A reader (one per process or worker) loads the shards its positions fall in, whole, as decoded
rows into a small LRU (a pass group is a few shards, see passes.py). A shard with a sha256 is
read, checked and decoded once per node: the first process to need it writes its rows to the
node's decoded cache under ``cache_dir`` and every worker and rank maps them from there
(rowcache.py); its bytes come from the path, or for ``s3://``/``http(s)://`` through the
node-local shard cache (cache.py), transport errors retried up to ``read_timeout``. Decoding and
its checks (sha256 before parsing, sample count, images of the manifest's channels and size,
labels in [0, K)) are the contract's ``decode_shard``.

A corrupt sample, record or shard raises a ShardError naming the URL and member, or with
``on_error="skip"`` is replaced by the next readable sample of the same pass and counted: each
batch carries ``faults`` (kind, key) pairs, which the loop dedupes into the epoch's counts. A
transport outage is never skipped. In a DataLoader worker an error travels as a batch
``{"error": message, "traceback": ...}``, so the user sees the message without the worker's
traceback. Each batch also carries ``ids``: the key of every real and synthetic sample (a
record's images: their keys in its meta.json), for the trace, and ``keys``, those of its images
in batch order. A worker sends a batch ``Packed``: its tensors in one shared-memory buffer, so
it crosses to the main process as one segment and one file descriptor, not one per tensor.

A training method may add sources (OE's outliers, PixMix's pictures: ``extras``, consumed the
same way, outside the real/synthetic composition) and a batch ``transform`` (CutMix, PixMix,
RandAugment) drawing from its own generator (per step and rank: it acts on the rank's batch).
"""

from __future__ import annotations

import math
import multiprocessing
import traceback
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from sio.core.seeding import torch_generator
from sio.core.storage import TransportError, parent_location
from sio.shardset import Check, Rows, ShardError, ShardRef, read_manifest
from sio.train.accelerate import deferred_crop_flip
from sio.train.augment import apply_augment, augment_draws, join_draws, slice_draws
from sio.train.cache import Fetcher, cache_folder
from sio.train.mixing import worker_steps
from sio.train.passes import Layout, PassOrders, slice_start
from sio.train.rowcache import ShardLoader

SKIP_KINDS = ("samples", "records", "shards")


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


class Faults:
    """A reader's policy for corrupt data: raise (``skip=False``) or skip and note its key."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.noted: list[tuple[str, str]] = []

    def handle(self, error: ShardError, kind: str, key: str) -> None:
        if not self.skip:
            raise error
        self.noted.append((kind, key))

    def take(self) -> list[tuple[str, str]]:
        noted, self.noted = self.noted, []
        return noted


def skip_counts(keys: set) -> dict[str, int]:
    return {kind: sum(1 for k, _ in keys if k == kind) for kind in SKIP_KINDS}


# --- a source as a reader sees it ---------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One shard set as the readers read it: its shards (URL, count, sha256), its encoding,
    the samples each rank takes per batch and the shuffle window."""

    name: str
    shards: tuple[ShardRef, ...]
    encoding: str
    shares: tuple[int, ...]
    window: int

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(shard.url for shard in self.shards)

    @property
    def layout(self) -> Layout:
        return Layout(self.name, tuple(shard.count for shard in self.shards), self.window)


def _manifest_of(urls: tuple[str, ...]):
    manifest = read_manifest(parent_location(urls[0]))
    by_name = {s.name: s for s in manifest.shards}
    return manifest, by_name


class Reader:
    """Samples of one source by pass position, shards loaded whole (as decoded rows, from the
    node's decoded cache where it can) into a small LRU."""

    def __init__(self, source: Source, seed: int, check: Check, loader: ShardLoader, faults):
        self.source, self.check, self.loader, self.faults = source, check, loader, faults
        self.layout = source.layout
        self.orders = PassOrders(self.layout, seed)
        shards, groups = len(source.shards), self.layout.windows
        self.keep = 2 * (-(-shards // groups)) + 2  # two pass groups and a spare
        self._shards: OrderedDict[int, Rows | ShardError] = OrderedDict()
        self._ends = np.cumsum(self.layout.counts)
        self._starts = self._ends - np.asarray(self.layout.counts)

    def _shard(self, index: int, wait: bool = True) -> Rows | None:
        """Shard ``index``'s rows (or its ShardError); None (``wait=False``) while another
        process of the node is decoding it."""
        if index in self._shards:
            self._shards.move_to_end(index)
        else:
            ref = self.source.shards[index]
            try:
                loaded = self.loader.load(ref, self.source.encoding, self.check, wait)
            except ShardError as error:
                loaded = error
            if loaded is None:
                return None
            self._shards[index] = loaded
            while len(self._shards) > self.keep:
                self._shards.popitem(last=False)
        loaded = self._shards[index]
        if isinstance(loaded, ShardError):
            raise loaded
        return loaded

    def _one(self, number: int, sample_id: int):
        """(image, label, key) of one sample, or a ShardError and its (kind, key)."""
        shard = int(np.searchsorted(self._ends, sample_id, side="right"))
        index = sample_id - int(self._starts[shard])
        name = self.source.name
        try:
            rows = self._shard(shard)
        except ShardError as error:
            return error, ("shards", f"{name}:{number}:{self.source.shards[shard].url}")
        try:
            image, label = rows.sample(index)
        except ShardError as error:
            key = rows.keys[index]
            if rows.broken[index][1] == "records":
                return error, ("records", f"{name}:{number}:{rows.url}:{key.split('/')[0]}")
            return error, ("samples", f"{name}:{number}:{rows.url}:{key}")
        return image, label, rows.keys[index]

    def take(self, start: int, count: int):
        """(uint8 images, int64 labels, keys) of positions ``start .. start + count - 1``; a
        broken sample is replaced by the next readable one of its pass (when skipping)."""
        passes, ids = self.orders.positions(start, count)
        shards = np.searchsorted(self._ends, ids, side="right")
        index = ids - self._starts[shards]
        images = np.empty((count, *self.check.shape), np.uint8)
        labels, keys = np.empty(count, np.int64), np.empty(count, dtype=object)
        # the rows of each shard at once: one stable sort, cut where the shard changes
        by_shard = np.argsort(shards, kind="stable")
        cuts = np.flatnonzero(np.diff(shards[by_shard])) + 1
        parts = np.split(by_shard, cuts) if count else []
        self._load_free([int(shards[rows[0]]) for rows in parts])
        for rows in parts:
            try:
                loaded = self._shard(int(shards[rows[0]]))
            except ShardError:
                loaded = None
            if loaded is not None and not loaded.broken:
                where = index[rows]
                images[rows], labels[rows] = loaded.images[where], loaded.labels[where]
                keys[rows] = loaded.keys[where]
                continue
            for row in rows.tolist():  # a broken shard, or one with broken samples
                images[row], labels[row], keys[row] = self._readable(
                    int(passes[row]), int(ids[row]), (start + row) % self.layout.size
                )
        return torch.from_numpy(images), torch.from_numpy(labels), keys.tolist()

    def _load_free(self, needed: list[int]) -> None:
        """Load the needed shards no other process is decoding now, so the node's workers
        decode different shards at once (the others are waited for when taken)."""
        for index in needed:
            if index not in self._shards:
                with suppress(ShardError):
                    self._shard(index, wait=False)

    def _readable(self, number: int, sample_id: int, offset: int):
        """The sample at ``offset`` of pass ``number``, or (skipping) the next readable one."""
        got = self._one(number, sample_id)
        size, tries = self.layout.size, 0
        while isinstance(got[0], ShardError):
            self.faults.handle(got[0], *got[1])
            tries += 1
            if tries >= size:
                raise ShardError(
                    f"a whole pass over {self.source.name} ({len(self.source.shards)} shards, "
                    f"e.g. {self.source.shards[0].url}) gave no readable sample"
                ) from got[0]
            replacement = int(self.orders.get(number)[(offset + tries) % size])
            got = self._one(number, replacement)
        return got


# --- the spec and the batches -------------------------------------------------------------------


@dataclass(frozen=True)
class MixSpec:
    real_urls: tuple[str, ...]
    synthetic_urls: tuple[str, ...]
    n_real: int  # this rank's real samples per batch
    n_syn: int
    channels: int
    image_size: tuple[int, int]
    steps_per_epoch: int
    seed: int
    rank: int = 0
    shuffle_window: int = 10_000  # samples per pass group (see passes.py)
    crop_padding: int = 0
    hflip: bool = False
    resized_crop: int = 0
    # (name, urls, this rank's samples per batch) of each extra source; labels are dropped
    extras: tuple[tuple[str, tuple[str, ...], int], ...] = ()
    # the method's batch transform: transform(batch, generator) -> batch
    transform: Callable | None = None
    # source name -> "png" | "records"; shard URL -> images; shard URL -> sha256 (absent: read
    # from the set's manifest next to the shards)
    encodings: tuple[tuple[str, str], ...] = ()
    expected: tuple[tuple[str, int], ...] = ()
    on_error: str = "raise"  # or "skip"
    # source name -> samples per batch of every rank (absent: this rank's count, one rank)
    shares: tuple[tuple[str, tuple[int, ...]], ...] = ()
    hashes: tuple[tuple[str, str], ...] = ()
    num_classes: int | None = None
    cache_dir: str | None = None
    cache_limit: int | None = None
    read_timeout: float = 600.0
    decoded_cache: bool = True  # decoded shards shared by the node's processes (rowcache.py)
    # un-augmented real/synthetic images plus their crop/flip draws (accelerate.py)
    device_augment: bool = False

    def counts(self) -> dict[str, int]:
        """This rank's samples per batch of each source."""
        return {
            "real": self.n_real,
            "synthetic": self.n_syn,
            **{name: n for name, _, n in self.extras},
        }

    def source_urls(self) -> dict[str, tuple[str, ...]]:
        return {
            "real": tuple(self.real_urls),
            "synthetic": tuple(self.synthetic_urls),
            **{name: tuple(urls) for name, urls, _ in self.extras},
        }

    def share_of(self, name: str) -> tuple[int, ...]:
        shares = dict(self.shares)
        if name in shares:
            return tuple(shares[name])
        if self.rank:
            raise ValueError(f"rank {self.rank} needs every rank's share of {name!r} (shares)")
        return (self.counts()[name],)


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


def resolve_sources(spec: MixSpec, shares: dict | None = None) -> dict[str, Source]:
    """Every source a batch draws from (a positive global count), with its shard counts and
    hashes from ``spec`` or else from the manifest next to its shards."""
    expected, hashes, encodings = dict(spec.expected), dict(spec.hashes), dict(spec.encodings)
    sources = {}
    for name, urls in spec.source_urls().items():
        share = tuple(shares[name]) if shares and name in shares else spec.share_of(name)
        if not sum(share):
            continue
        if not urls:
            raise ValueError(f"{name!r} has samples in every batch but no shard set")
        encoding = encodings.get(name)
        if all(url in expected for url in urls) and encoding is not None:
            shards = tuple(ShardRef(url, expected[url], hashes.get(url, "")) for url in urls)
        else:
            manifest, by_name = _manifest_of(urls)
            infos = [by_name[url.rsplit("/", 1)[-1]] for url in urls]
            shards = tuple(
                ShardRef(url, i.num_samples, hashes.get(url, i.sha256 or ""))
                for url, i in zip(urls, infos, strict=True)
            )
            encoding = encoding or manifest.encoding
        sources[name] = Source(name, shards, encoding, share, spec.shuffle_window)
    return sources


def compose_order(spec: MixSpec, real: Source | None, syn: Source | None, step: int):
    """This rank's batch order: its real then synthetic samples, put in the order they take in
    the global batch's one permutation (seeded by (seed, step) alone)."""
    total_real = sum(real.shares) if real else 0
    total_syn = sum(syn.shares) if syn else 0
    permutation = torch.randperm(
        total_real + total_syn, generator=torch_generator(spec.seed, "compose", step)
    )
    mine = []
    if real:
        first = sum(real.shares[: spec.rank])
        mine.append(torch.arange(first, first + real.shares[spec.rank]))
    if syn:
        first = total_real + sum(syn.shares[: spec.rank])
        mine.append(torch.arange(first, first + syn.shares[spec.rank]))
    if sum(map(len, mine)) == len(permutation):  # this rank holds the whole global batch
        return permutation
    place = torch.argsort(permutation)  # each sample's place in the global batch
    mine = torch.cat(mine) if mine else torch.zeros(0, dtype=torch.int64)
    return torch.argsort(place.index_select(0, mine))


def part_draws(spec: MixSpec, source: Source, step: int) -> dict:
    """The augmentation draws of this rank's part of a source: made for the source's whole
    global part (seeded by (seed, source, step)) and sliced."""
    generator = torch_generator(spec.seed, "augment", source.name, step)
    draws = augment_draws(
        sum(source.shares),
        spec.image_size,
        generator,
        padding=spec.crop_padding,
        hflip=spec.hflip,
        resized_crop=spec.resized_crop,
    )
    first = sum(source.shares[: spec.rank])
    return slice_draws(draws, first, first + source.shares[spec.rank])


def augment_part(spec: MixSpec, source: Source, images: torch.Tensor, step: int):
    """The recipe's augmentation of this rank's part of a source (``part_draws``)."""
    mine = part_draws(spec, source, step)
    return apply_augment(images, mine, padding=spec.crop_padding, resized_crop=spec.resized_crop)


def _empty(spec: MixSpec, device=None):
    shape = (0, spec.channels, *spec.image_size)
    return (
        torch.zeros(shape, dtype=torch.uint8, device=device),
        torch.zeros(0, dtype=torch.int64, device=device),
        [],
    )


def assemble(spec: MixSpec, sources: dict[str, Source], parts: dict, step: int) -> dict:
    """One batch from this rank's part of each source (``parts``: name -> (images, labels,
    keys)): composed in the global batch's order, augmented (each image with its own draws, so
    the same as augmenting the parts first), then the method's transform."""
    device = next((p[0].device for p in parts.values()), None)
    pieces = {name: parts.get(name) or _empty(spec, device) for name in ("real", "synthetic")}
    (real_images, real_labels, real_keys) = pieces["real"]
    (syn_images, syn_labels, syn_keys) = pieces["synthetic"]
    order = compose_order(spec, sources.get("real"), sources.get("synthetic"), step)
    draws = join_draws(
        [
            (part_draws(spec, sources[name], step) if name in sources else {}, len(piece[1]))
            for name, piece in pieces.items()
        ],
        order,
    )
    # index_select, not images[order]: torch's advanced indexing of a uint8 batch took
    # ~1 ms of a ~2 ms batch on one CPU thread, index_select ~0.05 ms (the same copy)
    images = torch.cat([real_images, syn_images]).index_select(0, order.to(device))
    labels = torch.cat([real_labels, syn_labels.to(real_labels.device)])
    is_synthetic = torch.arange(len(labels)) >= len(real_labels)
    merged = real_keys + syn_keys
    batch = {
        "labels": labels.index_select(0, order.to(labels.device)),
        "is_synthetic": is_synthetic.index_select(0, order),
        "step": step,
        "ids": {"real": real_keys, "synthetic": syn_keys},  # in position order (the trace)
        "keys": [merged[i] for i in order.tolist()] if len(merged) == len(order) else [],
    }
    if spec.device_augment:  # the draws travel with the images, the device crops
        batch["images"] = images
        batch.update(deferred_crop_flip(draws, len(images), spec.crop_padding))
    else:
        batch["images"] = apply_augment(
            images, draws, padding=spec.crop_padding, resized_crop=spec.resized_crop
        )
    for name, source in sources.items():
        if name not in ("real", "synthetic"):
            batch[name] = augment_part(spec, source, parts[name][0], step)
    if spec.transform is not None:
        generator = torch_generator(spec.seed, "method", step, spec.rank)
        batch = spec.transform(batch, generator)
    return batch


class MixedBatches(IterableDataset):
    """One epoch of batches per iteration (from the epoch's ``first_step``): dicts with
    ``images`` (uint8, or float in [0, 1] after a PixMix transform), ``labels``,
    ``is_synthetic``, the global ``step``, ``ids``, ``faults``, ``fetched`` (bytes),
    ``shard_reads``, ``shard_decodes`` and ``shard_cached`` (rowcache.Counts), one entry per extra
    source and what the transform adds. Use with ``DataLoader(batch_size=None)``."""

    def __init__(self, spec: MixSpec, epoch: SharedEpoch):
        super().__init__()
        check_spec(spec)
        self.spec = spec
        self.epoch = epoch
        self.sources = resolve_sources(spec)
        self.folder = cache_folder(spec.cache_dir) if spec.decoded_cache else None
        self._readers = None

    def readers(self) -> dict[str, Reader]:
        if self._readers is None:
            spec = self.spec
            fetcher = Fetcher(spec.cache_dir, spec.cache_limit, spec.read_timeout)
            self.loader = ShardLoader(fetcher, self.folder, spec.cache_limit)
            self.faults = Faults(spec.on_error == "skip")
            self._readers = {}
            for name, source in self.sources.items():
                classes = spec.num_classes if name in ("real", "synthetic") else None
                check = Check(spec.channels, tuple(spec.image_size), classes)
                self._readers[name] = Reader(source, spec.seed, check, self.loader, self.faults)
        return self._readers

    def batch(self, step: int) -> dict:
        """The batch of global step ``step`` on this rank."""
        spec, readers = self.spec, self.readers()
        parts = {}
        for name, source in self.sources.items():
            start = slice_start(step, source.shares, spec.rank)
            parts[name] = readers[name].take(start, source.shares[spec.rank])
        batch = assemble(spec, self.sources, parts, step)
        fetched, self.loader.fetcher.fetched = self.loader.fetcher.fetched, 0
        counts = self.loader.counts.take()
        return {**batch, "faults": self.faults.take(), "fetched": fetched, **counts}

    def __iter__(self):
        spec = self.spec
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        epoch, first = self.epoch.get(), self.epoch.first_step
        steps = worker_steps(spec.steps_per_epoch - first, worker, num_workers)
        for step in steps:
            global_step = epoch * spec.steps_per_epoch + first + step
            if info is None:
                yield self.batch(global_step)
                continue
            try:
                batch = self.batch(global_step)
            except (ShardError, TransportError) as error:
                kind = "transport" if isinstance(error, TransportError) else "shard"
                yield {"error": str(error), "kind": kind, "traceback": traceback.format_exc()}
                return
            yield Packed(batch)


class Packed:
    """A worker's batch on its way to the main process, its tensors in one shared-memory buffer.

    Sent as it is, each tensor of a batch (images, labels, is_synthetic, ...) is moved into a
    shared-memory segment of its own and its file descriptor handed to the main process
    through the worker's descriptor-passing thread: a segment, a connection and a thread switch
    per tensor and batch. Packed, the batch's top-level contiguous CPU tensors are copied into
    one shared buffer (the one copy sharing made anyway), so a batch costs one of each;
    unpickled, it is the same dict again (keys in order, each tensor a view of the buffer of
    its dtype and shape, bitwise equal). Everything else is pickled as before."""

    def __init__(self, batch: dict):
        self.batch = batch

    def __reduce__(self):
        layout, total = [], 0
        for key, value in self.batch.items():
            if (
                isinstance(value, torch.Tensor)
                and value.device.type == "cpu"
                and value.is_contiguous()
                and not value.requires_grad
            ):
                start = -(-total // _ALIGN) * _ALIGN
                layout.append((key, start, value.dtype, tuple(value.shape)))
                total = start + value.nbytes
        storage = torch.UntypedStorage._new_shared(max(total, 1))
        buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
        for key, start, dtype, shape in layout:
            value = self.batch[key]
            buffer[start : start + value.nbytes].view(dtype).view(shape).copy_(value)
        packed = {key for key, *_ in layout}
        rest = [(key, value) for key, value in self.batch.items() if key not in packed]
        return _unpacked, (buffer, layout, rest, list(self.batch))


_ALIGN = 64  # bytes: every packed tensor starts at a multiple (any dtype's alignment)


def _unpacked(buffer: torch.Tensor, layout: list, rest: list, order: list) -> dict:
    """The batch a ``Packed`` was made of."""
    items = dict(rest)
    for key, start, dtype, shape in layout:
        size = math.prod(shape) * dtype.itemsize
        items[key] = buffer[start : start + size].view(dtype).view(shape)
    return {key: items[key] for key in order}


def raise_worker_error(batch: dict) -> None:
    """Raise the error a DataLoader worker sent as a batch: its message alone (the worker's
    traceback rides on the exception as ``worker_traceback``, for the log and ``--debug``)."""
    error_class = TransportError if batch.get("kind") == "transport" else ShardError
    error = error_class(batch["error"])
    error.worker_traceback = batch.get("traceback", "")
    raise error


def checked(batches):
    """``batches`` (a DataLoader over MixedBatches), raising the error a worker sent."""
    for batch in batches:
        if "error" in batch:
            raise_worker_error(batch)
        yield batch
