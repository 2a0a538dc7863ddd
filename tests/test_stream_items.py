"""A DataLoader worker sends several consecutive steps' batches as one item (stream.py's
``steps_per_item``): the batches the main process gets are still one per step, in order, bitwise
those of one process, and an error met inside an item arrives after the item's earlier batches,
as it would in one process."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from sio.shardset import ShardError, shard_urls
from sio.train.mixing import StepItems
from sio.train.stream import ITEM_BYTES, MixedBatches, SharedEpoch, StreamLoader

from . import test_stream

spec, urls = test_stream.spec, test_stream.urls  # its fixtures: 4 + 3 shards of 8x8 images


def epochs(spec_, workers: int, count: int, first: int) -> list[list[dict]]:
    """``count`` epochs from step ``first`` of the first, through ``workers`` persistent
    DataLoader workers (0: in this process)."""
    position = SharedEpoch(0, first)
    loader = StreamLoader(MixedBatches(spec_, position), num_workers=workers)
    out = []
    for number in range(count):
        position.set(number, first if number == 0 else 0)
        out.append(list(loader))
    return out


# which process read or decoded a shard, and the bytes it fetched (their sums per epoch:
# tests/test_shard_cache.py)
PER_PROCESS = {"shard_reads", "shard_decodes", "shard_cached", "fetched"}


def same_batches(got: list[dict], want: list[dict]) -> None:
    """Bitwise the same batches: every key but the per-process counters, tensors by value,
    dtype and shape."""
    assert [b["step"] for b in got] == [b["step"] for b in want]
    for a, b in zip(got, want, strict=True):
        assert list(a) == list(b)
        for key, value in b.items():
            if key in PER_PROCESS:
                continue
            if isinstance(value, torch.Tensor):
                assert a[key].dtype == value.dtype and torch.equal(a[key], value), key
            else:
                assert a[key] == value, key


def stream_items(spec_, workers: int) -> list[range]:
    """The items of a StreamLoader's stream from step 0 (it has no end), over one epoch."""
    group = MixedBatches(spec_, SharedEpoch(0)).steps_per_item(spec_.steps_per_epoch, workers)
    steps = spec_.steps_per_epoch
    items = StepItems(0, None, workers, group, steps)
    return [items.at(i) for i in range(steps) if items.at(i).start < steps]


STEPS = 37  # prime


@pytest.mark.parametrize(
    ("workers", "first"), [(1, 0), (2, 0), (3, 0), (4, 0), (2, 5), (3, 5), (3, STEPS - 2)]
)
def test_items_of_several_steps_give_one_process_batches(spec, workers, first):
    """A prime epoch length, resumed from step ``first`` of the first epoch, two epochs on
    persistent workers: through 1-4 workers (items of several steps: the epoch is long enough
    for them) the batches are those of one process, bitwise, in order."""
    spec_ = dataclasses.replace(spec, steps_per_epoch=STEPS, seed=workers + first)
    if first == 0:
        assert max(len(item) for item in stream_items(spec_, workers)) > 1
    got = epochs(spec_, workers, 2, first)
    want = epochs(spec_, 0, 2, first)
    assert [len(e) for e in want] == [STEPS - first, STEPS]
    for a, b in zip(got, want, strict=True):
        same_batches(a, b)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_fewer_steps_than_workers(spec, steps):
    spec_ = dataclasses.replace(spec, steps_per_epoch=steps)
    same_batches(epochs(spec_, 3, 1, 0)[0], epochs(spec_, 0, 1, 0)[0])


@pytest.mark.parametrize(
    ("batch", "size", "channels", "workers", "steps"),
    [(128, 32, 3, 2, 391), (256, 224, 3, 8, 5005), (8, 8, 1, 3, 7), (1, 28, 1, 16, 3)],
)
def test_an_item_holds_few_megabytes_and_every_worker_gets_items(
    spec,
    batch,
    size,
    channels,
    workers,
    steps,
):
    spec_ = dataclasses.replace(
        spec,
        n_real=batch - batch // 4,
        n_syn=batch // 4,
        channels=channels,
        image_size=(size, size),
    )
    group = MixedBatches(spec_, SharedEpoch(0)).steps_per_item(steps, workers)
    batch_bytes = batch * channels * size * size
    assert group >= 1
    assert group == 1 or group * batch_bytes <= ITEM_BYTES
    assert group == 1 or group <= steps // workers  # the epoch has an item for each worker
    assert group > 1 or batch_bytes * 2 > ITEM_BYTES or steps // workers < 2


# seeds whose pass meets the truncated shard inside an item of that many workers (asserted)
@pytest.mark.parametrize(("workers", "seed"), [(1, 0), (2, 3), (3, 0)])
def test_an_error_inside_an_item_comes_after_its_earlier_batches(spec, tmp_path, workers, seed):
    """A truncated real shard: through workers, the main process gets exactly the batches one
    process makes before it meets the shard, then the same error (its message alone)."""
    folder = tmp_path / "real"
    shutil.copytree(spec.real_urls[0].rsplit("/", 1)[0], folder)
    second = sorted(folder.glob("shard-*.tar"))[1]
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])
    urls = tuple(shard_urls(folder))
    spec_ = dataclasses.replace(spec, real_urls=urls, steps_per_epoch=STEPS, seed=seed)
    made = []
    with pytest.raises(ShardError) as in_process:
        for batch in MixedBatches(spec_, SharedEpoch(0)):
            made.append(batch)
    failing = len(made)
    (item,) = [i for i in stream_items(spec_, workers) if failing in i]
    assert item.start < failing  # the shard is met inside an item, after its first step
    got = []
    with pytest.raises(ShardError) as through_workers:
        for batch in StreamLoader(MixedBatches(spec_, SharedEpoch(0)), num_workers=workers):
            got.append(batch)
    same_batches(got, made)
    assert str(through_workers.value) == str(in_process.value)
