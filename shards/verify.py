"""``sio shards verify``: every shard present, with the manifest's size, sha256 and sample count."""

from __future__ import annotations

import tarfile
from pathlib import Path

from sio.files import sha256_file

from .format import ShardError
from .read import read_manifest

MEMBERS = {"png", "cls", "json"}


def _count_samples(path: Path) -> int:
    """Samples in one tar, checking that each sample's members are contiguous and complete."""
    keys: list[str] = []
    members: dict[str, set[str]] = {}
    try:
        with tarfile.open(path) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if not keys or keys[-1] != key:
                    if key in members:
                        raise ShardError(f"{path}: members of sample {key} are not contiguous")
                    keys.append(key)
                    members[key] = set()
                members[key].add(ext)
    except tarfile.TarError as err:
        raise ShardError(f"{path}: not a readable tar: {err}") from None
    for key in keys:
        if members[key] != MEMBERS:
            raise ShardError(
                f"{path}: sample {key} has members {sorted(members[key])}, "
                f"expected {sorted(MEMBERS)}"
            )
    return len(keys)


def verify_shard_set(shard_set: str | Path) -> int:
    """Check every shard against the manifest; returns the sample count or raises ShardError."""
    shard_set = Path(shard_set)
    manifest = read_manifest(shard_set)
    if sum(manifest.class_counts) != manifest.num_samples:
        raise ShardError(
            f"{shard_set}/manifest.json: class counts add up to "
            f"{sum(manifest.class_counts)}, shards to {manifest.num_samples}"
        )
    for shard in manifest.shards:
        path = shard_set / shard.name
        if not path.is_file():
            raise ShardError(f"{path}: missing (listed in the manifest)")
        size = path.stat().st_size
        if size != shard.bytes:
            raise ShardError(f"{path}: {size} bytes, the manifest says {shard.bytes}")
        digest = sha256_file(path)
        if digest != shard.sha256:
            raise ShardError(
                f"{path}: sha256 {digest[:12]}…, the manifest says {shard.sha256[:12]}…"
            )
        count = _count_samples(path)
        if count != shard.num_samples:
            raise ShardError(f"{path}: {count} samples, the manifest says {shard.num_samples}")
    return manifest.num_samples
