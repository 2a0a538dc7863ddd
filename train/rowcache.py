"""Decoded shards, once per node: ``<cache_dir>/<sha256>.<channels>.rows``, memory-mapped.

A shard is read, checked and decoded (``sio.shardset.decode_shard``) by the first process of
the node that needs it, under the file's lock (cache.py), and published whole with
``atomic_path``; every other DataLoader worker and rank maps the published file and reads its
rows through the page cache. So a shard of a pass is fetched, hashed and decoded once per node
while the decoded files fit ``train.cache_limit`` (least recently used removed beyond it, and
decoded again when next needed).

The file (format 1): ``SIOROWS\\0``, a little-endian uint32 header length, a JSON header
(``format``, the shard's ``sha256``, ``shape`` N x C x H x W, the keys' byte length and the
``crc32`` of everything after the header), then at 64-byte-aligned offsets the uint8 rows, the
int64 labels (8-aligned) and the keys as a JSON list. A file that is cut, corrupt or of another
format is found when a process first opens it (the checksum is verified once per process and
file, not per batch), removed and rebuilt, with a one-line warning.

A local shard file is checked against its sha256 when it is decoded; the file's identity (size,
mtime, inode) is stamped beside its rows (``<sha256>.<path hash>.stamp``), so a process mapping
the rows only ``stat``s the file, and reads and checks it again once it changed (replaced).

Not cached, read as before in each process: a shard with a broken sample or record (the skip
path), a records shard whose keys come from its URL, a shard without a sha256, and everything
after a write to the cache failed (a full disk: said once, training goes on from the shards).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import zlib
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sio.core.files import atomic_path, write_text_atomic
from sio.core.storage import is_url
from sio.shardset import Check, Rows, ShardRef, check_shard_bytes, decode_shard
from sio.train.cache import Fetcher, cache_file, evict, locked, say_once, touch

MAGIC, FORMAT, ALIGN = b"SIOROWS\0", 1, 64
_VERIFIED: set[tuple[int, int, int]] = set()  # (device, inode, size) of files checked here


class StaleRows(Exception):
    """A decoded-cache file that cannot be used: cut, corrupt, another format."""


def _aligned(offset: int, to: int) -> int:
    return -(-offset // to) * to


def _layout(header_end: int, shape: tuple[int, ...], keys: int) -> tuple[int, int, int, int]:
    """(rows, labels, keys offsets, file size) of a file whose header ends at ``header_end``."""
    rows = _aligned(header_end, ALIGN)
    labels = _aligned(rows + int(np.prod(shape)), 8)
    keys_at = labels + 8 * shape[0]
    return rows, labels, keys_at, keys_at + keys


def _crc(*parts) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(memoryview(part).cast("B"), crc)
    return crc


def _write_chunk(handle, chunk) -> None:
    handle.write(chunk)


def write_rows(path: Path, sha256: str, rows: Rows) -> None:
    """``rows`` under ``path`` through ``atomic_path``: never half a file under its name."""
    images = np.ascontiguousarray(rows.images, np.uint8)
    labels = np.ascontiguousarray(rows.labels, "<i8")
    keys = json.dumps([str(k) for k in rows.keys]).encode()
    head = {
        "format": FORMAT,
        "sha256": sha256,
        "shape": list(images.shape),
        "keys": len(keys),
        "crc32": _crc(images, labels, keys),
    }
    header = json.dumps(head).encode()
    start = MAGIC + struct.pack("<I", len(header)) + header
    rows_at, labels_at, _, _ = _layout(len(start), images.shape, len(keys))
    pad = bytes(labels_at - rows_at - images.nbytes)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        for chunk in (start, bytes(rows_at - len(start)), images, pad, labels, keys):
            _write_chunk(handle, memoryview(chunk).cast("B"))


def open_rows(path: Path, sha256: str) -> Rows:
    """The rows of a published file, memory-mapped; FileNotFoundError, or StaleRows naming
    what is wrong with it."""
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        head = _header(handle, sha256)
        shape = tuple(head["shape"])
        rows_at, labels_at, keys_at, size = _layout(handle.tell(), shape, head["keys"])
        if stat.st_size != size:
            raise StaleRows(f"{stat.st_size} bytes, its header says {size} (cut short?)")
        # plain arrays over one read-only map (np.memmap's subclass costs ~5 us per index)
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        images = np.frombuffer(mapped, np.uint8, int(np.prod(shape)), rows_at).reshape(shape)
        labels = np.frombuffer(mapped, "<i8", shape[0], labels_at)
        keys = bytes(mapped[keys_at:size])
    identity = (stat.st_dev, stat.st_ino, stat.st_size)
    if identity not in _VERIFIED:
        if _crc(images, labels, keys) != head["crc32"]:
            raise StaleRows("its rows do not match their checksum (corrupt)")
        _VERIFIED.add(identity)
    return Rows(str(path), images, labels, np.array(json.loads(keys), dtype=object))


def _header(handle, sha256: str) -> dict:
    start = handle.read(len(MAGIC) + 4)
    if start[: len(MAGIC)] != MAGIC or len(start) < len(MAGIC) + 4:
        raise StaleRows("not a decoded-shard file (cut short or another format)")
    try:
        head = json.loads(handle.read(struct.unpack("<I", start[len(MAGIC) :])[0]))
        if head.get("format") != FORMAT:
            raise StaleRows(f"format {head.get('format')!r}; this sio writes format {FORMAT}")
        shape, keys = [int(n) for n in head["shape"]], int(head["keys"])
        if head["sha256"] != sha256 or len(shape) != 4 or min(shape) < 0 or keys < 0:
            raise StaleRows(f"its header does not describe shard {sha256}")
        int(head["crc32"])
    except StaleRows:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable header: rebuild
        raise StaleRows(f"unreadable header ({err})") from None
    return head


@dataclass
class Counts:
    """What a process did for the shards it loaded since the last ``take``."""

    reads: int = 0  # shards read (from a file, the node cache or the network) and checked
    decodes: int = 0  # shards decoded
    cached: int = 0  # shards mapped from the decoded cache

    def take(self) -> dict[str, int]:
        taken = {"shard_reads": self.reads, "shard_decodes": self.decodes}
        taken["shard_cached"] = self.cached
        self.reads = self.decodes = self.cached = 0
        return taken


class ShardLoader:
    """A process's way from a ShardRef to its Rows: the node's decoded cache when the shard
    has a sha256 (``folder`` not None), else its bytes read and decoded here."""

    def __init__(self, fetcher: Fetcher, folder: Path | None, limit: int | None):
        self.fetcher, self.folder, self.limit = fetcher, folder, limit
        self.counts = Counts()
        self.writable = True
        self._published: set[tuple[str, int]] = set()  # (sha256, channels) found published

    def load(self, ref: ShardRef, encoding: str, check: Check, wait: bool = True) -> Rows | None:
        """The shard's rows; None (``wait=False``) while another process is decoding it."""
        if self.folder is None or not ref.sha256:
            return self._decode(ref, encoding, check)
        path = self._rows_file(ref, check)
        rows = self._cached(path, ref, check, quiet=True)
        if rows is None:
            with locked(path, wait) as held:
                if not held:
                    return None
                rows = self._cached(path, ref, check, quiet=False)
                if rows is None:
                    rows = self._decode(ref, encoding, check)
                    if rows.cacheable:  # stamped first: whoever maps the rows finds it
                        self._stamp(ref)
                        self._publish(path, ref, rows)
                    return rows
        if not self._unchanged(ref):  # a local file not checked since it changed
            data, _ = self.fetcher.read_checked(ref.url, ref.sha256)
            self.counts.reads += 1
            check_shard_bytes(ref.url, data, ref.sha256)
            self._stamp(ref)
        self.counts.cached += 1
        return rows

    def published(self, ref: ShardRef, check: Check) -> bool:
        """Whether the shard's decoded rows are in the node's decoded cache (a file once seen
        is taken to stay: ``cache_file`` resolves its path, ~15 us a shard)."""
        if self.folder is None or not ref.sha256:
            return False
        key = (ref.sha256, check.channels)
        if key not in self._published and self._rows_file(ref, check).is_file():
            self._published.add(key)
        return key in self._published

    def _rows_file(self, ref: ShardRef, check: Check) -> Path:
        return cache_file(self.folder, ref.sha256, f".{check.channels}.rows")

    def _stamp_file(self, ref: ShardRef) -> tuple[Path, str] | None:
        """(where the identity of a local shard file checked against its sha256 is kept, its
        identity now: size, mtime, inode, device), or None for a remote shard."""
        if is_url(ref.url):
            return None
        try:
            stat = os.stat(ref.url)
        except OSError:
            return self.folder / ".none", "missing"
        place = hashlib.sha256(os.path.abspath(ref.url).encode()).hexdigest()[:16]
        identity = f"{stat.st_size} {stat.st_mtime_ns} {stat.st_ino} {stat.st_dev}"
        return cache_file(self.folder, ref.sha256, f".{place}.stamp"), identity

    def _unchanged(self, ref: ShardRef) -> bool:
        stamp = self._stamp_file(ref)
        if stamp is None:
            return True
        try:
            return stamp[0].read_text() == stamp[1]
        except OSError:
            return False

    def _stamp(self, ref: ShardRef) -> None:
        stamp = self._stamp_file(ref)
        if stamp is not None and self.writable:
            with suppress(OSError):  # unstamped: checked again next time
                write_text_atomic(stamp[0], stamp[1])

    def _decode(self, ref: ShardRef, encoding: str, check: Check) -> Rows:
        data, verified = self.fetcher.read_checked(ref.url, ref.sha256)
        self.counts.reads += 1
        rows = decode_shard(replace(ref, sha256="") if verified else ref, data, encoding, check)
        self.counts.decodes += 1
        return rows

    def _cached(self, path: Path, ref: ShardRef, check: Check, quiet: bool) -> Rows | None:
        """The published rows if they are the shard's and pass ``check``; a stale file is
        removed (by the lock holder, ``quiet=False``) with a warning."""
        try:
            rows = open_rows(path, ref.sha256)
        except FileNotFoundError:
            return None
        except StaleRows as stale:
            if not quiet:
                say_once(f"{path}: decoded shard of {ref.url}: {stale}; decoding it again")
                path.unlink(missing_ok=True)
            return None
        if len(rows.keys) != ref.count or rows.images.shape[1:] != check.shape:
            return None  # decoded here, the manifest's count or shape is named
        if check.classes is not None and len(rows.labels) and rows.labels.max() >= check.classes:
            return None
        touch(path)
        rows.url = ref.url
        return rows

    def _publish(self, path: Path, ref: ShardRef, rows: Rows) -> None:
        if not self.writable:
            return
        try:
            write_rows(path, ref.sha256, rows)
        except OSError as err:
            self.writable = False
            say_once(
                f"train.cache_dir {self.folder}: cannot write decoded shards "
                f"({err.strerror or err}); training goes on from the shards themselves"
            )
            return
        evict(self.folder, self.limit, keep=path)
