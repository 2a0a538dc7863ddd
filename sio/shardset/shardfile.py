"""One shard at a time: for producers that write shards independently (resumable, parallel).

``ShardFileWriter`` writes one ``<name>.tar`` (under ``.tar.tmp`` until ``close``) and returns
its ``ShardStats``: the manifest's line for the shard plus the class counts and pixel sums that
``manifest_from_stats`` adds up into a shard set's manifest, whatever order and process the
shards were written in.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sio.shardset.format import Manifest, ShardInfo, _check_key
from sio.shardset.tarwrite import TarShard


@dataclass(frozen=True)
class ShardStats:
    shard: ShardInfo
    class_counts: tuple[int, ...]
    pixel_sum: tuple[float, ...]
    pixel_sq_sum: tuple[float, ...]
    num_pixels: int  # per channel

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ShardStats:
        return cls(
            **{
                **data,
                "shard": ShardInfo(**data["shard"]),
                **{k: tuple(data[k]) for k in ("class_counts", "pixel_sum", "pixel_sq_sum")},
            }
        )


def pixel_histograms(images: np.ndarray) -> np.ndarray:
    """C x 256 counts of each uint8 value per channel of NxCxHxW images (exact, and cheaper
    than a float copy of the images)."""
    return np.stack(
        [np.bincount(images[:, c].ravel(), minlength=256) for c in range(images.shape[1])]
    ).astype(np.int64)


def histogram_stats(histograms: np.ndarray) -> tuple[tuple, tuple, int]:
    """(sum of x, sum of x², pixels per channel) with x = v / 255, from summed histograms: the
    same floats however the pixels were batched."""
    values = np.arange(256) / 255.0
    sums, sq_sums = histograms @ values, histograms @ (values * values)
    return tuple(float(v) for v in sums), tuple(float(v) for v in sq_sums), int(histograms[0].sum())


class ShardFileWriter:
    """Writes one shard; samples arrive as already-encoded PNG bytes plus label and provenance."""

    def __init__(self, path: str | Path, num_classes: int, channels: int):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._tar = TarShard(self.tmp)
        self.class_counts = np.zeros(num_classes, dtype=np.int64)
        self.histograms = np.zeros((channels, 256), dtype=np.int64)
        self.count = 0

    def write(self, key: str, png: bytes, label: int, meta: dict) -> None:
        if not 0 <= label < len(self.class_counts):
            raise ValueError(f"sample {key}: label {label} outside 0..{len(self.class_counts) - 1}")
        members = {
            "png": png,
            "cls": str(label).encode(),
            "json": json.dumps(meta, sort_keys=True).encode(),
        }
        self._tar.add(_check_key(key), members)
        self.class_counts[label] += 1
        self.count += 1

    def write_record(self, key: str, members: dict[str, bytes], labels) -> None:
        """One batched record (``records.encode_record``'s members) holding ``labels``."""
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and not (labels.min() >= 0 and labels.max() < len(self.class_counts)):
            raise ValueError(f"record {key}: labels outside 0..{len(self.class_counts) - 1}")
        self._tar.add(_check_key(key), members)
        self.class_counts += np.bincount(labels, minlength=len(self.class_counts))
        self.count += len(labels)

    def add_pixels(self, images: np.ndarray) -> None:
        """Account for a batch of uint8 NxCxHxW images in the shard's pixel statistics."""
        self.histograms += pixel_histograms(images)

    def abort(self) -> None:
        """Give up this shard: close the file and remove it (a rerun writes it again)."""
        self._tar.abort()

    def close(self) -> ShardStats:
        size, sha256 = self._tar.close()
        os.replace(self.tmp, self.path)
        info = ShardInfo(self.path.name, self.count, size, sha256)
        return ShardStats(
            info, tuple(int(c) for c in self.class_counts), *histogram_stats(self.histograms)
        )


def manifest_from_stats(stats: list[ShardStats], **fields) -> Manifest:
    """A manifest from per-shard stats (in shard order); ``fields`` are the set's own
    (kind, name, image_size, channels, class_names, provenance)."""
    counts = np.sum([s.class_counts for s in stats], axis=0)
    n_pixels = max(1, sum(s.num_pixels for s in stats))
    mean = np.sum([s.pixel_sum for s in stats], axis=0) / n_pixels
    mean_sq = np.sum([s.pixel_sq_sum for s in stats], axis=0) / n_pixels
    std = np.sqrt(np.maximum(mean_sq - mean**2, 0.0))
    return Manifest(
        **fields,
        class_counts=tuple(int(c) for c in counts),
        pixel_mean=tuple(float(m) for m in mean),
        pixel_std=tuple(float(s) for s in std),
        shards=tuple(s.shard for s in stats),
    )
