"""A worker's ring of shared slots (sio.train.ring) through a real DataLoader: a batch the main
process holds is never overwritten, a dropped batch's slot is used again, and the main process
maps each slot once."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sio.train import ring
from sio.train.ring import SlotRing

BATCHES = 40


def batch_of(number: int) -> dict:
    return {
        "images": torch.full((16, 3, 4, 4), number % 251, dtype=torch.uint8),
        "labels": torch.arange(16) + number,
        "step": number,
        "keys": [f"k{number}-{i}" for i in range(16)],
    }


class Numbered(IterableDataset):
    """``BATCHES`` batches, each sent through the worker's ring with the ring's slot count."""

    def __iter__(self):
        info = get_worker_info()
        slots = SlotRing()
        for number in range(info.id, BATCHES, info.num_workers):
            packed = slots.pack([batch_of(number)])
            ((order, _, (rest,)),) = packed.parts
            rest.append(("slots", len(slots.slots)))
            packed.parts = [((*order, "slots"), *packed.parts[0][1:])]
            yield packed


def received(**options):
    """The batches a DataLoader of ``Numbered`` delivers (each item a list of one batch)."""
    for item in DataLoader(Numbered(), batch_size=None, **options):
        yield from item


def same(got: dict, number: int) -> bool:
    want = batch_of(number)
    return (
        torch.equal(got["images"], want["images"])
        and torch.equal(got["labels"], want["labels"])
        and got["step"] == number
        and got["keys"] == want["keys"]
    )


def test_held_batches_stay_intact_and_slots_grow_only_while_held():
    """Keeping every batch: each stays bitwise what was sent (a held slot is never reused), so
    the ring grows to one slot per batch."""
    kept = list(received(num_workers=2))
    assert [b["step"] for b in kept] == list(range(BATCHES))
    assert all(same(batch, number) for number, batch in enumerate(kept))
    assert max(b["slots"] for b in kept) == BATCHES // 2


def test_a_dropped_batch_frees_its_slot_for_the_next():
    """Dropping each batch before the next: a worker needs no more slots than the batches in
    flight (the DataLoader's prefetch of 2, the one held, the one being written)."""
    slots, steps = [], []
    for batch in received(num_workers=2, prefetch_factor=2):
        assert same(batch, batch["step"])
        slots.append(batch["slots"])
        steps.append(batch["step"])
    assert steps == list(range(BATCHES))
    assert max(slots) <= 4, slots


def test_the_main_process_maps_a_slot_once():
    """After a slot's first use only its number crosses the queue: the main process's map of
    the worker's slots holds as many entries as the worker has slots."""
    ring._MAPPED.clear()
    for batch in received(num_workers=1, prefetch_factor=2):
        last = batch["slots"]
    (mapped,) = ring._MAPPED.values()
    assert len(mapped) == last <= 4


class Grouped(IterableDataset):
    """``BATCHES`` batches in items of ``SIZE`` consecutive ones, one slot an item."""

    SIZE = 4

    def __iter__(self):
        info = get_worker_info()
        slots = SlotRing()
        items = range(info.id, BATCHES // self.SIZE, info.num_workers)
        for item in items:
            numbers = range(item * self.SIZE, (item + 1) * self.SIZE)
            yield slots.pack([{**batch_of(n), "slots": len(slots.slots)} for n in numbers])


def test_one_kept_batch_of_an_item_keeps_its_slot_and_stays_intact():
    """Keeping one batch of each item and dropping the others: every kept batch stays bitwise
    what was sent (its item's slot is not reused while any of its batches lives), so each
    worker's ring grows by one slot per item."""
    kept = []
    for item in DataLoader(Grouped(), batch_size=None, num_workers=2):
        assert [b["step"] for b in item] == list(range(item[0]["step"], item[0]["step"] + 4))
        kept.append(item[2])
        del item
    assert [b["step"] for b in kept] == list(range(2, BATCHES, Grouped.SIZE))
    assert all(same(batch, batch["step"]) for batch in kept)
    assert max(b["slots"] for b in kept) == BATCHES // Grouped.SIZE // 2 - 1


def test_an_item_dropped_whole_frees_its_slot():
    slots = []
    for item in DataLoader(Grouped(), batch_size=None, num_workers=2, prefetch_factor=2):
        assert all(same(batch, batch["step"]) for batch in item)
        slots.append(max(b["slots"] for b in item))
        del item
    assert max(slots) <= 4, slots  # in flight: the prefetch of 2, the one held, one reordered


def kinds_of(number: int, wide: bool) -> dict:
    """A batch of every kind a transform may leave: bool, float64, a zero-size float16 and a
    0-dim tensor, a non-contiguous one (sent as it is) and plain values; ``wide`` changes a
    shape (a new run of the item)."""
    generator = torch.Generator().manual_seed(number)
    return {
        "images": torch.rand((3, 5 if wide else 4), generator=generator, dtype=torch.float64),
        "flags": torch.rand(7, generator=generator) > 0.5,
        "empty": torch.zeros((0, 5), dtype=torch.float16),
        "count": torch.tensor(number),
        "strided": torch.arange(12).view(3, 4).t(),
        "step": number,
        "keys": [f"k{number}"],
    }


class Mixed(IterableDataset):
    """One item whose batches change signature: three alike, a wider one, one alike again."""

    WIDE = (False, False, False, True, False)

    def __iter__(self):
        yield SlotRing().pack([kinds_of(n, wide) for n, wide in enumerate(self.WIDE)])


def test_an_item_of_several_runs_and_dtypes_arrives_bitwise():
    (item,) = DataLoader(Mixed(), batch_size=None, num_workers=1)
    assert [b["step"] for b in item] == list(range(len(Mixed.WIDE)))
    for got, wide in zip(item, Mixed.WIDE, strict=True):
        want = kinds_of(got["step"], wide)
        assert list(got) == list(want)
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
                assert torch.equal(got[key], value), key
            else:
                assert got[key] == value, key
