"""Exact per-batch composition of real and synthetic samples: pure functions, no state.

SIO (Zhang et al. 2023) fixes the number of real samples in every batch instead of sampling
sources by probability: ``n_real = int(B * alpha)`` and ``n_syn = B - n_real`` (102 + 26 at
B = 128, alpha = 0.8). Under data parallelism the *global* quota is split over ranks, so the
global batch keeps exactly that composition. An epoch is ``ceil(N_real / B)`` steps (SIO's epoch,
the same as real-only training), and the steps of an epoch are cut into items of a few
consecutive steps that DataLoader workers take as they are ready (``epoch_items``); a batch is
a function of its step alone, so the batches never depend on which worker made them.
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


def epoch_items(num_steps: int, num_workers: int, group: int = 1) -> list[range]:
    """The steps of an epoch cut into items of consecutive steps, in order, for DataLoader
    workers to take one at a time: items of 1, 2, 4, ... steps, up to ``group`` (the sizes
    doubling after each round of workers, so the first batches arrive as soon as one step is
    made), and down again near the end (at most a ``2 * num_workers``-th of the steps left, so
    the workers finish together)."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    workers, items, start = max(1, num_workers), [], 0
    while start < num_steps:
        tail = (num_steps - start) // (2 * workers)
        ramp = 1 << min(len(items) // workers, group.bit_length())
        size = max(1, min(group, ramp, tail))
        items.append(range(start, min(start + size, num_steps)))
        start += size
    return items
