"""The node-local shard cache (``train.cache_dir``, ``train.cache_limit``) for remote shard sets.

A remote shard is stored under its manifest sha256 (``<cache_dir>/<sha256>.tar``), so two sets
sharing a shard share its file and a replaced shard can never be served from the cache. Every
rank and DataLoader worker of a node may ask for the same shard at once: the first takes an
exclusive ``flock`` on ``<sha256>.lock``, fetches, checks the sha256 and publishes the file with
``atomic_path``; the others wait on the lock and then read the file. A shard is therefore
fetched once per node while the set fits ``cache_limit`` (bytes; least recently used files are
removed beyond it, never the one just written), and the bytes each reader fetched are counted
for the epoch log.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager, suppress
from pathlib import Path

from sio.core.files import atomic_path
from sio.shardset import ShardError


def default_cache() -> Path:
    """``$SIO_CACHE_DIR``, else ``~/.cache/sio/shards``: where ``cache_dir: null`` caches."""
    return Path(os.environ.get("SIO_CACHE_DIR") or Path.home() / ".cache" / "sio" / "shards")


@contextmanager
def _locked(path: Path):
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ShardCache:
    def __init__(self, folder: str | Path, limit: int | None = None):
        self.folder = Path(folder)
        self.limit = limit
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.tar"

    def get(self, url: str, sha256: str, fetch) -> tuple[bytes, int]:
        """(the shard's bytes, bytes fetched for it now: 0 when it was cached)."""
        path = self.path(sha256)
        data = self._cached(path, sha256)
        if data is not None:
            return data, 0
        with _locked(self.folder / f"{sha256}.lock"):
            data = self._cached(path, sha256)
            if data is not None:
                return data, 0
            data = fetch(url)
            if sha256 and sha256_bytes(data) != sha256:
                raise ShardError(
                    f"{url}: its sha256 {sha256_bytes(data)} differs from the manifest's "
                    f"{sha256} (replaced or corrupt)"
                )
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        self._evict(keep=path)
        return data, len(data)

    def _cached(self, path: Path, sha256: str) -> bytes | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if sha256 and sha256_bytes(data) != sha256:  # a damaged cache file: fetch again
            path.unlink(missing_ok=True)
            return None
        # least recently used goes first; evicted by another reader meanwhile: the bytes are here
        with suppress(FileNotFoundError):
            os.utime(path)
        return data

    def _evict(self, keep: Path) -> None:
        if self.limit is None:
            return
        with _locked(self.folder / ".evict.lock"):
            files = []
            for path in self.folder.glob("*.tar"):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                files.append((stat.st_mtime, stat.st_size, path))
            total = sum(size for _, size, _ in files)
            for _, size, path in sorted(files):
                if total <= self.limit:
                    break
                if path != keep:
                    path.unlink(missing_ok=True)
                    total -= size
