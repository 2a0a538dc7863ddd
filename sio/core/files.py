"""Small file helpers shared by the stages: checksums and the one atomic-write mechanism.

Everything sio writes under a final name goes through ``atomic_path``: the bytes are written
under a temporary name of this writer's own (``NAME.<uuid>.tmp[SUFFIX]``) and renamed into place
only once complete, so a crash leaves no half-written file under a final name, and writers racing
on one file (torchrun ranks) never share a temporary. ``stale_temporaries`` finds what a killed
writer left, for the next writer to remove. What the file system refuses (a full disk, a
read-only folder, no permission) is an ``OSError`` naming the final path, which the CLI shows as
one line (``filesystem_error``); a writer of its own temporaries (the shard writer) names its
final path the same way (``naming``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp"
# what a file system refuses, as the user reads it (errno -> cause)
FILESYSTEM_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many levels of symbolic links",
}


def filesystem_error(err: BaseException) -> str | None:
    """``PATH: cause`` for an ``OSError`` the file system raised (full disk, read-only folder,
    permissions; the cause alone when the error names no path); None for any other error."""
    if not isinstance(err, OSError) or err.errno not in FILESYSTEM_ERRORS:
        return None
    cause = FILESYSTEM_ERRORS[err.errno]
    return cause if err.filename is None else f"{err.filename}: {cause}"


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` raised for ``path`` (the final name, not the temporary beside it) when it is a
    plain file-system refusal of that write (a ``write`` on a full disk names no path)."""
    if err.errno not in FILESYSTEM_ERRORS or type(err) is not type(OSError(err.errno, "")):
        return err
    if err.filename is not None:
        if not isinstance(err.filename, (str, bytes, os.PathLike)):
            return err
        if Path(os.fsdecode(err.filename)).parent != path.parent:
            return err  # another file's (an input's) error
    return OSError(err.errno, err.strerror or os.strerror(err.errno), str(path))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def temporary_name(path: str | Path, suffix: str = "") -> Path:
    """A temporary path beside ``path`` that no other writer uses; ``suffix`` keeps an ending a
    writer insists on (numpy's ``.npz``)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{uuid.uuid4().hex}{TMP_MARK}{suffix}")


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Inside the block, a file-system refusal of a write for ``path`` (to a temporary beside
    it, or a ``write`` that names no file) is re-raised naming ``path``."""
    try:
        yield
    except OSError as err:
        named = _naming(err, Path(path))
        if named is err:
            raise
        raise named from err


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to (a file or a folder); on success it
    replaces ``path`` (a folder there is removed first), on any error it is removed."""
    path = Path(path)
    tmp = temporary_name(path, suffix)
    try:
        with naming(path):
            yield tmp
            if tmp.is_dir() and path.is_dir():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def stale_temporaries(folder: str | Path, pattern: str = "*") -> list[Path]:
    """Temporaries that writers of ``atomic_path`` left in ``folder`` (killed mid-write)."""
    return sorted(Path(folder).glob(f"{pattern}{TMP_MARK}*"))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text through ``atomic_path``: readers never see half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data) -> None:
    """JSON (sorted keys, indented) written as ``write_text_atomic`` does."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
