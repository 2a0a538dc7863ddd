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

import hashlib
import io
import json
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

import sio

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

    @property
    def content_sha256(self) -> str:
        """sha256 over the shard list (names, counts, sizes, checksums): which samples the set
        holds, whatever quality figures or provenance are later recorded in the manifest."""
        shards = json.dumps([vars(s) for s in self.shards], sort_keys=True)
        return hashlib.sha256(shards.encode()).hexdigest()

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
