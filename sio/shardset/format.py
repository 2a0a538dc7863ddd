"""The shard-set format: the contract between sio's stages.

A shard set is a folder of WebDataset tar shards plus ``manifest.json``. Each sample has three
members: ``<key>.png`` (the uint8 image), ``<key>.cls`` (the class id, an ASCII integer >= 0) and
``<key>.json`` (provenance: ``source`` real|synthetic and whatever the producer adds). Keys have no
dots. A set in the ``records`` encoding (manifest field ``encoding``; see records.py) holds
batched records of many images per tar sample instead. Shards are written under ``*.tar.tmp``
and renamed when complete, with an integer ``mtime`` so that the same samples give
byte-identical shards. The manifest, written last and atomically,
lists every shard with its sample count, size and sha256.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

import sio
from sio.core.files import write_json_atomic
from sio.shardset.tarwrite import TarShard

FORMAT = "sio-shards/1"
MANIFEST = "manifest.json"
# the members of one tar sample in each encoding: per-sample PNG, or a record of many images
ENCODINGS = {
    "png": frozenset({"png", "cls", "json"}),
    "records": frozenset({"images.npy", "labels.npy", "meta.json"}),
}
_JSON = json.JSONEncoder(sort_keys=True)  # what json.dumps(meta, sort_keys=True) builds per call
STATS_BATCH_BYTES = 1 << 20  # images are summed for the pixel statistics a megabyte at a time
STATS_BATCH_MAX = 65_536


class ShardError(RuntimeError):
    """A shard set that is missing, incomplete or corrupt; the message names the shard."""


@dataclass(frozen=True)
class ShardInfo:
    name: str
    num_samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    kind: str  # "real" or "synthetic"
    name: str
    image_size: tuple[int, int]  # (height, width)
    channels: int
    class_names: tuple[str, ...]
    class_counts: tuple[int, ...]
    pixel_mean: tuple[float, ...]  # per channel, in [0, 1]
    pixel_std: tuple[float, ...]
    shards: tuple[ShardInfo, ...]
    provenance: dict = field(default_factory=dict)
    sio_version: str = sio.__version__
    encoding: str = "png"  # or "records"; absent from the JSON of png sets (their old form)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def to_json(self) -> dict:
        encoding = {} if self.encoding == "png" else {"encoding": self.encoding}
        return {
            "format": FORMAT,
            "kind": self.kind,
            "name": self.name,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "num_samples": self.num_samples,
            "class_names": list(self.class_names),
            "class_counts": list(self.class_counts),
            "pixel_mean": list(self.pixel_mean),
            "pixel_std": list(self.pixel_std),
            "shards": [vars(s) for s in self.shards],
            "provenance": self.provenance,
            "sio_version": self.sio_version,
            **encoding,
        }

    @classmethod
    def from_json(cls, data: dict, where: str) -> Manifest:
        if data.get("format") != FORMAT:
            raise ShardError(f"{where}: not an sio shard-set manifest (format {FORMAT!r})")
        encoding = data.get("encoding", "png")
        if encoding not in ENCODINGS:
            raise ShardError(f"{where}: unknown encoding {encoding!r}; known: {sorted(ENCODINGS)}")
        try:
            return cls(
                kind=data["kind"],
                name=data["name"],
                image_size=tuple(data["image_size"]),
                channels=int(data["channels"]),
                class_names=tuple(data["class_names"]),
                class_counts=tuple(data["class_counts"]),
                pixel_mean=tuple(data["pixel_mean"]),
                pixel_std=tuple(data["pixel_std"]),
                shards=tuple(ShardInfo(**s) for s in data["shards"]),
                provenance=data.get("provenance", {}),
                sio_version=data.get("sio_version", "unknown"),
                encoding=encoding,
            )
        except (KeyError, TypeError) as err:
            raise ShardError(f"{where}: malformed manifest: {err!r}") from None


def encode_png(image: np.ndarray) -> bytes:
    """uint8 HxW (grey) or HxWx3 (RGB) to PNG bytes; deterministic for the same pixels."""
    if image.dtype != np.uint8:
        raise ValueError(f"images are uint8, got {image.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _check_key(key: str) -> str:
    if not key or "." in key or "/" in key:
        raise ValueError(f"sample keys are non-empty and contain no dots or slashes, got {key!r}")
    return key


class ShardSetWriter:
    """Writes one shard set: ``write(key, image, label, meta)`` per sample, then ``close()``.

    ``image`` is uint8 HxW for grey or HxWx3 for RGB. Each shard is written as ``*.tar.tmp`` and
    renamed when complete; a failure inside ``with`` (or ``abort()``) deletes this writer's
    shards, and a crash leaves files that the next writer on the same folder removes.
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
    ):
        if kind not in ("real", "synthetic"):
            raise ValueError(f"kind is 'real' or 'synthetic', got {kind!r}")
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
        )
        height, width = self.meta["image_size"]
        self._shape = (height, width) if channels == 1 else (height, width, 3)
        self.class_counts = np.zeros(len(class_names), dtype=np.int64)
        # pixel statistics: images are copied into a batch and summed a batch at a time, into
        # exact integer sums of values and squares per channel
        rows = min(STATS_BATCH_MAX, max(1, STATS_BATCH_BYTES // int(np.prod(self._shape))))
        self._batch = np.empty((rows, *self._shape), np.uint8)
        self._in_batch = 0
        self._pixel_sum = np.zeros(channels, dtype=np.int64)
        self._pixel_sq_sum = np.zeros(channels, dtype=np.int64)
        self.shards: list[ShardInfo] = []
        self.shard_size = shard_size
        self._pattern = f"{prefix}-%06d.tar"
        self._tar: TarShard | None = None
        self._in_shard = 0

    def _next_shard(self) -> None:
        self._finish_shard()
        name = self._pattern % len(self.shards)
        self._tar = TarShard(self.out_dir / f"{name}.tmp")

    def _finish_shard(self) -> None:
        if self._tar is None:
            return
        size, digest = self._tar.close()
        final = self._tar.path.with_name(self._tar.path.name.removesuffix(".tmp"))
        os.replace(self._tar.path, final)
        self.shards.append(ShardInfo(final.name, self._in_shard, size, digest))
        self._tar, self._in_shard = None, 0

    def write(self, key: str, image: np.ndarray, label: int, meta: dict) -> None:
        if image.shape != self._shape:
            raise ValueError(f"sample {key}: image shape {image.shape}, expected {self._shape}")
        if not 0 <= label < len(self.class_counts):
            raise ValueError(f"sample {key}: label {label} outside 0..{len(self.class_counts) - 1}")
        members = {
            "cls": str(int(label)).encode(),
            "json": _JSON.encode(meta).encode(),
            "png": encode_png(image),
        }
        if self._tar is None or self._in_shard >= self.shard_size:
            self._next_shard()
        self._tar.add(_check_key(key), members)
        self._in_shard += 1
        self.class_counts[label] += 1
        self._batch[self._in_batch] = image
        self._in_batch += 1
        if self._in_batch == len(self._batch):
            self._add_batch()

    def _add_batch(self) -> None:
        # sum over the batch first (contiguous rows, fast), then over positions per channel;
        # uint32 holds a position's sum of squares for up to 66,051 images (> STATS_BATCH_MAX)
        batch, channels = self._batch[: self._in_batch], self.meta["channels"]
        sums = batch.sum(0, dtype=np.uint32).reshape(-1, channels)
        squares = np.square(batch, dtype=np.uint16).sum(0, dtype=np.uint32).reshape(-1, channels)
        self._pixel_sum += sums.sum(0, dtype=np.int64)
        self._pixel_sq_sum += squares.sum(0, dtype=np.int64)
        self._in_batch = 0

    def close(self, provenance: dict | None = None) -> Manifest:
        """Finish the last shard and write the manifest; ``provenance`` adds fields known only
        at the end (e.g. a quality figure)."""
        self._finish_shard()
        self._add_batch()
        self.meta["provenance"] = {**self.meta["provenance"], **(provenance or {})}
        sums, sq_sums = self._pixel_sum, self._pixel_sq_sum
        n_pixels = max(1, int(self.class_counts.sum())) * int(np.prod(self.meta["image_size"]))
        mean = sums / (n_pixels * 255.0)
        std = np.sqrt(np.maximum(sq_sums / (n_pixels * 255.0**2) - mean**2, 0.0))
        manifest = Manifest(
            **self.meta,
            class_counts=tuple(int(c) for c in self.class_counts),
            pixel_mean=tuple(float(m) for m in mean),
            pixel_std=tuple(float(s) for s in std),
            shards=tuple(self.shards),
        )
        write_json_atomic(self.out_dir / MANIFEST, manifest.to_json())
        return manifest

    def abort(self) -> None:
        """Give up after a failure: the shard being written and those this writer completed are
        deleted, and no manifest is written."""
        if self._tar is not None:
            self._tar.abort()
            self._tar = None
        for shard in self.shards:
            (self.out_dir / shard.name).unlink(missing_ok=True)
        self.shards = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()
