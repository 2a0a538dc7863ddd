"""One job at a time writes a folder: the folder lock of every stage.

``FolderLock`` is a file in the folder (``.lock``; ``sio generate`` keeps its own in
``.progress/lock``) held under ``flock``: the ranks of one run (torchrun's run id, see
``run_id``) share it, a job of another run is refused with one line naming the holder's pid, host
and command. The kernel drops an flock when its process dies, so the lock of a killed job is
stale the moment it dies and the next job takes it over (its first holder removes the
temporaries the killed job left).

``hold_folder(folder)`` holds the lock for a block, as the stages' APIs do for their output
folder (train, evaluate, report, run). It is per folder (``runs/x`` and ``runs/x/train/a`` are
two locks) and re-entrant within one thread: ``sio run`` holds its folder while its report writes
into it, a command holds ``--out`` while the API it calls takes it again.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sio.core.files import stale_temporaries

LOCK_FILE = ".lock"
COMMAND_CHARS = 160  # of the holder's command line, in its record and in a refusal


class FolderBusy(RuntimeError):
    """Another job is writing the folder (shown as one ``Error:`` line)."""


def run_id() -> str:
    """What the ranks of one launch share (torchrun's run id), else this process's own."""
    shared = os.environ.get("TORCHELASTIC_RUN_ID")
    if shared and os.environ.get("WORLD_SIZE", "1") != "1":
        return f"torchrun:{shared}"
    return f"process:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def command_line() -> str:
    """This process's command, shortened: ``sio train --real ... --out runs/a``."""
    program = Path(sys.argv[0] if sys.argv and sys.argv[0] else "python")
    name = f"python -m {program.parent.name}" if program.name == "__main__.py" else program.name
    text = " ".join([name, *sys.argv[1:]])
    return text if len(text) <= COMMAND_CHARS else text[: COMMAND_CHARS - 3] + "..."


class FolderLock:
    """One job at a time writes a folder: ``lock_name`` under flock, shared by the ranks of one
    run (the first writer holds it exclusively while it writes who it is into the lock file and
    removes the stale temporaries; then every rank of its run holds it shared), and a writer of
    another run is refused with the holder's name (``error``).

    Converting an flock from exclusive to shared is not atomic (it is dropped and taken again),
    and a writer of another run could be granted it in between. So every attempt to take the lock
    first takes a second, short-lived one, ``<lock_name>.gate``, exclusively: the first writer
    keeps the gate from before it takes the lock until it holds it shared, with its record written
    and the folder cleaned; nobody else even tries the lock meanwhile."""

    lock_name = LOCK_FILE  # relative to the folder
    error: type[Exception] = FolderBusy

    def __init__(self, folder: str | Path, run: str):
        self.folder = Path(folder)
        self.path = self.folder / self.lock_name
        self.gate_path = self.path.with_name(f"{self.path.name}.gate")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run = run
        self.file = open(self.path, "a+")  # noqa: SIM115 - held for the job's lifetime
        self.first = False

    def acquire(self, timeout_s: float = 2.0, on_first=None, gate_timeout_s: float = 600.0) -> None:
        """Take the lock (``on_first()`` runs, with it held exclusively, in the first writer).
        A writer of another run is refused once it has held the lock for ``timeout_s``; while
        the gate is held by this run's first writer (cleaning a large folder), wait up to
        ``gate_timeout_s``."""
        start = time.monotonic()
        while True:
            gate = self._take_gate()
            if gate is None:  # someone is taking the lock now: whose run is it?
                holder = self._holder()
                waited = time.monotonic() - start
                limit = timeout_s if holder.get("run") not in (None, self.run) else gate_timeout_s
                if waited > limit:
                    self._refuse(holder)
                time.sleep(0.02)
                continue
            try:
                if self._try_lock(on_first):
                    return
            finally:
                gate.close()  # closing the gate's file releases it
            holder = self._holder()
            if time.monotonic() - start > timeout_s:
                self._refuse(holder)
            time.sleep(0.05)

    def _take_gate(self):
        """The gate's file, held exclusively, or None while another job holds it. A gate that
        its last holder removed after this opened it is opened again (``release``)."""
        while True:
            handle = open(self.gate_path, "a+b")  # noqa: SIM115 - closed by the caller
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return None
            if _is_at(handle, self.gate_path):
                return handle
            handle.close()

    def _try_lock(self, on_first) -> bool:
        """With the gate held: the lock taken (first, or joining this run), else False."""
        if not _is_at(self.file, self.path):  # removed by its last holder since it was opened
            self.file.close()
            self.file = open(self.path, "a+")  # noqa: SIM115 - held for the job's lifetime
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # held shared by the ranks of a run (nobody holds it exclusively outside the gate)
            if self._holder().get("run") != self.run:
                return False
            fcntl.flock(self.file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        try:
            self._write_holder()
            self.first = True
            if on_first is not None:
                on_first()
        except BaseException:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            raise
        fcntl.flock(self.file, fcntl.LOCK_SH)  # under the gate: nobody can slip in between
        return True

    def _write_holder(self) -> None:
        self.file.seek(0)
        self.file.truncate()
        holder = {
            "run": self.run,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": command_line(),
        }
        self.file.write(json.dumps(holder) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def _refuse(self, holder: dict):
        self.release()
        raise self.error(
            f"{self.folder}: another job is writing this folder "
            f"({describe_holder(holder)}); wait for it to finish or use another --out"
        ) from None

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def release(self, remove: bool = False) -> None:
        """Let the lock go; with ``remove``, the last holder (no other rank of its run holds
        it, no job is taking it) also deletes the lock and gate files, so a failed job leaves
        nothing of its lock in the folder. A job that opened either file before it
        went takes the lock anew (``_take_gate``, ``_try_lock``: under the gate, the files are
        checked to be the ones at their paths)."""
        if self.file.closed:
            return
        if remove:
            self._remove()
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()

    def _remove(self) -> None:
        gate = self._take_gate()
        if gate is None:  # another job is taking the lock now: it stays
            return
        try:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # other ranks of this run hold it still
            if _is_at(self.file, self.path):
                self.path.unlink(missing_ok=True)
            self.gate_path.unlink(missing_ok=True)  # while held: a job that opened it retries
        finally:
            gate.close()


def _is_at(handle, path: Path) -> bool:
    """Whether the open file ``handle`` is the file at ``path`` (not one removed since)."""
    try:
        at = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (mine.st_dev, mine.st_ino) == (at.st_dev, at.st_ino)


def describe_holder(holder: dict) -> str:
    if not holder:
        return "a writer that has not said who it is yet"
    command = str(holder.get("command", ""))[:COMMAND_CHARS]
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}, "
        f"{command}".rstrip(", ")
    )


def remove_temporaries(folder: Path) -> list[Path]:
    """What killed writers left in ``folder``: the temporaries of ``atomic_path``."""
    stale = stale_temporaries(folder)
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


# the folders held by hold_folder in this process: (pid, thread, lock path)
_held: set[tuple[int, int, str]] = set()


@contextmanager
def hold_folder(
    folder: str | Path,
    *,
    on_first: Callable[[Path], object] | None = remove_temporaries,
    timeout_s: float = 2.0,
) -> Iterator[None]:
    """Hold ``folder``'s lock (created if need be) for the block; another job's block on it is
    refused (``FolderBusy``). Nested in one thread on the same folder, only the outer one locks.
    A block that raises removes the lock's files (``.lock``, ``.lock.gate``) as it lets them go,
    unless another rank of its run or another job is at them; one that ends keeps its record.
    ``on_first(folder)`` runs in the first writer of a run, with the lock held exclusively."""
    folder = Path(folder)
    # realpath, not Path.resolve: a symbolic link loop is then the OSError (ELOOP) of making the
    # folder, which names the path, not a RuntimeError
    key = (os.getpid(), threading.get_ident(), os.path.join(os.path.realpath(folder), LOCK_FILE))
    if key in _held:  # the outer block holds it
        yield
        return
    lock = FolderLock(folder, run_id())
    lock.acquire(timeout_s, on_first=None if on_first is None else lambda: on_first(folder))
    _held.add(key)
    failed = True
    try:
        yield
        failed = False
    finally:
        _held.discard(key)
        lock.release(remove=failed)  # a failed job leaves no lock files behind


@contextmanager
def exclusive(path: str | Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on the file ``path`` (created if need be) for the block, yielding True
    once held; with ``wait=False``, False at once when another process holds it. Unlike
    ``FolderLock`` nothing is recorded in the file: it is the short lock of one cache entry (the
    kernel drops it when its holder dies)."""
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
