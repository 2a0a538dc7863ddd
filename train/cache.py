"""The node-local cache folder (``train.cache_dir``, ``train.cache_limit``): remote shard bytes
and decoded shards (rowcache.py), and the Fetcher that gets a shard's bytes.

A file of the cache is named by its shard's manifest sha256, validated here (64 lowercase hex
digits: a manifest's ``"../../x"`` never becomes a path) and checked to lie inside the folder,
so two sets sharing a shard share its file and a replaced shard is never served from the cache.
Every rank and DataLoader worker of a node may ask for the same shard at once: the first takes
an exclusive ``flock`` on ``<file>.lock``, makes the file and publishes it with ``atomic_path``;
the others wait on the lock and then read it. The lock holder first removes what a killed
writer of that file left (its temporaries). Beyond ``cache_limit`` bytes the least recently
used files (``*.tar`` and ``*.rows``) are removed, never the one just written.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

from sio.core.files import atomic_path, stale_temporaries
from sio.core.lock import exclusive
from sio.core.storage import TooLarge, fetch_bytes, is_url
from sio.shardset import ShardError, check_shard_bytes

SHA256 = re.compile(r"[0-9a-f]{64}")
CACHED = ("*.tar", "*.rows")
# the most bytes a remote shard is read to (a served set may list no size: an endless body
# stops here instead of filling a worker's memory)
MAX_SHARD_BYTES = 4 << 30


class CacheError(ShardError):
    """The cache folder cannot be used (one line naming the path and the setting)."""


def default_cache() -> Path:
    """``$SIO_CACHE_DIR``, else ``~/.cache/sio/shards``: where ``cache_dir: null`` caches."""
    return Path(os.environ.get("SIO_CACHE_DIR") or Path.home() / ".cache" / "sio" / "shards")


def cache_folder(cache_dir: str | Path | None) -> Path:
    """The cache folder, created and writable, or a CacheError naming it and the setting."""
    folder = Path(cache_dir) if cache_dir else default_cache()
    setting = "train.cache_dir" if cache_dir else "train.cache_dir (null: $SIO_CACHE_DIR or ~)"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as err:
        raise CacheError(
            f"{setting} {folder}: cannot create or write it ({err.strerror or err}); "
            "set train.cache_dir to a writable folder"
        ) from None
    return folder


def cache_file(folder: Path, sha256: str, suffix: str) -> Path:
    """``<folder>/<sha256><suffix>`` for a validated sha256, inside ``folder``."""
    if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
        raise ShardError(f"sha256 {str(sha256)[:80]!r}: not 64 lowercase hex digits")
    path = folder / f"{sha256}{suffix}"
    if path.resolve().parent != folder.resolve():
        raise ShardError(f"{path}: a cache file outside the cache folder {folder}")
    return path


@contextmanager
def locked(path: Path, wait: bool = True):
    """``sio.core.lock.exclusive`` on ``<path>.lock``, yielding True once held (``wait=False``:
    False at once if another process holds it); its holder removes ``path``'s stale
    temporaries."""
    with exclusive(path.with_name(path.name + ".lock"), wait) as held:
        if held:
            for stale in stale_temporaries(path.parent, f"{path.name}.*"):
                stale.unlink(missing_ok=True)
        yield held


def touch(path: Path) -> None:
    """Mark ``path`` used (least recently used goes first); evicted meanwhile: no matter."""
    with suppress(FileNotFoundError):
        os.utime(path)


def evict(folder: Path, limit: int | None, keep: Path) -> None:
    """Remove the least recently used cache files beyond ``limit`` bytes, never ``keep``."""
    if limit is None:
        return
    with exclusive(folder / ".evict.lock"):
        files = []
        for pattern in CACHED:
            for path in folder.glob(pattern):
                with suppress(FileNotFoundError):
                    stat = path.stat()
                    files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= limit:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size


_SAID: set[str] = set()


def say_once(message: str) -> None:
    """A one-line warning on stderr, once per process."""
    if message not in _SAID:
        _SAID.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


class ShardCache:
    """Remote shard bytes under ``<sha256>.tar``: fetched once per node while they fit."""

    def __init__(self, folder: str | Path, limit: int | None = None):
        self.folder = cache_folder(folder)
        self.limit = limit

    def path(self, sha256: str) -> Path:
        return cache_file(self.folder, sha256, ".tar")

    def get(self, url: str, sha256: str, fetch) -> tuple[bytes, int]:
        """(the shard's bytes, bytes fetched for it now: 0 when it was cached)."""
        path = self.path(sha256)
        data = self._cached(path, sha256)
        if data is not None:
            return data, 0
        with locked(path):
            data = self._cached(path, sha256)
            if data is not None:
                return data, 0
            data = fetch(url)
            check_shard_bytes(url, data, sha256)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        evict(self.folder, self.limit, keep=path)
        return data, len(data)

    @staticmethod
    def _cached(path: Path, sha256: str) -> bytes | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            check_shard_bytes(str(path), data, sha256)
        except ShardError:  # a damaged cache file: fetch again
            path.unlink(missing_ok=True)
            return None
        touch(path)
        return data


class Fetcher:
    """A process's way to a shard's bytes: the local file, or the node cache / the network;
    ``fetched`` counts the bytes it took from the network."""

    def __init__(
        self,
        cache_dir: str | None,
        cache_limit: int | None,
        read_timeout: float,
        fetch_deadline: float | None = None,
    ):
        self.cache_dir, self.cache_limit = cache_dir, cache_limit
        self.read_timeout, self.fetch_deadline = read_timeout, fetch_deadline
        self.fetched = 0
        self._cache = None

    def read(self, url: str, sha256: str) -> bytes:
        return self.read_checked(url, sha256)[0]

    def read_checked(self, url: str, sha256: str) -> tuple[bytes, bool]:
        """(the shard's bytes, whether they were checked against ``sha256`` on the way: a
        remote shard is, before the node cache keeps it; a local file is not)."""
        if not is_url(url):
            try:
                return Path(url).read_bytes(), False
            except FileNotFoundError:
                raise ShardError(f"{url}: shard listed in the manifest is missing") from None
        if sha256:
            if self._cache is None:
                self._cache = ShardCache(self.cache_dir or default_cache(), self.cache_limit)
            data, fetched = self._cache.get(url, sha256, self._fetch)
            self.fetched += fetched
            return data, True
        data = self._fetch(url)
        self.fetched += len(data)
        return data, False

    def _fetch(self, url: str) -> bytes:
        try:
            return fetch_bytes(
                url, self.read_timeout, limit=MAX_SHARD_BYTES, deadline_s=self.fetch_deadline
            )
        except FileNotFoundError as err:
            raise ShardError(f"{url}: shard listed in the manifest is missing ({err})") from None
        except TooLarge as err:
            raise ShardError(f"{err}; a shard is read whole and may not be larger") from None
