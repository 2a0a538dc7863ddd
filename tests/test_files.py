"""``atomic_path``, the one way sio writes a file under its final name: whatever happens in the
middle of a write (an exception, an interrupt, the writer SIGKILLed), the final name holds the
old file or nothing, never part of the new one, and the writer's temporary is never under it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from sio.core.files import (
    atomic_path,
    stale_temporaries,
    write_json_atomic,
    write_text_atomic,
)

OLD = b"old and complete\n"
NEW = b"n" * (1 << 20)  # the new content: a megabyte, written in two halves


class Crash(Exception):
    pass


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_complete_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "data.bin"
    final.write_bytes(OLD)
    with atomic_path(final) as tmp:
        assert tmp != final and tmp.parent == final.parent
        tmp.write_bytes(NEW)
        assert final.read_bytes() == OLD  # readers see the old file until the rename
    assert final.read_bytes() == NEW
    assert names(tmp_path) == ["data.bin"]


@pytest.mark.parametrize("error", [Crash, KeyboardInterrupt])
@pytest.mark.parametrize("old", [OLD, None])
def test_an_error_in_the_middle_leaves_the_old_file_or_nothing(tmp_path, error, old):
    final = tmp_path / "data.bin"
    if old is not None:
        final.write_bytes(old)
    with pytest.raises(error), atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(NEW[: len(NEW) // 2])
        raise error()
    if old is None:
        assert not final.exists()
        assert names(tmp_path) == []
    else:
        assert final.read_bytes() == old
        assert names(tmp_path) == ["data.bin"]  # the temporary is gone too


def test_an_error_in_the_middle_of_a_folder_keeps_the_old_folder(tmp_path):
    final = tmp_path / "folder"
    final.mkdir()
    (final / "a").write_bytes(OLD)
    with pytest.raises(Crash), atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "a").write_bytes(NEW)
        raise Crash()
    assert names(final) == ["a"] and (final / "a").read_bytes() == OLD
    assert names(tmp_path) == ["folder"]
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "b").write_bytes(NEW)
    assert names(final) == ["b"]  # a complete folder replaces the old one whole
    assert names(tmp_path) == ["folder"]


# The child writes half of NEW through atomic_path, says so on stdout, and blocks on stdin (which
# the test never closes) until it is killed: the kill lands in the middle of the write.
CHILD = textwrap.dedent(
    """
    import sys
    from sio.core.files import atomic_path

    half = int(sys.argv[2]) // 2
    with atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"n" * half)
            f.flush()
            print(tmp, flush=True)
            sys.stdin.read()
            f.write(b"n" * half)
    """
)


@pytest.mark.parametrize("old", [OLD, None])
def test_a_writer_killed_mid_write_leaves_the_old_file_or_nothing(tmp_path, old):
    final = tmp_path / "data.bin"
    if old is not None:
        final.write_bytes(old)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(final), str(len(NEW))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        temporary = child.stdout.readline().strip()  # the child is now mid-write
        assert temporary, "the child ended before writing"
        assert os.path.getsize(temporary) == len(NEW) // 2
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.stdin.close()
        child.stdout.close()
    if old is None:
        assert not final.exists()
    else:
        assert final.read_bytes() == old
    # what the killed writer left is under its own temporary name, which stale_temporaries finds
    assert [str(p) for p in stale_temporaries(tmp_path)] == [temporary]
    assert os.path.getsize(temporary) == len(NEW) // 2
    # the next writer completes the file; the killed writer's temporary never becomes it
    with atomic_path(final) as tmp:
        tmp.write_bytes(NEW)
    assert final.read_bytes() == NEW


def test_the_text_and_json_writers_go_through_it(tmp_path):
    final = tmp_path / "a.json"
    write_json_atomic(final, {"b": 1, "a": [2]})
    assert json.loads(final.read_text()) == {"a": [2], "b": 1}
    write_text_atomic(final, "text\n")
    assert final.read_text() == "text\n"
    assert names(tmp_path) == ["a.json"]
