"""Which samples a global batch holds: consecutive seeded passes over each source.

A source of N samples in shards of known sizes (the manifest's counts) is consumed as an endless
sequence of passes. Pass p is a permutation of all N sample ids (an id is the sample's index in
shard order): the shards in a seeded random order, cut into ``windows`` groups of consecutive
shards of about ``window`` samples, and the samples of each group in a seeded random order. It
is a permutation (every sample once per pass), a reader needs one or two groups in memory at a
time, and a set written class by class still mixes as long as a group spans many classes (a set
of at most ``window`` samples is one group: a plain random permutation).

Position q of the sequence is offset ``q mod N`` of pass ``q div N``. A source with ``n`` samples
per global batch gives step t the positions ``[t·n, (t+1)·n)``, and rank r the slice of them
after the parts of ranks 0..r-1 (``rank_share``). Nothing here depends on the number of ranks
or DataLoader workers: the global batch at step t is a function of (seed, t) alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sio.core.seeding import numpy_rng


@dataclass(frozen=True)
class Layout:
    """The shards of one source: sample counts in shard order and the shuffle window."""

    name: str
    counts: tuple[int, ...]
    window: int

    def __post_init__(self):
        if not self.counts or min(self.counts) < 0 or sum(self.counts) < 1:
            raise ValueError(f"source {self.name!r} has no samples")
        if self.window < 1:
            raise ValueError(f"source {self.name!r}: the shuffle window must be >= 1")

    @property
    def size(self) -> int:
        return sum(self.counts)

    @property
    def starts(self) -> np.ndarray:
        """The id of each shard's first sample."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    @property
    def windows(self) -> int:
        """Groups per pass: about ``window`` samples each, at most one per shard."""
        return max(1, min(len(self.counts), round(self.size / self.window)))

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, index within the shard) of each sample id."""
        shard = np.searchsorted(np.cumsum(self.counts), ids, side="right")
        return shard, ids - self.starts[shard]


def pass_order(layout: Layout, seed: int, number: int) -> np.ndarray:
    """Pass ``number`` of a source: a permutation of its N sample ids (int64)."""
    rng = numpy_rng(seed, "pass", layout.name, number)
    shards = rng.permutation(len(layout.counts))
    groups = layout.windows
    starts, counts = layout.starts, np.asarray(layout.counts)
    order = []
    for g in range(groups):
        members = shards[g * len(shards) // groups : (g + 1) * len(shards) // groups]
        ids = np.concatenate([starts[s] + np.arange(counts[s]) for s in members])
        order.append(ids[rng.permutation(len(ids))])
    return np.concatenate(order).astype(np.int64)


class PassOrders:
    """``pass_order`` of each pass a reader touches, keeping the last two."""

    def __init__(self, layout: Layout, seed: int):
        self.layout, self.seed = layout, seed
        self._orders: dict[int, np.ndarray] = {}

    def get(self, number: int) -> np.ndarray:
        if number not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k >= number - 1}
            self._orders[number] = pass_order(self.layout, self.seed, number)
        return self._orders[number]

    def positions(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(pass, sample id) of positions ``start .. start + count - 1``."""
        size = self.layout.size
        number, offset = divmod(start, size)
        if count and offset + count <= size:  # within one pass (the usual case): a slice
            ids = self.get(number)[offset : offset + count].copy()
            return np.full(count, number, np.int64), ids
        positions = np.arange(start, start + count, dtype=np.int64)
        passes, offsets = np.divmod(positions, size)
        ids = np.empty(count, np.int64)
        for number in np.unique(passes).tolist():
            here = passes == number
            ids[here] = self.get(number)[offsets[here]]
        return passes, ids


def slice_start(step: int, shares: tuple[int, ...], rank: int) -> int:
    """The first position rank ``rank`` takes at ``step`` from a source split as ``shares``."""
    return step * sum(shares) + sum(shares[:rank])
