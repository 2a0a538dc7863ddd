"""``sio shards verify``: every shard present, with the manifest's size, sha256 and sample count.

Each shard is read once, whole, by the reader the stages use (``tario``): its size and sha256 are
checked against the manifest before a byte of it is parsed, then its members are read from
memory. Samples must be contiguous and have exactly the members of the set's encoding; records
are counted by their labels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from sio.core.storage import is_url
from sio.shardset.format import ENCODINGS, ShardError, ShardInfo
from sio.shardset.read import read_manifest, shard_urls
from sio.shardset.records import LABELS
from sio.shardset.tario import read_checked, shown, split_member, tar_members


def _images_in(data: bytes, ext: str, encoding: str, where: str) -> int:
    if encoding != "records":
        return 1 if ext == "png" else 0
    if ext != LABELS:
        return 0
    try:
        return len(np.load(io.BytesIO(data), allow_pickle=False))
    except Exception as err:  # noqa: BLE001 - any decoding failure is named with its member
        raise ShardError(f"{where}: member {LABELS}: cannot decode: {err}") from None


def _count_samples(data: bytes, url: str, encoding: str) -> int:
    """Images in one tar, checking that each sample's members are contiguous and complete."""
    keys: list[str] = []
    members: dict[str, set[str]] = {}
    count = 0
    try:
        for name, content in tar_members(io.BytesIO(data), url, len(data)):
            key, ext = split_member(name)
            if not keys or keys[-1] != key:
                if key in members:
                    raise ShardError(f"{url}: members of sample {shown(key)} are not contiguous")
                keys.append(key)
                members[key] = set()
            members[key].add(ext)
            count += _images_in(content, ext, encoding, f"{url}: sample {shown(key)}")
    except ValueError as err:
        raise ShardError(f"{url}: not a readable tar: {err}") from None
    expected = ENCODINGS[encoding]
    for key in keys:
        if members[key] != expected:
            raise ShardError(
                f"{url}: sample {shown(key)} has members {_names(members[key])}, "
                f"expected {sorted(expected)}"
            )
    return count


def _names(names: set[str]) -> str:
    return "[" + ", ".join(shown(n) for n in sorted(names)[:8]) + "]"


def _verify_shard(url: str, shard: ShardInfo, encoding: str) -> None:
    if not is_url(url) and not Path(url).is_file():
        raise ShardError(f"{url}: missing (listed in the manifest)")
    if shard.sha256 is None or shard.bytes is None:
        raise ShardError(
            f"{url}: the manifest lists no size and sha256 to verify against (a set served on "
            "demand; verify the folder it is generated into)"
        )
    data = read_checked(url, shard.bytes, shard.sha256)
    count = _count_samples(data, url, encoding)
    if count != shard.num_samples:
        raise ShardError(f"{url}: {count} samples, the manifest says {shard.num_samples}")


def verify_shard_set(shard_set: str | Path) -> int:
    """Check every shard against the manifest; returns the sample count or raises ShardError."""
    manifest = read_manifest(shard_set)
    if manifest.class_counts and sum(manifest.class_counts) != manifest.num_samples:
        raise ShardError(
            f"{shard_set}/manifest.json: class counts add up to "
            f"{sum(manifest.class_counts)}, shards to {manifest.num_samples}"
        )
    for url, shard in zip(shard_urls(shard_set, manifest), manifest.shards, strict=True):
        _verify_shard(url, shard, manifest.encoding)
    return manifest.num_samples
