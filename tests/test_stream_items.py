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
from sio.train.stream import ITEM_BYTES, MixedBatches, SharedEpoch, StreamLoader

from . import test_stream

spec, urls = test_stream.spec, test_stream.urls  # its fixtures: 4 + 3 shards of 8x8 images


def one_process(spec_):
    return list(MixedBatches(spec_, SharedEpoch(0)))


def same_batches(got: list[dict], want: list[dict]) -> None:
    assert [b["step"] for b in got] == [b["step"] for b in want]
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
        assert a["ids"] == b["ids"] and a["keys"] == b["keys"]


@pytest.mark.parametrize("steps", [1, 2, 7, 13])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_items_of_several_steps_give_one_process_batches(spec, steps, workers):
    """Epochs of prime and tiny step counts, fewer steps than workers included: through 1-3
    workers (items of up to ``steps // workers`` steps here, the batches being small) the
    batches are those of one process, bitwise, in order."""
    spec_ = dataclasses.replace(spec, steps_per_epoch=steps, seed=steps + workers)
    got = list(StreamLoader(MixedBatches(spec_, SharedEpoch(0)), num_workers=workers))
    same_batches(got, one_process(spec_))


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
    assert group == 1 or group <= steps // workers  # no worker left without an item
    assert group > 1 or batch_bytes * 2 > ITEM_BYTES or steps // workers < 2


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_an_error_inside_an_item_comes_after_its_earlier_batches(spec, tmp_path, workers):
    """A truncated real shard: through workers, the main process gets exactly the batches one
    process makes before it meets the shard, then the same error (its message alone)."""
    folder = tmp_path / "real"
    shutil.copytree(spec.real_urls[0].rsplit("/", 1)[0], folder)
    last = sorted(folder.glob("shard-*.tar"))[2]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    spec_ = dataclasses.replace(spec, real_urls=tuple(shard_urls(folder)), steps_per_epoch=13)
    made = []
    with pytest.raises(ShardError) as in_process:
        for batch in MixedBatches(spec_, SharedEpoch(0)):
            made.append(batch)
    assert 0 < len(made) < 13  # the shard is met inside the epoch, after its first step
    got = []
    with pytest.raises(ShardError) as through_workers:
        for batch in StreamLoader(MixedBatches(spec_, SharedEpoch(0)), num_workers=workers):
            got.append(batch)
    same_batches(got, made)
    assert str(through_workers.value) == str(in_process.value)
