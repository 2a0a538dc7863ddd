"""``sio shards verify``: every shard present, with the manifest's size, sha256 and sample count.

Each shard is read once, whole, by the reader the stages use (``tario``): its size and sha256 are
checked against the manifest before a byte of it is parsed (``check_shard_bytes``), then its
members are read from memory and grouped into samples as every reader groups them
(``group_samples``). Samples must be contiguous and have exactly the members of the set's
encoding; records are counted by their labels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from sio.core.storage import is_url
from sio.shardset.format import ENCODINGS, ShardError, ShardInfo
from sio.shardset.read import read_manifest, shard_urls
from sio.shardset.records import LABELS
from sio.shardset.tario import bytes_samples, read_checked, shown


def _images_in(sample: dict, encoding: str, where: str) -> int:
    if encoding != "records":
        return 1 if "png" in sample else 0
    if LABELS not in sample:
        return 0
    try:
        return len(np.load(io.BytesIO(sample[LABELS]), allow_pickle=False))
    except Exception as err:  # noqa: BLE001 - any decoding failure is named with its member
        raise ShardError(f"{where}: member {LABELS}: cannot decode: {err}") from None


def _count_samples(data: bytes, url: str, encoding: str) -> int:
    """Images in one tar (grouped as every reader groups them), checking that each sample's
    members are contiguous and complete."""
    members: dict[str, set[str]] = {}
    count = 0
    for sample in bytes_samples(data, url):
        key = sample["__key__"]
        if key in members:
            raise ShardError(f"{url}: members of sample {shown(key)} are not contiguous")
        members[key] = set(sample) - {"__key__", "__url__"}
        count += _images_in(sample, encoding, f"{url}: sample {shown(key)}")
    expected = ENCODINGS[encoding]
    for key, names in members.items():
        if names != expected:
            raise ShardError(
                f"{url}: sample {shown(key)} has members {_names(names)}, "
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
