"""Samples of one stream by pass position (passes.py), for one process or DataLoader worker.

A reader loads the shards its positions fall in, whole, as decoded rows into a small LRU (a pass
group is a few shards): from the node's decoded cache where it can (rowcache.py), so a shard is
read, checked and decoded once per node. A corrupt sample, record or shard raises a ShardError
naming the URL and member, or with ``on_error="skip"`` is replaced by the next readable sample
of the same pass and noted (``Faults``): each batch carries those (kind, key) pairs.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import suppress

import numpy as np
import torch

from sio.shardset import Check, Rows, ShardError
from sio.train.passes import PassOrders
from sio.train.rowcache import ShardLoader
from sio.train.spec import Stream

SKIP_KINDS = ("samples", "records", "shards")


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


class PassReader:
    """Samples of one stream by pass position, shards loaded whole (as decoded rows, from the
    node's decoded cache where it can) into a small LRU."""

    def __init__(self, stream: Stream, seed: int, check: Check, loader: ShardLoader, faults):
        self.stream, self.check, self.loader, self.faults = stream, check, loader, faults
        self.layout = stream.layout
        self.orders = PassOrders(self.layout, seed)
        shards, groups = len(stream.shards), self.layout.windows
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
            ref = self.stream.shards[index]
            try:
                loaded = self.loader.load(ref, self.stream.encoding, self.check, wait)
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
        name = self.stream.name
        try:
            rows = self._shard(shard)
        except ShardError as error:
            return error, ("shards", f"{name}:{number}:{self.stream.shards[shard].url}")
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
        # the rows of each shard at once: one stable sort, cut where the shard changes; the
        # parts are gathered in that order (one np.take per shard into a slice) and put in
        # position order at the end (one take per array)
        by_shard = np.argsort(shards, kind="stable")
        index = (ids - self._starts[shards])[by_shard]
        shards = shards[by_shard]
        ends = [*(np.flatnonzero(np.diff(shards)) + 1).tolist(), count] if count else []
        images = np.empty((count, *self.check.shape), np.uint8)
        labels, keys = np.empty(count, np.int64), np.empty(count, dtype=object)
        self._load_free([int(shards[end - 1]) for end in ends])
        first = 0
        for end in ends:
            part, first = slice(first, end), end
            try:
                loaded = self._shard(int(shards[part.start]))
            except ShardError:
                loaded = None
            if loaded is not None and not loaded.broken:
                where = index[part]
                loaded.images.take(where, axis=0, out=images[part], mode="clip")
                loaded.labels.take(where, out=labels[part], mode="clip")
                keys[part] = loaded.keys[where]
                continue
            for k in range(part.start, part.stop):  # a broken shard, or broken samples
                row = int(by_shard[k])
                images[k], labels[k], keys[k] = self._readable(
                    int(passes[row]), int(ids[row]), (start + row) % self.layout.size
                )
        order = np.empty(count, np.intp)
        order[by_shard] = np.arange(count)
        images = images.take(order, axis=0)
        return torch.from_numpy(images), torch.from_numpy(labels[order]), keys[order].tolist()

    def ready(self, start: int, count: int) -> bool:
        """Whether positions ``start .. start + count - 1`` need no shard decoded: each shard
        they fall in is held here or published in the node's decoded cache."""
        _, ids = self.orders.positions(start, count)
        needed = np.unique(np.searchsorted(self._ends, ids, side="right")).tolist()
        shards, check = self.stream.shards, self.check
        return all(i in self._shards or self.loader.published(shards[i], check) for i in needed)

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
                    f"a whole pass over {self.stream.name} ({len(self.stream.shards)} shards, "
                    f"e.g. {self.stream.shards[0].url}) gave no readable sample"
                ) from got[0]
            replacement = int(self.orders.get(number)[(offset + tries) % size])
            got = self._one(number, replacement)
        return got
