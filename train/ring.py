"""A DataLoader worker's batches to the main process through a ring of reusable shared slots.

Sent as it is, each tensor of a batch is moved into a new shared-memory segment and its file
descriptor handed over through the worker's descriptor-passing thread: the main process opens a
connection (with multiprocessing's handshake) and maps a segment per tensor and batch, which on
a small machine costs it more than the worker spends making the batch. Here a worker owns a few
shared slots (``SlotRing``) and writes an item's top-level contiguous CPU tensors into a free
one (the one copy sharing made anyway); an item is one batch or several consecutive steps'
batches (stream.py groups small batches, so the per-item costs of the DataLoader are paid once
for them). The main process is sent a slot's segment once, the first time the slot is used,
and keeps it mapped; after that only (worker, slot, layout) and the batches' small values cross
the DataLoader's queue. Unpickled, a ``SlotBatch`` is the list of the same dicts again (keys in
order, each tensor a view of the slot of its dtype and shape, bitwise equal).

A slot is busy from the worker's write until the main process drops the last view of that
item's batches (a finalizer marks it free in the slot's header); a worker that finds no free
slot makes a new one, so a consumer that keeps every batch costs what it did before (a segment
per item) and nothing ever waits on the consumer. An item the DataLoader drains and drops
when an epoch is abandoned is unpickled and freed like any other; a slot whose item never
reached the main process (a worker killed while sending it) stays busy and is not used again.
Slots are kept for the worker's life (a free slot is reused when it is large enough): its shared
memory is about the most it ever had in flight.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import weakref

import torch

HEADER = 64  # bytes at a slot's start: its state (int32), then padding to the alignment
ALIGN = 64  # bytes: every tensor of a slot starts at a multiple (any dtype's alignment)
FREE, BUSY = 0, 1


def _state(storage: torch.UntypedStorage) -> ctypes.c_int32:
    """A slot's state word (the int32 at its start; the caller keeps ``storage`` alive)."""
    return ctypes.c_int32.from_address(storage.data_ptr())


def _packable(value) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.device.type == "cpu"
        and value.is_contiguous()
        and not value.requires_grad
    )


class SlotRing:
    """The slots of one worker process: shared storages reused once the main process is done."""

    def __init__(self):
        self.token = (os.getpid(), secrets.token_hex(6))
        self.slots: list[torch.UntypedStorage] = []
        self.states: list[ctypes.c_int32] = []
        self.sent: set[int] = set()  # slots whose segment the main process was sent

    def _slot(self, nbytes: int) -> int:
        """A free slot of at least ``nbytes`` after its header, marked busy (made if none)."""
        for index, (slot, state) in enumerate(zip(self.slots, self.states, strict=True)):
            if state.value == FREE and slot.nbytes() >= HEADER + nbytes:
                state.value = BUSY
                return index
        slot = torch.UntypedStorage._new_shared(HEADER + max(nbytes, 1))
        self.slots.append(slot)
        self.states.append(_state(slot))
        self.states[-1].value = BUSY
        return len(self.slots) - 1

    def pack(self, batches: list[dict]) -> SlotBatch:
        """``batches`` (a worker's item: one or several steps' batches) with their tensors
        written into one slot, ready for the DataLoader's queue. Consecutive batches of the
        same keys, tensor dtypes and shapes form a run, written column by column (a key's
        tensors back to back), so the main process makes each column's views in one call."""
        runs, total = [], 0
        for signature, group in _runs(batches):
            order, packed = signature
            columns = []
            for key, dtype, shape in packed:
                start = -(-total // ALIGN) * ALIGN
                columns.append((key, start, dtype, shape))
                total = start + len(group) * group[0][key].nbytes
            keys = {key for key, *_ in packed}
            rests = [[(k, v) for k, v in batch.items() if k not in keys] for batch in group]
            runs.append((order, columns, rests, group))
        index = self._slot(total)
        buffer = torch.empty(0, dtype=torch.uint8).set_(self.slots[index])
        for _, columns, _, group in runs:
            for key, start, dtype, shape in columns:
                at = HEADER + start
                column = buffer[at : at + len(group) * group[0][key].nbytes].view(dtype)
                torch.stack([batch[key] for batch in group], out=column.view(len(group), *shape))
        # the slot as a tensor over it: shared by descriptor through the DataLoader's queue
        segment = None if index in self.sent else buffer
        self.sent.add(index)
        parts = [(order, columns, rests) for order, columns, rests, _ in runs]
        return SlotBatch(self.token, index, segment, total, parts)


def _runs(batches: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """``batches`` cut into runs of consecutive batches of one signature: (keys in order,
    (key, dtype, shape) of each packable tensor)."""
    runs = []
    for batch in batches:
        packed = tuple(
            (key, value.dtype, tuple(value.shape))
            for key, value in batch.items()
            if _packable(value)
        )
        signature = (tuple(batch), packed)
        if runs and runs[-1][0] == signature:
            runs[-1][1].append(batch)
        else:
            runs.append((signature, [batch]))
    return runs


class SlotBatch:
    """A worker's batches on their way to the main process: which slot holds their tensors,
    and where (``parts``: per run of batches of one signature, their keys' order, each
    packed key's column (key, offset, dtype, shape of one tensor) and each batch's other
    values)."""

    def __init__(self, token, index, segment, total, parts):
        self.token, self.index, self.segment = token, index, segment
        self.total, self.parts = total, parts

    def __reduce__(self):
        return _arrived, (self.token, self.index, self.segment, self.total, self.parts)


# the main process's mapped slots: worker token -> slot index -> (storage, its state word)
_MAPPED: dict[tuple[int, str], dict[int, tuple[torch.UntypedStorage, ctypes.c_int32]]] = {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mapped(token, index: int, segment) -> tuple[torch.UntypedStorage, ctypes.c_int32]:
    if segment is not None:
        if token not in _MAPPED:
            for gone in [t for t in _MAPPED if t[0] != os.getpid() and not _alive(t[0])]:
                del _MAPPED[gone]  # batches still held keep their slots (the finalizers)
            _MAPPED[token] = {}
        storage = segment.untyped_storage()
        _MAPPED[token][index] = storage, _state(storage)
        return _MAPPED[token][index]
    try:
        return _MAPPED[token][index]
    except KeyError:
        raise RuntimeError(f"batch slot {index} of worker {token[0]} was never sent") from None


def _free(storage: torch.UntypedStorage, state: ctypes.c_int32) -> None:
    """Mark a slot free (``storage``: kept alive until then, it holds ``state``)."""
    state.value = FREE


def _arrived(token, index, segment, total, parts) -> list[dict]:
    """The batches a ``SlotBatch`` was made of, their tensors views of the slot; the slot is
    freed once the last of them is gone."""
    slot, state = _mapped(token, index, segment)
    view = (ctypes.c_uint8 * max(total, 1)).from_address(slot.data_ptr() + HEADER)
    weakref.finalize(view, _free, slot, state)  # holds the slot until the views are gone
    # the tensors' storage is one over ``view`` (which it keeps alive), each at its offset
    storage = torch.frombuffer(view, dtype=torch.uint8).untyped_storage()
    batches = []
    for order, columns, rests in parts:
        count = len(rests)
        values = [dict(rest) for rest in rests]
        for key, start, dtype, shape in columns:
            column = torch.empty(0, dtype=dtype).set_(
                storage, start // dtype.itemsize, (count, *shape)
            )
            for batch, tensor in zip(values, column.unbind(0), strict=True):
                batch[key] = tensor
        batches += [{key: batch[key] for key in order} for batch in values]
    return batches
