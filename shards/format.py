"""The shard-set format: the contract between sio's stages.

A shard set is a folder of WebDataset tar shards plus ``manifest.json``. Each sample has three
members: ``<key>.png`` (the uint8 image), ``<key>.cls`` (the class id, an ASCII integer >= 0) and
``<key>.json`` (provenance: ``source`` real|synthetic and whatever the producer adds). Keys have no
dots. Shards are written under ``*.tar.tmp`` and renamed when complete, with an integer ``mtime``
so that the same samples give byte-identical shards. The manifest, written last and atomically,
lists every shard with its sample count, size and sha256.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

import sio
from sio.files import sha256_file, write_json_atomic

FORMAT = "sio-shards/1"
MANIFEST = "manifest.json"


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

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def to_json(self) -> dict:
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
        }

    @classmethod
    def from_json(cls, data: dict, where: str) -> Manifest:
        if data.get("format") != FORMAT:
            raise ShardError(f"{where}: not an sio shard-set manifest (format {FORMAT!r})")
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

    ``image`` is uint8 HxW for grey or HxWx3 for RGB. A crash leaves only ``*.tmp`` files, which
    the next writer on the same folder removes.
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
        for stale in self.out_dir.glob("*.tmp"):
            stale.unlink()
        self.meta = dict(
            kind=kind,
            name=name,
            image_size=tuple(image_size),
            channels=channels,
            class_names=tuple(class_names),
            provenance=provenance or {},
        )
        self.class_counts = np.zeros(len(class_names), dtype=np.int64)
        self.pixel_sum = np.zeros(channels)
        self.pixel_sq_sum = np.zeros(channels)
        self.shards: list[ShardInfo] = []
        self._in_shard = 0
        self._writer = wds.ShardWriter(
            str(self.out_dir / f"{prefix}-%06d.tar.tmp"),
            maxcount=shard_size,
            maxsize=1e12,
            post=self._finish_shard,
            verbose=0,
            encoder=False,
            mtime=0,
        )

    def _finish_shard(self, tmp_name: str) -> None:
        tmp = Path(tmp_name)
        if self._in_shard == 0:
            tmp.unlink()
            return
        final = tmp.with_name(tmp.name.removesuffix(".tmp"))
        os.replace(tmp, final)
        self.shards.append(
            ShardInfo(final.name, self._in_shard, final.stat().st_size, sha256_file(final))
        )
        self._in_shard = 0

    def write(self, key: str, image: np.ndarray, label: int, meta: dict) -> None:
        height, width = self.meta["image_size"]
        expected = (height, width) if self.meta["channels"] == 1 else (height, width, 3)
        if image.shape != expected:
            raise ValueError(f"sample {key}: image shape {image.shape}, expected {expected}")
        if not 0 <= label < len(self.class_counts):
            raise ValueError(f"sample {key}: label {label} outside 0..{len(self.class_counts) - 1}")
        self._writer.write(
            {
                "__key__": _check_key(key),
                "png": encode_png(image),
                "cls": str(int(label)).encode(),
                "json": json.dumps(meta, sort_keys=True).encode(),
            }
        )
        self._in_shard += 1
        self.class_counts[label] += 1
        pixels = image.reshape(-1, self.meta["channels"]).astype(np.float64) / 255.0
        self.pixel_sum += pixels.sum(0)
        self.pixel_sq_sum += (pixels**2).sum(0)

    def close(self, provenance: dict | None = None) -> Manifest:
        """Finish the last shard and write the manifest; ``provenance`` adds fields known only
        at the end (e.g. a quality figure)."""
        self._writer.close()
        self.meta["provenance"] = {**self.meta["provenance"], **(provenance or {})}
        n_pixels = max(1, int(self.class_counts.sum())) * int(np.prod(self.meta["image_size"]))
        mean = self.pixel_sum / n_pixels
        std = np.sqrt(np.maximum(self.pixel_sq_sum / n_pixels - mean**2, 0.0))
        manifest = Manifest(
            **self.meta,
            class_counts=tuple(int(c) for c in self.class_counts),
            pixel_mean=tuple(float(m) for m in mean),
            pixel_std=tuple(float(s) for s in std),
            shards=tuple(self.shards),
        )
        write_json_atomic(self.out_dir / MANIFEST, manifest.to_json())
        return manifest

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
