"""Exact per-batch composition of real and synthetic samples (pure functions), and the items
a stream of steps is cut into.

SIO (Zhang et al. 2023) fixes the number of real samples in every batch instead of sampling
sources by probability: ``n_real = int(B * alpha)`` and ``n_syn = B - n_real`` (102 + 26 at
B = 128, alpha = 0.8). Under data parallelism the *global* quota is split over ranks, so the
global batch keeps exactly that composition. An epoch is ``ceil(N_real / B)`` steps (SIO's epoch,
the same as real-only training), and a stream's steps (one epoch running on into the next) are
cut into items of a few consecutive steps that DataLoader workers take as they are ready
(``StepItems``); a batch is a function of its step alone, so the batches never depend on which
worker made them.
"""

from __future__ import annotations

import math


def batch_counts(batch_size: int, alpha: float) -> tuple[int, int]:
    """(real, synthetic) samples per batch by SIO's rule ``int(B * alpha)``.

    The product is rounded to 9 decimals first so that float artefacts (0.29 * 100 =
    28.999999999999996) do not drop a sample; otherwise this is Python's truncation, as in SIO.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    n_real = math.floor(round(batch_size * alpha, 9))
    return n_real, batch_size - n_real


def rank_share(total: int, rank: int, world_size: int) -> int:
    """Rank ``rank``'s part of a global count: floor((r+1)·n/W) − floor(r·n/W); parts sum to n."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    return (rank + 1) * total // world_size - rank * total // world_size


def steps_per_epoch(num_real: int, batch_size: int) -> int:
    """SIO's epoch: as many steps as real-only training, ``ceil(N_real / B)``."""
    if num_real < 1:
        raise ValueError("the real shard set is empty")
    return math.ceil(num_real / batch_size)


class StepItems:
    """The steps from ``start`` to ``end`` (None: no end) cut into items of consecutive steps,
    in order, for DataLoader workers to take one at a time (``at(index)``, asked in order):
    items of 1, 2, 4, ... steps, up to ``group`` (the sizes doubling after each round of
    workers, so the first batches arrive as soon as one step is made), ``group`` steps each
    from then on, and down again before ``end`` (at most a ``2 * num_workers``-th of the steps
    left, so the workers finish together). Epochs are no pause: a stream runs on from one
    epoch into the next, but an item never holds steps of two epochs (with ``epoch``, the
    steps an epoch: an item ends where an epoch does)."""

    def __init__(
        self, start: int, end: int | None, num_workers: int, group: int = 1, epoch: int = 0
    ):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if group < 1:
            raise ValueError(f"group must be >= 1, got {group}")
        if epoch < 0:
            raise ValueError(f"an epoch must be >= 1 steps (0: none), got {epoch}")
        if end is not None and end < start:
            raise ValueError(f"the steps end at {end}, before their start {start}")
        self.start, self.end, self.group, self.epoch = start, end, group, epoch
        self._workers = max(1, num_workers)
        self._items: list[range] = []  # made, from item number ``_first``
        self._first, self._made, self._at = 0, 0, start

    def at(self, index: int) -> range | None:
        """The steps of item ``index`` (from 0); None past the end. Items before the last one
        asked for are forgotten."""
        if index < self._first:
            raise ValueError(f"item {index} was asked for after item {self._first}")
        while self._made <= index:
            if self.end is not None and self._at >= self.end:
                return None
            self._items.append(self._next_item())
        del self._items[: index - self._first]
        self._first = index
        return self._items[0]

    def _next_item(self) -> range:
        at, end = self._at, self.end
        most = min(self.group, 1 << min(self._made // self._workers, self.group.bit_length()))
        if end is not None:
            most = min(most, (end - at) // (2 * self._workers))
        stop = at + max(1, most)
        if self.epoch:
            stop = min(stop, (at // self.epoch + 1) * self.epoch)
        if end is not None:
            stop = min(stop, end)
        self._at, self._made = stop, self._made + 1
        return range(at, stop)

    def __iter__(self):
        if self.end is None:
            raise ValueError("the items of steps without an end are endless")
        items = StepItems(self.start, self.end, self._workers, self.group, self.epoch)
        index = 0
        while (item := items.at(index)) is not None:
            yield item
            index += 1
