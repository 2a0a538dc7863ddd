"""``sio shards verify``: every shard present, with the manifest's size, sha256 and sample count.

Each shard is read once, as a stream (from a folder or a URL): its bytes are hashed while the tar
is parsed, so a remote set is verified without a local copy. Samples must be contiguous and have
exactly the members of the set's encoding; records are counted by their labels.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np

from sio.core.storage import is_url
from sio.shardset.format import ENCODINGS, ShardError, ShardInfo
from sio.shardset.read import read_manifest, shard_urls
from sio.shardset.records import LABELS
from sio.shardset.tario import open_shard, split_member


class _Hashing:
    """A read-only stream that hashes and counts every byte read through it."""

    def __init__(self, stream):
        self.stream, self.digest, self.size = stream, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _images_in(tar: tarfile.TarFile, info: tarfile.TarInfo, ext: str, encoding: str) -> int:
    if encoding != "records":
        return 1 if ext == "png" else 0
    if ext != LABELS:
        return 0
    return len(np.load(io.BytesIO(tar.extractfile(info).read()), allow_pickle=False))


def _count_samples(stream, url: str, encoding: str) -> int:
    """Images in one tar, checking that each sample's members are contiguous and complete."""
    keys: list[str] = []
    members: dict[str, set[str]] = {}
    count = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                key, ext = split_member(info.name)
                if not keys or keys[-1] != key:
                    if key in members:
                        raise ShardError(f"{url}: members of sample {key} are not contiguous")
                    keys.append(key)
                    members[key] = set()
                members[key].add(ext)
                count += _images_in(tar, info, ext, encoding)
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise ShardError(f"{url}: not a readable tar: {err}") from None
    expected = ENCODINGS[encoding]
    for key in keys:
        if members[key] != expected:
            raise ShardError(
                f"{url}: sample {key} has members {sorted(members[key])}, "
                f"expected {sorted(expected)}"
            )
    return count


def _verify_shard(url: str, shard: ShardInfo, encoding: str) -> None:
    if not is_url(url):
        if not Path(url).is_file():
            raise ShardError(f"{url}: missing (listed in the manifest)")
        size = Path(url).stat().st_size
        if size != shard.bytes:
            raise ShardError(f"{url}: {size} bytes, the manifest says {shard.bytes}")
    with open_shard(url) as raw:
        stream = _Hashing(raw)
        count, problem = 0, None
        try:
            count = _count_samples(stream, url, encoding)
        except ShardError as err:  # reported after the checksum, which says more
            problem = err
        stream.drain()
    if stream.size != shard.bytes:
        raise ShardError(f"{url}: {stream.size} bytes, the manifest says {shard.bytes}")
    digest = stream.digest.hexdigest()
    if digest != shard.sha256:
        raise ShardError(f"{url}: sha256 {digest[:12]}…, the manifest says {shard.sha256[:12]}…")
    if problem is not None:
        raise problem
    if count != shard.num_samples:
        raise ShardError(f"{url}: {count} samples, the manifest says {shard.num_samples}")


def verify_shard_set(shard_set: str | Path) -> int:
    """Check every shard against the manifest; returns the sample count or raises ShardError."""
    manifest = read_manifest(shard_set)
    if sum(manifest.class_counts) != manifest.num_samples:
        raise ShardError(
            f"{shard_set}/manifest.json: class counts add up to "
            f"{sum(manifest.class_counts)}, shards to {manifest.num_samples}"
        )
    for url, shard in zip(shard_urls(shard_set, manifest), manifest.shards, strict=True):
        _verify_shard(url, shard, manifest.encoding)
    return manifest.num_samples
