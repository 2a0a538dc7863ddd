"""The stream's data semantics: exactly-once passes, global batches that depend on (seed, step)
alone (1 or W ranks, 0 or w workers), and mixing of a class-sorted set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sio.shardset import shard_urls
from sio.train.mixing import batch_counts, rank_share
from sio.train.passes import Layout, PassOrders, pass_order, slice_start
from sio.train.stream import MixedBatches, MixSpec, SharedEpoch, StreamLoader

from .shardsets import grey_writer

PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 97, 101)


def layouts(seed: int):
    """Odd shard layouts: prime totals, a shard of one sample, uneven shards, odd windows."""
    rng = np.random.default_rng(seed)
    shards = int(rng.integers(1, 9))
    counts = tuple(int(c) for c in rng.integers(1, 30, shards))
    window = int(rng.choice([1, 3, 7, 13, 50, 1000]))
    return Layout("real", counts, window)


@pytest.mark.parametrize("seed", range(40))
def test_every_pass_is_a_permutation(seed):
    layout = layouts(seed)
    for number in range(3):
        order = pass_order(layout, seed, number)
        assert sorted(order.tolist()) == list(range(layout.size))
    assert not np.array_equal(pass_order(layout, seed, 0), pass_order(layout, seed + 1, 0)) or (
        layout.size < 4
    )


@pytest.mark.parametrize("seed", range(25))
def test_ranks_split_each_global_batch_and_each_pass_exactly(seed):
    """Over W ranks with rank_share slices, every position is taken by exactly one rank, and
    the samples of any N consecutive positions are each sample once."""
    rng = np.random.default_rng(100 + seed)
    size = int(rng.choice(PRIMES[3:]))
    counts = np.diff(np.sort(np.r_[0, rng.choice(np.arange(1, size), 2, replace=False), size]))
    layout = Layout("real", tuple(int(c) for c in counts), int(rng.choice([2, 5, 1000])))
    batch, alpha = int(rng.choice([3, 5, 7, 9, 13])), float(rng.choice([1.0, 0.29, 0.7, 0.51]))
    n = batch_counts(batch, alpha)[0] or 1
    steps = 3 * math.ceil(size / n)
    for world in (1, 2, 3, 5):
        shares = tuple(rank_share(n, r, world) for r in range(world))
        orders = PassOrders(layout, seed)
        taken = []
        for step in range(steps):
            for rank in range(world):
                _, ids = orders.positions(slice_start(step, shares, rank), shares[rank])
                taken += ids.tolist()
        assert len(taken) == steps * n
        reference = PassOrders(layout, seed).positions(0, steps * n)[1].tolist()
        assert taken == reference  # the global sequence does not depend on W
        for start in range(0, len(taken) - size + 1, size):  # every pass once each
            assert sorted(taken[start : start + size]) == list(range(size))


def test_alpha_one_and_n_divisible_by_b_uses_every_image_once_per_epoch():
    layout = Layout("real", (10, 10, 10, 5, 25), 16)  # 60 samples, B = 12: 5 steps per epoch
    orders = PassOrders(layout, 7)
    for epoch in range(4):
        ids = orders.positions(epoch * 60, 60)[1]
        assert sorted(ids.tolist()) == list(range(60))


def write_set(folder, counts, *, classes=3, kind="real", class_of=None):
    """A set whose image i is the constant i % 251 in pixel 0 and i // 251 in pixel 1."""
    with grey_writer(
        folder, kind, tuple(str(c) for c in range(classes)), max(counts), (4, 4)
    ) as writer:
        i = 0
        for count in counts:
            for _ in range(count):
                image = np.zeros((4, 4), np.uint8)
                image[0, 0], image[0, 1] = i % 251, i // 251
                label = class_of(i) if class_of else i % classes
                writer.write(f"{kind}-{i:05d}", image, label, {})
                i += 1
    return folder


@pytest.fixture(scope="module")
def odd_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    # 53 real images (prime) in 2 shards (fewer than 3 workers x 2 ranks), 23 synthetic in 3
    real = write_set(root / "real", [27, 26])
    synthetic = write_set(root / "synthetic", [8, 8, 7], kind="synthetic")
    return tuple(shard_urls(real)), tuple(shard_urls(synthetic))


def spec_for(sets, rank, world, batch=7, alpha=0.71, steps=9, **changes):
    n_real, n_syn = batch_counts(batch, alpha)
    shares = {
        "real": tuple(rank_share(n_real, r, world) for r in range(world)),
        "synthetic": tuple(rank_share(n_syn, r, world) for r in range(world)),
    }
    return MixSpec(
        real_urls=sets[0],
        synthetic_urls=sets[1],
        n_real=shares["real"][rank],
        n_syn=shares["synthetic"][rank],
        channels=1,
        image_size=(4, 4),
        steps_per_epoch=steps,
        seed=3,
        rank=rank,
        shuffle_window=20,
        crop_padding=1,
        hflip=True,
        shares=tuple(shares.items()),
        **changes,
    )


def epoch_batches(spec, epoch, workers):
    position = SharedEpoch(epoch)
    return list(StreamLoader(MixedBatches(spec, position), num_workers=workers))


def global_batches(sets, world, workers, epoch=0):
    """Per step: (real ids, synthetic ids, {sample id: its augmented image}) over all ranks."""
    per_rank = [epoch_batches(spec_for(sets, r, world), epoch, workers) for r in range(world)]
    steps = []
    for batches in zip(*per_rank, strict=True):
        real = [k for b in batches for k in b["ids"]["real"]]
        synthetic = [k for b in batches for k in b["ids"]["synthetic"]]
        images = {}
        for b in batches:
            assert len(b["keys"]) == len(b["images"])  # each image's key, in batch order
            images.update(zip(b["keys"], b["images"], strict=True))
        steps.append((batches[0]["step"], real, synthetic, images))
    return steps


def test_global_batches_do_not_depend_on_ranks_or_workers(odd_sets):
    reference = global_batches(odd_sets, 1, 0)
    assert [s[0] for s in reference] == list(range(9))
    assert all(len(r) == 4 and len(s) == 3 for _, r, s, _ in reference)  # int(7 * 0.71) = 4
    for world, workers in ((1, 3), (2, 0), (2, 3), (3, 2)):
        other = global_batches(odd_sets, world, workers)
        for a, b in zip(reference, other, strict=True):
            assert a[:3] == b[:3], (world, workers)
            # the same augmentation draws: each sample's image is the same
            for key, image in a[3].items():
                assert torch.equal(image, b[3][key]), (world, workers, key)


def test_epochs_continue_the_passes(odd_sets):
    first = global_batches(odd_sets, 2, 2, epoch=0)
    second = global_batches(odd_sets, 2, 2, epoch=1)
    real = [k for step in first + second for k in step[1]]
    # 18 steps x 4 real = 72 positions over 53 images: one whole pass and 19 of the next
    assert sorted(real[:53]) == [f"real-{i:05d}" for i in range(53)]
    assert len(real) == 72 and len(set(real[53:])) == 19


def test_batch_order_is_one_global_permutation(odd_sets):
    """Rank r's batch keeps its samples in the order the one-rank batch has them."""
    one = epoch_batches(spec_for(odd_sets, 0, 1), 0, 0)
    two = [epoch_batches(spec_for(odd_sets, r, 2), 0, 0) for r in (0, 1)]
    for whole, parts in zip(one, zip(*two, strict=True), strict=True):
        everything = whole["keys"]
        for part in parts:
            mine = part["keys"]
            assert mine == [k for k in everything if k in set(mine)]


def chi_square(labels: np.ndarray, classes: int) -> float:
    expected = len(labels) / classes
    counts = np.bincount(labels, minlength=classes)
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("window", [1000, 120])
def test_a_class_sorted_set_mixes(tmp_path, window):
    """10 classes of 24 images, each class in its own shards of 12 (written class by class).

    Statistic: the mean over batches of B = 20 of the chi-square of the batch's class counts
    against uniform. For a uniform random permutation it is (K - 1)(N - B)/(N - 1) = 8.28
    (hypergeometric); a batch of one class gives B(K - 1) = 180. With the whole set in one
    group (window >= N, as for mnist5k under the default) it must be within 25 % of 8.28. With
    groups of half the set (10 of the 20 one-class shards; about 6.5 classes) a batch mixes the
    classes of its group only: below 2.5 x 8.28 (measured 17.2), against 180 unmixed."""
    classes, per_class, batch = 10, 24, 20
    real = write_set(
        tmp_path / "sorted", [12] * 20, classes=classes, class_of=lambda i: i // per_class
    )
    size = classes * per_class
    layout = Layout("real", (12,) * 20, window)
    labels = np.arange(size) // per_class  # sample id -> class, as written
    stats = []
    for seed in range(30):
        order = PassOrders(layout, seed).positions(0, size)[1]
        stats += [chi_square(labels[order[s : s + batch]], classes) for s in range(0, size, batch)]
    uniform = (classes - 1) * (size - batch) / (size - 1)
    mean = float(np.mean(stats))
    if window >= size:
        assert abs(mean - uniform) < 0.25 * uniform, mean
    else:
        assert mean < 2.5 * uniform, mean
    # and the stream reads exactly these: its batches' labels follow the same order
    spec = MixSpec(
        real_urls=tuple(shard_urls(real)),
        synthetic_urls=(),
        n_real=batch,
        n_syn=0,
        channels=1,
        image_size=(4, 4),
        steps_per_epoch=size // batch,
        seed=0,
        shuffle_window=window,
    )
    batches = epoch_batches(spec, 0, 0)
    order = PassOrders(layout, 0).positions(0, size)[1]
    got = np.concatenate([np.sort(b["labels"].numpy()) for b in batches])
    want = np.concatenate([np.sort(labels[order[s : s + batch]]) for s in range(0, size, batch)])
    assert np.array_equal(got, want)
