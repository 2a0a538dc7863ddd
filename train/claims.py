"""Which items of a stream the DataLoader workers take: each worker takes the next item when it
is ready for one, so a worker that is slowed (a shared core, a slow fetch) makes fewer items
and no worker waits for another's turn.

The items are ``mixing.StepItems`` of the stream's steps (from its first step, across epochs,
to its end if it has one); a batch is a function of (seed, step) alone, so which worker makes
an item never changes a batch, and the main process puts the items back in step order
(``stream.in_step_order``). State shared by the workers and the main process, in one small
shared array: the generation (the main process starts a new one each time it starts a stream
on its DataLoader's workers; a worker counts the DataLoader's iterations itself, so an iterator
left from an abandoned stream takes nothing of the next), the stream's first step and end, the
next item, the first step the main process has not yielded yet (``front``), which bounds how
far ahead a worker may run while another is held up or the main process does something else
(the items in flight, and the shared slots that hold them, stay bounded), the end of the epoch
the main process is in, and the last generation the main process ended (so no worker waits on
a front that will not move).

Past the end of the main process's epoch a worker takes an item only when it is ``ready``: its
batches need no shard decoded (stream.py; with the node's decoded cache). So a shard is
decoded for the first epoch that needs it, on any rank (ranks move from epoch to epoch
together), and each epoch's ``shard_decodes`` counts the shards it was the first to touch
(while the cache holds them: an evicted shard, or one read for a skipped sample, may be
decoded early).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable

from sio.train.mixing import StepItems

GENERATION, NEXT, FRONT, STOPPED, START, END, EPOCH_END = range(7)
NO_END = -1  # END of a stream without end
WAIT = -1  # take_now: the next item is too far ahead of the main process or not ready yet
POLL_S = (0.0005, 0.008)  # a held-back worker's pause between tries: the first, the longest


class ItemClaims:
    """The items of the current stream the workers of one DataLoader have taken."""

    def __init__(self):
        self._state = multiprocessing.Array("q", 7)
        self._owner = os.getpid()  # the main process: its DataLoader workers' parent

    def start(self, first_step: int = 0, end: int | None = None, epoch_end: int = 2**62) -> int:
        """A new stream's claims (the main process, before its workers start it): its steps
        from ``first_step`` to ``end`` (None: no end), the main process in an epoch ending at
        ``epoch_end``, no item taken, nothing yielded; the new generation."""
        with self._state.get_lock():
            state = self._state.get_obj()
            state[GENERATION] += 1
            state[NEXT] = 0
            state[START] = state[FRONT] = first_step
            state[END] = NO_END if end is None else end
            state[EPOCH_END] = epoch_end
            return state[GENERATION]

    def announce(self, generation: int, epoch_end: int) -> None:
        """The main process is in an epoch of ``generation``'s stream that ends at step
        ``epoch_end``."""
        with self._state.get_lock():
            state = self._state.get_obj()
            if state[GENERATION] == generation:
                state[EPOCH_END] = epoch_end

    def span(self, generation: int) -> tuple[int, int | None] | None:
        """(first step, end or None) of ``generation``'s stream; None once a later one started."""
        with self._state.get_lock():
            state = self._state.get_obj()
            if state[GENERATION] != generation:
                return None
            return state[START], None if state[END] == NO_END else state[END]

    def advance(self, generation: int, front: int) -> None:
        """The main process has yielded ``generation``'s steps before ``front`` (nothing, once a
        later generation started: an old iterator resumed late never moves the new front)."""
        state = self._state.get_obj()  # words the main process alone writes: no lock needed
        if state[GENERATION] == generation:
            state[FRONT] = front

    def stop(self, generation: int) -> None:
        """The main process is done with ``generation`` (finished, failed or abandoned): no
        worker takes another of its items, so none waits on a front that will not move. A
        later generation is left as it is (an old iterator closed late)."""
        with self._state.get_lock():
            state = self._state.get_obj()
            if state[GENERATION] == generation:
                state[STOPPED] = generation

    def take_now(
        self, generation: int, items: StepItems, ahead: int, ready: Callable | None = None
    ) -> int | None:
        """The index of the next item of ``items`` for this worker, marked taken; None when the
        stream has no item left or ``generation`` has ended; WAIT while that item starts
        ``ahead`` steps or more past the main process's front, or past the end of its epoch
        while ``ready(item)`` is false (asked outside the lock)."""
        checked = None  # the item found ready
        while True:
            with self._state.get_lock():
                state = self._state.get_obj()  # under the lock: its words as they are
                if state[GENERATION] != generation or state[STOPPED] == generation:
                    return None
                index = state[NEXT]
                item = items.at(index)
                if item is None:
                    return None
                if item.start >= state[FRONT] + ahead:
                    return WAIT
                early = ready is not None and item.start >= state[EPOCH_END]
                if not early or checked == item:
                    state[NEXT] = index + 1
                    return index
            if not ready(item):
                return WAIT
            checked = item  # taken on the next round unless another worker took it

    def take(
        self, generation: int, items: StepItems, ahead: int, ready: Callable | None = None
    ) -> int | None:
        """``take_now``, waiting while the next item is too far ahead or not ready (another
        worker is held up on an earlier item, or the main process is busy elsewhere: the
        pause doubles, up to a few milliseconds); None once the main process is gone (killed:
        the DataLoader's own check for it runs only between items)."""
        pause = POLL_S[0]
        while (index := self.take_now(generation, items, ahead, ready)) == WAIT:
            if os.getppid() != self._owner:
                return None
            time.sleep(pause)
            pause = min(2 * pause, POLL_S[1])
        return index
