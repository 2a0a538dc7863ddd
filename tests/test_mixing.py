"""sio.train.mixing: exact batch composition, rank and worker splits, and in-batch shuffling."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from sio.train.mixing import StepItems, batch_counts, rank_share, steps_per_epoch

ALPHAS = ["0", "0.05", "0.1", "0.25", "0.29", "0.3", "1/3", "0.5", "0.57", "0.7", "0.8"]
ALPHAS += ["0.9", "0.95", "0.99", "2/3", "1"]


@pytest.mark.parametrize(
    ("batch", "alpha", "want"),
    [
        (128, 0.8, (102, 26)),
        (128, 0.7, (89, 39)),
        (100, 0.29, (29, 71)),
        (100, 0.57, (57, 43)),
        (10, 0.3, (3, 7)),
        (128, 1.0, (128, 0)),
        (128, 0.0, (0, 128)),
        (1, 0.5, (0, 1)),
        (1, 1, (1, 0)),
        (3, 1 / 3, (1, 2)),
    ],
)
def test_batch_counts_examples(batch, alpha, want):
    assert batch_counts(batch, alpha) == want


@pytest.mark.parametrize("batch", [1, 7, 128, 1000])
def test_batch_counts_extremes(batch):
    assert batch_counts(batch, 1.0) == (batch, 0)
    assert batch_counts(batch, 0.0) == (0, batch)


@pytest.mark.parametrize(
    ("batch", "alpha"),
    [(128, 1.01), (128, -0.01), (128, float("nan")), (0, 0.5), (-4, 0.5)],
)
def test_batch_counts_invalid(batch, alpha):
    with pytest.raises(ValueError):
        batch_counts(batch, alpha)


def test_batch_counts_all_sizes_and_alphas():
    for text in ALPHAS:
        exact = Fraction(text)
        alpha = float(exact)
        for batch in range(1, 301):
            n_real, n_syn = batch_counts(batch, alpha)
            assert n_real + n_syn == batch
            assert 0 <= n_real <= batch
            # floor of the exact (decimal) product: float artefacts never drop a sample
            assert n_real == math.floor(exact * batch), (batch, text)


def test_batch_counts_monotone_in_alpha():
    for batch in (1, 2, 17, 128, 299):
        reals = [batch_counts(batch, k / 100)[0] for k in range(101)]
        assert reals == sorted(reals)
        assert reals[0] == 0
        assert reals[-1] == batch


def test_rank_share_sums_and_balance():
    for total in list(range(0, 70)) + [127, 128, 1000, 4097]:
        for world in range(1, 17):
            shares = [rank_share(total, r, world) for r in range(world)]
            assert sum(shares) == total, (total, world)
            assert max(shares) - min(shares) <= 1, (total, world)
            assert min(shares) >= 0


def test_rank_share_keeps_global_composition():
    # the global batch keeps exactly int(B * alpha) real samples under data parallelism
    n_real, n_syn = batch_counts(128, 0.8)
    for world in (1, 2, 3, 4, 8):
        reals = [rank_share(n_real, r, world) for r in range(world)]
        syns = [rank_share(n_syn, r, world) for r in range(world)]
        assert (sum(reals), sum(syns)) == (102, 26)


@pytest.mark.parametrize(("rank", "world"), [(-1, 2), (2, 2), (0, 0)])
def test_rank_share_invalid(rank, world):
    with pytest.raises(ValueError):
        rank_share(10, rank, world)


def epoch_items(steps: int, workers: int, group: int = 1, start: int = 0) -> list[range]:
    return list(StepItems(start, start + steps, workers, group))


def test_step_items_cover_the_steps_in_order():
    """Over step counts 0..39 (primes, fewer steps than workers), 0..8 workers, items of 1..7
    steps and two starts: the items hold every step once, in order, each item consecutive
    steps and at most ``group``; the first round of workers gets one step each (the first
    batches arrive at once) and the sizes never grow by more than double; the last items are
    small (the workers finish together): none holds more than half of what is left from it."""
    for steps in range(0, 40):
        for workers in range(0, 9):
            for group in range(1, 8):
                for start in (0, 23):
                    items = epoch_items(steps, workers, group, start)
                    assert [s for i in items for s in i] == list(range(start, start + steps))
                    assert all(item.step == 1 and 1 <= len(item) <= group for item in items)
                    first = items[: max(1, workers)]
                    assert all(len(item) == 1 for item in first), (steps, workers, group)
                    sizes = [len(item) for item in items]
                    assert all(b <= 2 * a for a, b in zip(sizes, sizes[1:], strict=False))
                    left = [(start + steps - item.start) // 2 for item in items]
                    assert all(len(i) == 1 or len(i) <= n for i, n in zip(items, left, strict=True))


def test_step_items_run_on_across_epochs():
    """Long streams (several epochs of prime lengths) and streams without end: after the ramp
    every item holds ``group`` steps until the ramp down before the end (the last
    2 x workers x group steps at most); a stream without end is the long one's items while
    those are whole, and never ends."""
    for workers in range(0, 5):
        for group in (1, 3, 16):
            for steps in (197 * 3, 1009):
                endless = StepItems(5, None, workers, group)
                items = epoch_items(steps, workers, group, start=5)
                ramp = next(i for i, item in enumerate(items) if len(item) == group)
                down = [i for i, item in enumerate(items) if i > ramp and len(item) < group]
                tail = items[down[0]].start if down else 5 + steps
                assert tail >= 5 + steps - 2 * max(1, workers) * group
                assert all(len(item) == group for item in items[ramp : len(items) - len(down)])
                assert [endless.at(i) for i in range(len(items) - len(down))] == items[
                    : len(items) - len(down)
                ]
                assert StepItems(5, 5 + steps, workers, group).at(len(items)) is None
            before = endless.at(10**5 - 1)
            far = endless.at(10**5)
            assert len(far) == group and before.stop == far.start
            with pytest.raises(ValueError, match="asked for after"):
                endless.at(10**5 - 1)  # asked in order: what is behind is forgotten


def test_step_items_never_hold_two_epochs():
    """With an epoch length (primes, 1, shorter than the items), streams from any step, with
    and without an end: the items cover the steps in order and none crosses an epoch's end;
    the first is the first without epochs, cut at its epoch's end."""
    for epoch in (1, 2, 7, 13, 37):
        for start in (0, 5, 36):
            for workers, group in ((1, 4), (2, 16), (3, 5)):
                for end in (None, start + 3 * epoch + 2):
                    items = StepItems(start, end, workers, group, epoch)
                    plain = StepItems(start, end, workers, group)
                    got = [items.at(i) for i in range(200) if items.at(i) is not None]
                    steps = [s for item in got for s in item]
                    assert steps == list(range(start, steps[-1] + 1))
                    assert end is None or steps[-1] == end - 1
                    assert all(i.start // epoch == (i.stop - 1) // epoch for i in got)
                    first = plain.at(0)
                    assert got[0] == range(
                        first.start, min(first.stop, (start // epoch + 1) * epoch)
                    )


def test_step_items_examples():
    assert [list(g) for g in epoch_items(5, 0)] == [[0], [1], [2], [3], [4]]
    # up 1, 2, 4, then down to at most half of what is left
    want = [[0], [1, 2], [3, 4, 5, 6], [7, 8], [9], [10], [11]]
    assert [list(g) for g in epoch_items(12, 1, 4)] == want
    # two workers: each round of two items doubles
    want = [[0], [1], [2, 3], [4, 5], [6, 7], *[[s] for s in range(8, 15)]]
    assert [list(g) for g in epoch_items(15, 2, 4)] == want
    assert [list(StepItems(3, None, 1, 4).at(i)) for i in range(4)] == [
        [3],
        [4, 5],
        [6, 7, 8, 9],
        [10, 11, 12, 13],
    ]
    for start, end, workers, group in ((0, 5, -1, 1), (0, 5, 2, 0), (6, 5, 1, 1)):
        with pytest.raises(ValueError):
            StepItems(start, end, workers, group)
    with pytest.raises(ValueError, match="endless"):
        list(StepItems(0, None, 1))


def test_steps_per_epoch():
    assert steps_per_epoch(1000, 128) == 8
    assert steps_per_epoch(1024, 128) == 8
    assert steps_per_epoch(1, 128) == 1
    with pytest.raises(ValueError):
        steps_per_epoch(0, 128)
