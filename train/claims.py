"""Which items of an epoch the DataLoader workers take: each worker takes the next item when it
is ready for one, so a worker that is slowed (a shared core, a slow fetch) makes fewer items
and no worker waits for another's turn.

The items are ``mixing.epoch_items``; a batch is a function of (seed, step) alone, so which
worker makes an item never changes a batch, and the main process puts the items back in step
order (``stream.in_step_order``). State shared by the workers and the main process, in one
small shared array: the generation (the main process starts a new one each time it iterates;
a worker counts the iterations itself, so an iterator left from an abandoned epoch takes
nothing of the next), the next item, the first step the main process has not yielded yet
(``front``), which bounds how far ahead a worker may run while another is held up (the items
in flight, and the shared slots that hold them, stay bounded), and the last generation the
main process ended (so no worker waits on a front that will not move).
"""

from __future__ import annotations

import multiprocessing
import time

GENERATION, NEXT, FRONT, STOPPED = range(4)
WAIT = -1  # take_now: the next item is too far ahead of the main process; try again soon
POLL_S = 0.0005  # a held-back worker's pause between tries


class ItemClaims:
    """The items of the current epoch the workers of one DataLoader have taken."""

    def __init__(self):
        self._state = multiprocessing.Array("q", 4)

    def start(self) -> int:
        """A new epoch's claims (the main process, before its workers start the epoch): no item
        taken, nothing yielded; the new generation."""
        with self._state.get_lock():
            state = self._state.get_obj()
            state[GENERATION] += 1
            state[NEXT] = state[FRONT] = 0
            return state[GENERATION]

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

    def take_now(self, generation: int, items: list[range], ahead: int) -> int | None:
        """The index of the next item of ``items`` for this worker, marked taken; None when the
        epoch has no item left or ``generation`` has ended; WAIT while that item starts
        ``ahead`` steps or more past the main process's front."""
        with self._state.get_lock():
            state = self._state.get_obj()  # under the lock: its words as they are
            if state[GENERATION] != generation or state[STOPPED] == generation:
                return None
            index = state[NEXT]
            if index >= len(items):
                return None
            if items[index].start >= state[FRONT] + ahead:
                return WAIT
            state[NEXT] = index + 1
            return index

    def take(self, generation: int, items: list[range], ahead: int) -> int | None:
        """``take_now``, waiting while the next item is too far ahead (another worker is held
        up on an earlier item)."""
        while (index := self.take_now(generation, items, ahead)) == WAIT:
            time.sleep(POLL_S)
        return index
