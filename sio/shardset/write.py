"""The one shard writer, and the one way pixel statistics are computed.

``ShardFileWriter`` writes one ``<name>.tar`` (under ``.tar.tmp`` until ``close``; what the file
system refuses, a full disk say, is an ``OSError`` naming ``<name>.tar``) and returns its
``ShardStats``: the manifest's line for the shard plus the class counts and per-channel
pixel histograms that ``manifest_from_stats`` adds up into a shard set's manifest, whatever
order and process the shards were written in (generation jobs write shards independently).
``ShardSetWriter`` writes a whole set sample by sample (sharding real datasets) with the same
two parts. Both write either encoding: a PNG per sample (``write``), or records of many raw
images (``write_record``: the one records writer, used by generation, ``sio shards convert``
and the benchmarks; ``ShardSetWriter(encoding="records")`` packs its samples ``record_size`` at
a time).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sio.core.files import naming, write_json_atomic
from sio.shardset.format import (
    ENCODINGS,
    MANIFEST,
    STATS_BATCH_BYTES,
    STATS_BATCH_MAX,
    Manifest,
    ShardError,
    ShardInfo,
    _check_key,
    encode_png,
    shard_name,
)
from sio.shardset.records import RECORD_SIZE, encode_record, record_key
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
        shard_name(self.path.name)  # what its manifest line will say
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        with naming(self.path):
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
        with naming(self.path):
            self._tar.add(_check_key(key), members)
        self.class_counts[label] += 1
        self.count += 1

    def write_record(self, key: str, images: np.ndarray, labels, keys, provenance) -> None:
        """One record ``key`` of uint8 NxCxHxW ``images`` with their labels, sample keys and
        provenance dicts (``records.encode_record``), counted in the shard's statistics."""
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and not (labels.min() >= 0 and labels.max() < len(self.class_counts)):
            raise ValueError(f"record {key}: labels outside 0..{len(self.class_counts) - 1}")
        members = encode_record(images, labels, keys, provenance)
        with naming(self.path):
            self._tar.add(_check_key(key), members)
        self.class_counts += np.bincount(labels, minlength=len(self.class_counts))
        self.count += len(labels)
        self.add_pixels(images)

    def add_pixels(self, images: np.ndarray) -> None:
        """Account for a batch of uint8 NxCxHxW images in the shard's pixel statistics."""
        self.histograms += pixel_histograms(images)

    def abort(self) -> None:
        """Give up this shard: close the file and remove it (a rerun writes it again)."""
        self._tar.abort()

    def close(self) -> ShardStats:
        """Finish the shard under its final name; if that fails (a full disk as the last bytes
        are flushed), the temporary is removed."""
        try:
            with naming(self.path):
                size, sha256 = self._tar.close()
                os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        info = ShardInfo(self.path.name, self.count, size, sha256)
        return ShardStats(
            info, tuple(int(c) for c in self.class_counts), *histogram_stats(self.histograms)
        )


def manifest_from_stats(stats: list[ShardStats], **fields) -> Manifest:
    """A manifest from per-shard stats (in shard order); ``fields`` are the set's own
    (kind, name, image_size, channels, class_names, provenance)."""
    classes, channels = len(fields["class_names"]), fields["channels"]
    counts = np.sum([s.class_counts for s in stats], axis=0) if stats else np.zeros(classes)
    n_pixels = max(1, sum(s.num_pixels for s in stats))
    mean = sum((np.asarray(s.pixel_sum) for s in stats), np.zeros(channels)) / n_pixels
    mean_sq = sum((np.asarray(s.pixel_sq_sum) for s in stats), np.zeros(channels)) / n_pixels
    std = np.sqrt(np.maximum(mean_sq - mean**2, 0.0))
    return Manifest(
        **fields,
        class_counts=tuple(int(c) for c in counts),
        pixel_mean=tuple(float(m) for m in mean),
        pixel_std=tuple(float(s) for s in std),
        shards=tuple(s.shard for s in stats),
    )


class ShardSetWriter:
    """Writes one shard set: ``write(key, image, label, meta)`` per sample, then ``close()``.

    ``image`` is uint8 HxW for grey or HxWx3 for RGB. With ``encoding="records"`` the samples of
    a shard are written ``record_size`` at a time as records ``rec-000000``, ``rec-000001``, ...
    Each shard is written as ``*.tar.tmp`` and renamed when complete; a failure inside ``with``
    (or ``abort()``) deletes this writer's shards, and a crash leaves files that the next writer
    on the same folder removes.
    """

    def __init__(
        self,
        out_dir,
        *,
        kind,
        name,
        image_size,
        channels,
        class_names,
        shard_size,
        provenance=None,
        prefix="shard",
        encoding="png",
        record_size=RECORD_SIZE,
    ):
        if kind not in ("real", "synthetic"):
            raise ValueError(f"kind is 'real' or 'synthetic', got {kind!r}")
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding is one of {sorted(ENCODINGS)}, got {encoding!r}")
        if record_size < 1:
            raise ValueError(f"record size must be >= 1, got {record_size}")
        self._pattern = f"{prefix}-%06d.tar"
        shard_name(self._pattern % 0, "the shard prefix's names")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if (self.out_dir / MANIFEST).exists():
            raise ShardError(f"{self.out_dir}: a complete shard set is already there")
        for stale in [*self.out_dir.glob("*.tmp"), *self.out_dir.glob(f"{prefix}-*.tar")]:
            stale.unlink()
        self.meta = dict(
            kind=kind,
            name=name,
            image_size=tuple(image_size),
            channels=channels,
            class_names=tuple(class_names),
            provenance=provenance or {},
            encoding=encoding,
        )
        self._record = Record(record_size) if encoding == "records" else None
        height, width = self.meta["image_size"]
        self._shape = (height, width) if channels == 1 else (height, width, 3)
        self._channels = channels
        self.num_classes = len(class_names)
        # pixel statistics: images are copied into a batch, a batch's histograms at a time
        rows = min(STATS_BATCH_MAX, max(1, STATS_BATCH_BYTES // int(np.prod(self._shape))))
        self._batch = np.empty((rows, *self._shape), np.uint8)
        self._in_batch = 0
        self.stats: list[ShardStats] = []
        self.shard_size = shard_size
        self._shard: ShardFileWriter | None = None

    def _finish_shard(self) -> None:
        if self._shard is None:
            return
        if self._record is not None:
            self._record.flush(self._shard)
        self._add_batch()
        self.stats.append(self._shard.close())
        self._shard = None

    def write(self, key: str, image: np.ndarray, label: int, meta: dict) -> None:
        if image.shape != self._shape:
            raise ValueError(f"sample {key}: image shape {image.shape}, expected {self._shape}")
        held = len(self._record.images) if self._record is not None else 0
        if self._shard is not None and self._shard.count + held >= self.shard_size:
            self._finish_shard()
        if self._shard is None:
            name = self._pattern % len(self.stats)
            self._shard = ShardFileWriter(self.out_dir / name, self.num_classes, self._channels)
        if self._record is not None:  # its pixels are counted as the record is written
            self._record.add(self._shard, key, image, int(label), meta)
            return
        self._shard.write(key, encode_png(image), int(label), meta)
        self._batch[self._in_batch] = image
        self._in_batch += 1
        if self._in_batch == len(self._batch):
            self._add_batch()

    def _add_batch(self) -> None:
        batch = self._batch[: self._in_batch]
        self._shard.add_pixels(batch[:, None] if batch.ndim == 3 else batch.transpose(0, 3, 1, 2))
        self._in_batch = 0

    @property
    def shards(self) -> list[ShardInfo]:
        return [s.shard for s in self.stats]

    @property
    def class_counts(self) -> np.ndarray:
        counts = [s.class_counts for s in self.stats]
        if self._shard is not None:
            counts.append(tuple(self._shard.class_counts))
        return np.sum(counts, axis=0) if counts else np.zeros(self.num_classes, np.int64)

    def close(self, provenance: dict | None = None) -> Manifest:
        """Finish the last shard and write the manifest; ``provenance`` adds fields known only
        at the end (e.g. a quality figure)."""
        self._finish_shard()
        self.meta["provenance"] = {**self.meta["provenance"], **(provenance or {})}
        manifest = manifest_from_stats(self.stats, **self.meta)
        write_json_atomic(self.out_dir / MANIFEST, manifest.to_json())
        return manifest

    def abort(self) -> None:
        """Give up after a failure: the shard being written and those this writer completed are
        deleted, and no manifest is written."""
        if self._shard is not None:
            self._shard.abort()
            self._shard = None
        if self._record is not None:
            self._record.clear()
        for shard in self.shards:
            (self.out_dir / shard.name).unlink(missing_ok=True)
        self.stats = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Record:
    """The samples of a shard waiting to be written as one record (``ShardSetWriter`` with
    ``encoding="records"``): written when ``size`` are held and when the shard ends."""

    def __init__(self, size: int):
        self.size = size
        self.written = 0  # records of the current shard
        self.clear()

    def clear(self) -> None:
        self.images, self.labels, self.keys, self.metas = [], [], [], []

    def add(self, shard: ShardFileWriter, key: str, image: np.ndarray, label: int, meta) -> None:
        """Hold one HxW or HxWxC sample; write the record once it is full."""
        self.images.append(image[None] if image.ndim == 2 else image.transpose(2, 0, 1))
        self.labels.append(label)
        self.keys.append(key)
        self.metas.append(meta)
        if len(self.images) == self.size:
            self.flush(shard, end=False)

    def flush(self, shard: ShardFileWriter, end: bool = True) -> None:
        """Write what is held as one record; ``end``: the shard ends (its numbering restarts)."""
        if self.images:
            images = np.ascontiguousarray(np.stack(self.images))
            shard.write_record(record_key(self.written), images, self.labels, self.keys, self.metas)
            self.written += 1
            self.clear()
        if end:
            self.written = 0
