"""DataLoader workers take a stream's items as they are ready (sio.train.claims): each item is
taken once, in order, never past the main process's front by ``ahead`` steps or more, and never
by an iterator of an ended generation; through a real DataLoader a worker that is held up does
not hold the others back, the stream runs on across epochs (the next epoch's first items are
made while the main process is between epochs; never a step past ``end_step``), and the
batches are those of one process, bitwise, in step order."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import random
import select
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
from torch.utils.data import get_worker_info

from sio.shardset import ShardError
from sio.train import stream as stream_module
from sio.train.claims import WAIT, ItemClaims
from sio.train.mixing import StepItems
from sio.train.stream import MixedBatches, SharedEpoch, StreamLoader, in_step_order

from . import test_stream
from .test_stream_items import same_batches

spec, urls = test_stream.spec, test_stream.urls  # its fixtures: 4 + 3 shards of 8x8 images


def test_items_are_taken_once_in_order_within_the_front():
    """Random epochs, workers, item sizes and bounds, workers taking in a random interleaving and
    the main process advancing its front at random: every item is taken exactly once, in order;
    an item is refused (WAIT) exactly when it starts ``ahead`` or more steps past the front."""
    rng = random.Random(0)
    for _ in range(300):
        steps, workers, group = rng.randint(0, 97), rng.randint(1, 5), rng.randint(1, 9)
        ahead, start = rng.randint(1, 40), rng.choice([0, rng.randint(1, 500)])
        items = StepItems(start, start + steps, workers, group)
        claims = ItemClaims()
        generation = claims.start(start, start + steps)
        assert claims.span(generation) == (start, start + steps)
        taken, front, made = [], start, start  # made: the end of the items taken
        while True:
            index = claims.take_now(generation, items, ahead)
            if index is None:
                break
            if index == WAIT:
                assert items.at(len(taken)).start >= front + ahead
                front = rng.randint(front + 1, made)  # the main process yields more
                claims.advance(generation, front)
                continue
            assert items.at(index).start < front + ahead and index == len(taken)
            taken.append(items.at(index))
            made = items.at(index).stop
            if rng.random() < 0.3:
                front = rng.randint(front, made)
                claims.advance(generation, front)
        assert taken == list(items)


def test_an_ended_generation_takes_nothing():
    items = StepItems(0, 20, 2, 4)
    claims = ItemClaims()
    old = claims.start()
    assert claims.take_now(old, items, 100) == 0
    new = claims.start()
    assert claims.take_now(old, items, 100) is None  # an abandoned stream's iterator
    assert claims.span(old) is None and claims.span(new) == (0, None)
    assert [claims.take_now(new, items, 100) for _ in range(3)] == [0, 1, 2]
    claims.stop(old)  # an old iterator closed late leaves the new generation alone
    assert claims.take_now(new, items, 100) == 3
    claims.stop(new)  # the main process is done: nobody takes (or waits for) more
    assert claims.take_now(new, items, 0) is None


def test_past_the_main_process_epoch_only_ready_items_are_taken():
    """Items of the epoch the main process is in are taken whatever ``ready`` says; one of a
    later epoch only when its batches need no shard decoded (``ready``) or once the main
    process announced that epoch: a shard is decoded for the first epoch that needs it."""
    items = StepItems(0, None, 2, 4, epoch=10)
    claims = ItemClaims()
    generation = claims.start(0, None, epoch_end=10)
    asked = []

    def ready(item):
        asked.append(item)
        return item.start < 14  # the shards of steps 10..13 are published, not those of 14..

    taken = []
    while (index := claims.take_now(generation, items, 100, ready)) not in (WAIT, None):
        taken.append(items.at(index))
    assert [s for item in taken for s in item] == list(range(14))
    assert all(item.start >= 10 for item in asked)  # asked only past the epoch's end
    assert taken[-1] == range(10, 14) and items.at(len(taken)) == range(14, 18)
    claims.announce(generation, 20)  # the main process is in the next epoch
    assert items.at(claims.take_now(generation, items, 100, ready)) == range(14, 18)
    claims.announce(generation - 1, 30)  # an old generation announces nothing
    assert claims.take_now(generation, items, 100, lambda item: False) == len(taken) + 1
    assert claims.take_now(generation, items, 100, lambda item: False) == WAIT  # 20.. is early


def test_an_iterator_made_before_the_next_epoch_started_takes_none_of_it(spec, monkeypatch):
    """A worker's iterator of an abandoned epoch that first runs after the main process
    started the next epoch (a worker slow to start, its old tasks handled late) takes nothing:
    the generation is counted in the worker when the DataLoader makes the iterator, not read
    when it first runs; the worker's next iterator is the new generation's."""
    worker = SimpleNamespace(id=0, num_workers=2)
    monkeypatch.setattr(stream_module, "get_worker_info", lambda: worker)
    batches = MixedBatches(dataclasses.replace(spec, steps_per_epoch=9), SharedEpoch(0))
    batches.claims = claims = ItemClaims()
    batches.generation = claims.start()
    old = iter(batches)  # the DataLoader makes it when the worker starts
    claims.start()  # the main process abandoned the epoch and starts the next
    assert next(old, None) is None
    new = iter(batches)  # made on the next iteration's resume
    item = next(new)  # packed for the DataLoader's queue: its batches' other values
    assert [dict(rest)["step"] for _, _, rests in item.parts for rest in rests] == [0]


class HeldFirstStep(MixedBatches):
    """The worker that makes the epoch's first step waits before it until ``release`` is set:
    by another worker that made ``enough`` steps meanwhile, or (``bounded``) when a worker is
    refused an item for running too far ahead. Which worker made each step is recorded."""

    def __init__(self, spec_, epoch, enough: int):
        super().__init__(spec_, epoch)
        self.release = multiprocessing.Event()
        self.others_steps = multiprocessing.Value("i", 0)
        self.enough = enough

    def batch(self, step: int) -> dict:
        start, _ = self.epoch_steps()
        if step == start:
            if not self.release.wait(timeout=120):
                raise ShardError("step 0 was held: no other worker ran ahead of it")
        else:
            with self.others_steps.get_lock():
                self.others_steps.value += 1
                if self.others_steps.value >= self.enough:
                    self.release.set()
        return {**super().batch(step), "worker": get_worker_info().id}


def in_process(spec_) -> list[dict]:
    return list(StreamLoader(MixedBatches(spec_, SharedEpoch(0))))


@pytest.mark.parametrize("workers", [2, 3])
def test_a_held_worker_does_not_hold_the_others(spec, workers):
    """The first step's worker is held until the others have made 30 steps: with workers taking
    turns (each at most two items ahead: 1 + 2 + 4 steps at the epoch's start) that could not
    happen; here the others take the items it would have made. The batches are then those of
    one process, in step order."""
    spec_ = dataclasses.replace(spec, steps_per_epoch=53, seed=workers)
    batches = HeldFirstStep(spec_, SharedEpoch(0), enough=30)
    got = list(StreamLoader(batches, num_workers=workers))
    held = got[0]["worker"]
    assert sum(b["worker"] != held for b in got) >= 30
    same_batches([{k: v for k, v in b.items() if k != "worker"} for b in got], in_process(spec_))


class Bounded(ItemClaims):
    """Claims that record the furthest step taken before a worker was first refused."""

    def __init__(self, release):
        super().__init__()
        self.release = release
        self.furthest = multiprocessing.Value("i", 0)

    def take_now(self, generation, items, ahead, ready=None):
        index = super().take_now(generation, items, ahead, ready)
        if index == WAIT:
            self.release.set()
        elif index is not None and not self.release.is_set():
            with self.furthest.get_lock():
                self.furthest.value = max(self.furthest.value, items.at(index).stop)
        return index


def test_workers_run_at_most_ahead_steps_past_a_held_step(spec):
    """The first step's worker held until another is refused an item: by then the items taken
    reach fewer than ``ahead`` + one item's steps past step 0 (the shared slots in flight stay
    bounded), and the epoch then completes, in order."""
    steps, workers = 200, 2
    spec_ = dataclasses.replace(spec, steps_per_epoch=steps)
    batches = HeldFirstStep(spec_, SharedEpoch(0), enough=10**9)
    loader = StreamLoader(batches, num_workers=workers)
    batches.claims = Bounded(batches.release)  # before the workers start (at the first epoch)
    group = batches.steps_per_item(steps, workers)
    ahead = stream_module.AHEAD_ITEMS * workers * group
    assert ahead + group < steps  # the bound is met inside the epoch
    got = list(loader)
    assert ahead <= batches.claims.furthest.value < ahead + group  # refused at the bound
    assert [b["step"] for b in got] == list(range(steps))


def test_an_abandoned_epoch_leaves_the_next_whole(spec):
    """An epoch left after 3 batches on persistent workers (their items in flight dropped):
    the next epoch is whole and equal to one process's, bitwise."""
    spec_ = dataclasses.replace(spec, steps_per_epoch=29)
    position = SharedEpoch(0)
    loader = StreamLoader(MixedBatches(spec_, position), num_workers=2)
    first = iter(loader)
    assert [next(first)["step"] for _ in range(3)] == [0, 1, 2]
    del first
    position.set(1)
    got = list(loader)
    want_position = SharedEpoch(1)
    want = list(StreamLoader(MixedBatches(spec_, want_position)))
    same_batches(got, want)


def test_plain_dataloader_workers_are_refused(spec):
    """MixedBatches in a DataLoader's workers without StreamLoader (nobody to put the items
    back in order) is a one-line error, not silently reordered batches."""
    from torch.utils.data import DataLoader

    loader = DataLoader(MixedBatches(spec, SharedEpoch(0)), batch_size=None, num_workers=1)
    with pytest.raises(RuntimeError, match="iterate it with StreamLoader"):
        next(iter(loader))


def shuffled_items(steps: int, seed: int, start: int) -> list[list[dict]]:
    items = [[{"step": s} for s in item] for item in StepItems(start, start + steps, 3, 4)]
    random.Random(seed).shuffle(items)
    return items


@pytest.mark.parametrize("seed", range(10))
def test_in_step_order_puts_items_back_in_order_and_ends_the_generation(seed):
    claims = ItemClaims()
    generation = claims.start(100, 123)
    got = list(in_step_order(iter(shuffled_items(23, seed, 100)), claims, generation, 100, 123))
    assert [b["step"] for b in got] == list(range(100, 123))
    assert claims.take_now(generation, StepItems(100, 123, 3, 4), 1000) is None  # ended


def test_in_step_order_raises_a_worker_error_at_its_step():
    claims = ItemClaims()
    generation = claims.start()
    items = [[{"step": 2}, {"error": "shard x: truncated", "kind": "shard", "step": 3}]]
    items += [[{"step": 0}, {"step": 1}], [{"step": 4}]]
    got = []
    with pytest.raises(ShardError, match="shard x: truncated"):
        for batch in in_step_order(iter(items), claims, generation, 0, None):
            got.append(batch["step"])
    assert got == [0, 1, 2]
    assert claims.take_now(generation, StepItems(0, 5, 2, 1), 1000) is None


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([[{"step": 0}], [{"step": 2}]], "ended at step 1 of 0..2"),  # step 1 never came
        ([[{"step": 0}, {"step": 1}], [{"step": 1}]], "step 1 came twice"),  # yielded
        ([[{"step": 2}], [{"step": 2}]], "step 2 came twice"),  # still waiting
        ([[{"step": 0}, {"step": 1}, {"step": 2}]], "ended at step 3$"),  # a stream has no end
    ],
)
def test_in_step_order_never_silently_short_or_doubled(items, message):
    claims = ItemClaims()
    end = None if message.endswith("$") else 3
    with pytest.raises(RuntimeError, match=message):
        list(in_step_order(iter(items), claims, claims.start(), 0, end))


def test_an_abandoned_iterator_ends_its_generation_and_an_old_one_moves_nothing():
    """Closed after one batch, its generation ends (no worker takes or waits on it); an old
    generation's front never moves a newer one's."""
    claims = ItemClaims()
    generation = claims.start()
    items = [[{"step": 0}], [{"step": 1}], [{"step": 2}]]
    batches = in_step_order(iter(items), claims, generation, 0, 3)
    assert next(batches)["step"] == 0
    batches.close()
    assert claims.take_now(generation, StepItems(0, 3, 1), 1000) is None
    new = claims.start()
    claims.advance(generation, 50)  # the old iterator, resumed late
    assert claims.take_now(new, StepItems(0, 30, 1), 5) == 0  # item 0 starts at 0 < 0 + 5
    assert claims.take_now(new, StepItems(0, 30, 1), 1) == WAIT  # the front is still 0


def running(claims: ItemClaims, generation: int) -> bool:
    """Whether ``generation``'s stream runs: an item no worker can take (it starts far past
    any front) is WAIT then, None once the stream ended; nothing is taken."""
    index = claims.take_now(generation, StepItems(10**15, None, 1), 0)
    assert index in (WAIT, None)
    return index == WAIT


def test_an_epoch_dropped_unstarted_leaves_the_stream_and_a_dropped_loader_ends_it(spec):
    """``iter(loader)`` never advanced, then dropped: the stream is untouched (the epoch, asked
    again, goes on with it, whole); the loader dropped, its generation ends (no worker takes
    or waits on it while the DataLoader shuts the workers down)."""
    position = SharedEpoch(0)
    loader = StreamLoader(MixedBatches(spec, position), num_workers=2)
    batches = iter(loader)
    generation, claims = loader.batches.generation, loader.batches.claims
    del batches
    same_batches(list(loader), in_process(spec))
    assert loader.batches.generation == generation
    assert running(claims, generation)  # on into the next epoch
    del loader
    assert not running(claims, generation)


def test_an_epoch_left_part_way_ends_its_stream_and_the_next_starts_another(spec):
    position = SharedEpoch(0)
    loader = StreamLoader(MixedBatches(spec, position), num_workers=2)
    assert len(list(loader)) == spec.steps_per_epoch
    generation, claims = loader.batches.generation, loader.batches.claims
    position.set(1)
    assert next(iter(loader))["step"] == spec.steps_per_epoch  # the iterator, dropped
    assert not running(claims, generation)
    same_batches(list(loader), list(StreamLoader(MixedBatches(spec, SharedEpoch(1)))))
    assert loader.batches.generation == generation + 1


def epochs_through(spec_, workers: int, count: int, end_step: int | None) -> list[list[dict]]:
    position = SharedEpoch(0)
    loader = StreamLoader(MixedBatches(spec_, position), workers, end_step=end_step)
    out, generations = [], set()
    for number in range(count):
        position.set(number)
        out.append(list(loader))
        generations.add(loader.batches.generation)
    assert len(generations) == 1  # one stream, from the first epoch on into the last
    return out


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_the_stream_runs_on_across_epochs(spec, workers):
    """Prime and tiny epoch lengths (fewer steps than workers), with and without an end: three
    epochs are one stream, and each epoch's batches are those of one process, bitwise."""
    for steps, end in ((1, None), (2, 6), (7, None), (13, 39)):
        spec_ = dataclasses.replace(spec, steps_per_epoch=steps, seed=steps + workers)
        got = epochs_through(spec_, workers, 3, end)
        position = SharedEpoch(0)
        one = StreamLoader(MixedBatches(spec_, position))
        for number, epoch in enumerate(got):
            position.set(number)
            same_batches(epoch, list(one))


class Watched(MixedBatches):
    """Records the furthest step the workers made; ``reached`` is set once a worker makes
    ``step``."""

    def __init__(self, spec_, epoch, step: int):
        super().__init__(spec_, epoch)
        self.step = step
        self.reached = multiprocessing.Event()
        self.furthest = multiprocessing.Value("i", -1)

    def batch(self, step: int) -> dict:
        with self.furthest.get_lock():
            self.furthest.value = max(self.furthest.value, step)
        if step == self.step:
            self.reached.set()
        return super().batch(step)


def test_the_next_epochs_first_items_are_made_between_epochs(spec):
    """With the main process between epochs (it asks for nothing), the workers make the next
    epoch's first step (its shards were decoded in the first epoch: its pass groups are the
    first epoch's last); that epoch then comes whole, from the same stream."""
    steps = spec.steps_per_epoch
    position = SharedEpoch(0)
    loader = StreamLoader(Watched(spec, position, steps), num_workers=2)
    assert len(list(loader)) == steps
    assert loader.batches.ready(range(steps, steps + 1))  # so no decode waits for epoch 1
    assert loader.batches.reached.wait(timeout=120)  # while the main process waits here
    position.set(1)
    same_batches(list(loader), list(StreamLoader(MixedBatches(spec, SharedEpoch(1)))))


class Ending(ItemClaims):
    """Claims that count the workers told the stream has no item left; ``ended`` is set once
    ``workers`` were."""

    def __init__(self, workers: int):
        super().__init__()
        self.workers, self.ended = workers, multiprocessing.Event()
        self.told = multiprocessing.Value("i", 0)

    def take_now(self, generation, items, ahead, ready=None):
        index = super().take_now(generation, items, ahead, ready)
        if index is None:
            with self.told.get_lock():
                self.told.value += 1
                if self.told.value == self.workers:
                    self.ended.set()
        return index


@pytest.mark.parametrize("workers", [1, 3])
def test_no_step_is_made_past_end_step(spec, workers):
    """Two epochs of a loader whose run ends with them: every worker finds the stream ended
    (told so by the claims, not stopped by the main process) without making a step past it;
    a third epoch is refused in one line."""
    position = SharedEpoch(0)
    end = 2 * spec.steps_per_epoch
    batches = Watched(spec, position, end)
    loader = StreamLoader(batches, num_workers=workers, end_step=end)
    batches.claims = Ending(workers)  # before the workers start (at the first epoch)
    for number in range(2):
        position.set(number)
        assert len(list(loader)) == spec.steps_per_epoch
    assert batches.claims.ended.wait(timeout=120)
    assert batches.furthest.value == end - 1 and not batches.reached.is_set()
    position.set(2)
    with pytest.raises(ValueError, match=f"run past this loader's end_step {end}"):
        iter(loader)


def test_in_process_an_epoch_past_end_step_is_refused_too(spec):
    loader = StreamLoader(MixedBatches(spec, SharedEpoch(1)), end_step=spec.steps_per_epoch)
    with pytest.raises(ValueError, match="run past this loader's end_step"):
        iter(loader)


def test_close_ends_the_stream_started_or_not_and_the_epoch_iterating_it(spec):
    """``close`` right after ``iter`` (the workers already have tasks, the batches in step
    order never started) ends the claims; inside an epoch's loop it ends that epoch's
    iterator, and the next iteration starts a new stream, whole."""
    loader = StreamLoader(MixedBatches(spec, SharedEpoch(0)), num_workers=2)
    epoch = iter(loader)
    generation, claims = loader.batches.generation, loader.batches.claims
    loader.close()
    assert not running(claims, generation)
    assert list(epoch) == []
    got = []
    for batch in loader:
        got.append(batch)
        if len(got) == 2:
            loader.close()
    assert len(got) == 2 and not running(claims, loader.batches.generation)
    same_batches(list(loader), in_process(spec))


ORPHANED = """
import pickle, signal, sys
from sio.train.stream import MixedBatches, SharedEpoch, StreamLoader

class NeverReady(MixedBatches):  # the next epoch's shards never decoded: the workers wait
    def ready(self, steps):
        return False

with open(sys.argv[1], "rb") as handle:
    spec = pickle.load(handle)
loader = StreamLoader(NeverReady(spec, SharedEpoch(0)), num_workers=2)
assert len(list(loader)) == spec.steps_per_epoch
print(*[worker.pid for worker in loader.loader._iterator._workers], flush=True)
signal.pause()
"""


def test_workers_waiting_between_epochs_end_when_the_main_process_is_killed(spec, tmp_path):
    """The main process SIGKILLed while its workers wait for the next epoch (inside ``take``,
    where the DataLoader's own check for a dead parent does not run): they end, not poll on
    forever holding their shared memory. Waited for with pidfds (an event per process)."""
    (tmp_path / "spec.pkl").write_bytes(pickle.dumps(spec))
    (tmp_path / "orphaned.py").write_text(ORPHANED)
    main = subprocess.Popen(
        [sys.executable, str(tmp_path / "orphaned.py"), str(tmp_path / "spec.pkl")],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids = [int(pid) for pid in main.stdout.readline().split()]
    assert len(pids) == 2
    fds = [os.pidfd_open(pid) for pid in pids]
    try:
        main.kill()
        main.wait()
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        ended = set()
        while len(ended) < len(fds):
            events = poller.poll(120_000)
            assert events, f"workers {pids} still running 120 s after their parent was killed"
            for fd, _ in events:
                ended.add(fd)
                poller.unregister(fd)
    finally:
        for fd in fds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)


def test_one_mixed_batches_streams_through_one_stream_loader(spec):
    batches = MixedBatches(spec, SharedEpoch(0))
    StreamLoader(batches, num_workers=1)
    with pytest.raises(ValueError, match="another StreamLoader"):
        StreamLoader(batches, num_workers=1)
