"""``sio shards subset``: the first N samples of a local shard set as a shard set of its own.

N must fall on a shard boundary: the subset's shards are the source's first shards, unchanged
(hard links where the file system allows, else copies), so a generated set's first shards are
exactly what generating N images with the same seed and shard size would have written. The
manifest is recomputed from the linked shards (class counts, pixel statistics, checksums
verified while reading) and its provenance records the source manifest's sha256.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np

from sio.core.files import atomic_path, sha256_file, write_json_atomic
from sio.core.storage import is_url
from sio.shardset.format import MANIFEST, Manifest, ShardError, shard_path
from sio.shardset.read import read_manifest, shard_chunks
from sio.shardset.write import (
    ShardStats,
    histogram_stats,
    manifest_from_stats,
    pixel_histograms,
)


def prefix_shards(manifest: Manifest, num: int, where: str) -> int:
    """How many leading shards hold exactly ``num`` samples; an error lists the valid sizes."""
    total = 0
    for count, shard in enumerate(manifest.shards, start=1):
        total += shard.num_samples
        if total == num:
            return count
        if total > num:
            break
    sizes = np.cumsum([s.num_samples for s in manifest.shards]).tolist()
    shown = ", ".join(str(s) for s in sizes[:8]) + (", ..." if len(sizes) > 8 else "")
    raise ShardError(
        f"{where}: {num} samples is not a shard boundary of this set of "
        f"{manifest.num_samples}; subsets can hold {shown}"
    )


def _link(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or links not allowed: copy
            shutil.copyfile(source, tmp)


def _shard_stats(path: Path, shard, manifest: Manifest) -> ShardStats:
    """The stats of a linked shard, its size and sha256 checked before it is parsed."""
    counts = np.zeros(len(manifest.class_names), dtype=np.int64)
    histograms = np.zeros((manifest.channels, 256), dtype=np.int64)
    chunks = shard_chunks(str(path), manifest.encoding, manifest.channels, shard.num_samples, shard)
    for chunk in chunks:
        counts += np.bincount(chunk.labels, minlength=len(counts))[: len(counts)]
        histograms += pixel_histograms(chunk.images)
    return ShardStats(shard, tuple(int(c) for c in counts), *histogram_stats(histograms))


def subset_shard_set(source: str | Path, num: int, destination: str | Path) -> Manifest:
    """Write the shard set of ``source``'s first ``num`` samples to ``destination``."""
    for where in (source, destination):
        if is_url(str(where)):
            raise ShardError(f"{where}: subsets are made from and into local folders")
    source, destination = Path(source), Path(destination)
    if destination.resolve() == source.resolve():
        raise ShardError(f"{destination}: the subset must go to another folder than its source")
    manifest = read_manifest(source)
    keep = prefix_shards(manifest, num, str(source))
    destination.mkdir(parents=True, exist_ok=True)
    (destination / MANIFEST).unlink(missing_ok=True)  # the manifest comes last
    stats = []
    for shard in manifest.shards[:keep]:
        target = shard_path(destination, shard.name)
        _link(shard_path(source, shard.name), target)
        stats.append(_shard_stats(target, shard, manifest))
    fields = {f.name: getattr(manifest, f.name) for f in dataclasses.fields(Manifest)}
    for derived in ("class_counts", "pixel_mean", "pixel_std", "shards"):
        del fields[derived]
    provenance = dict(manifest.provenance)
    source_quality = provenance.pop("quality", None)  # measured on the whole source set
    fields["provenance"] = {
        **provenance,
        "subset_of": {
            "manifest_sha256": sha256_file(source / MANIFEST),
            "num_samples": manifest.num_samples,
            **({"quality": source_quality} if source_quality else {}),
        },
    }
    subset = manifest_from_stats(stats, **fields)
    write_json_atomic(destination / MANIFEST, subset.to_json())
    return subset
