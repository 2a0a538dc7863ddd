"""The shard-set format: the contract between sio's stages.

A shard set is a folder of WebDataset tar shards plus ``manifest.json``. Each sample has three
members: ``<key>.png`` (the uint8 image), ``<key>.cls`` (the class id, an ASCII integer >= 0) and
``<key>.json`` (provenance: ``source`` real|synthetic and whatever the producer adds). Keys have no
dots. A set in the ``records`` encoding (manifest field ``encoding``; see records.py) holds
batched records of many images per tar sample instead. Shards are written under ``*.tar.tmp``
and renamed when complete, with an integer ``mtime`` so that the same samples give
byte-identical shards. The manifest, written last and atomically,
lists every shard with its sample count, size and sha256.

A manifest may come from a server nobody here controls, so ``Manifest.from_json`` and
``ShardInfo`` check every field where it is read, in this one place: a shard name is a plain
``*.tar`` file name (``SHARD_NAME``: no folder, no ``..``, not absolute), a sha256 is 64 lowercase
hex digits, counts and sizes are integers in range (a bool is not one), ``image_size`` and
``channels`` are what the readers decode. Anything else is a one-line ShardError naming the file,
the field and its value (``shorten``ed). Paths inside a folder are built from shard names only
through ``shard_path``, which refuses one that would leave it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

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


# --- the one check of every name, hash and number a manifest brings ------------------------------

# a shard is a plain file name: what the writers write (shard-NNNNNN.tar) or another plain *.tar
SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.tar")
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_SIDE = 16_384  # image height and width (as a benchmark file allows)
MAX_COUNT = 2**31 - 1  # samples in one shard
MAX_BYTES = 2**45  # bytes of one shard (32 TiB)
CHANNELS = (1, 3)  # grey or RGB: what the readers decode
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong, _SHORT.maxlist = 50, 50, 40, 4
SHOWN = 60
_MISSING = object()


def shorten(value) -> str:
    """``value`` as repr shows it, at most 60 characters, on one line."""
    text = _SHORT.repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


class FieldError(ShardError):
    """A field of a manifest that the format does not allow; ``at(where)`` names the file."""

    def __init__(self, name: str, value, cause: str):
        shown = "missing" if value is _MISSING else shorten(value)
        super().__init__(f"{name} is {shown}: {cause}")
        self.name, self.value, self.cause = name, value, cause

    def inside(self, parent: str) -> FieldError:
        """The same error for the field within ``parent`` (``shards[3]`` + ``sha256``)."""
        return FieldError(f"{parent}.{self.name}", self.value, self.cause)

    def at(self, where: str) -> ShardError:
        return ShardError(f"{where}: {self}")


def check(ok: bool, name: str, value, cause: str) -> None:
    if not ok:
        raise FieldError(name, value, cause)


def integer(value, name: str, low: int, high: int | None = None) -> int:
    """An int (not a bool, not a float) in [low, high]."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    within = is_int and value >= low and (high is None or value <= high)
    limits = f">= {low}" if high is None else f"in {low}..{high}"
    check(within, name, value, f"must be an integer {limits}")
    return value


def shard_name(value, name: str = "shard name") -> str:
    """A shard's file name: plain (no folder, no ``..``, not absolute), ``*.tar``."""
    plain = isinstance(value, str) and SHARD_NAME.fullmatch(value) is not None
    check(plain, name, value, "not a plain shard file name (letters, digits, '.-_', *.tar)")
    return value


def sha256(value, name: str = "sha256") -> str:
    is_hash = isinstance(value, str) and SHA256.fullmatch(value) is not None
    check(is_hash, name, value, "not a sha256 (64 lowercase hex digits)")
    return value


def shard_path(folder: str | Path, name: str) -> Path:
    """``folder / name`` for a shard's name, refused unless it is a plain name whose path lies
    inside ``folder`` (every writer and linker of manifest names builds its paths here)."""
    path = Path(folder) / shard_name(name)
    inside = Path(os.path.abspath(path)).parent == Path(os.path.abspath(folder))
    check(inside, "shard name", name, f"its path {shorten(str(path))} leaves {folder}")
    return path


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it; ``bytes`` and ``sha256`` are None only in the
    manifest of a set served on demand (``sio serve``), whose shards are not yet made."""

    name: str
    num_samples: int
    bytes: int | None
    sha256: str | None

    def __post_init__(self):
        shard_name(self.name, "name")
        integer(self.num_samples, "num_samples", 1, MAX_COUNT)
        if self.bytes is not None:
            integer(self.bytes, "bytes", 0, MAX_BYTES)
        if self.sha256 is not None:
            sha256(self.sha256)

    @classmethod
    def from_json(cls, data, index: int) -> ShardInfo:
        where = f"shards[{index}]"
        check(isinstance(data, dict), where, data, "not an object")
        keys = {"name", "num_samples", "bytes", "sha256"}
        check(set(data) == keys, where, sorted(data), f"its fields are {sorted(keys)}")
        try:
            return cls(**data)
        except FieldError as err:
            raise err.inside(where) from None


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
    def from_json(cls, data, where: str) -> Manifest:
        """The manifest in ``data`` (parsed JSON), every field checked: anything the format does
        not allow is a one-line ShardError naming ``where``, the field and its value."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ShardError(f"{where}: not an sio shard-set manifest (format {FORMAT!r})")
        try:
            return cls(**_manifest_fields(data))
        except FieldError as err:
            raise err.at(where) from None


def _get(data: dict, name: str, kind: type | tuple[type, ...], default=_MISSING):
    """Field ``name`` of ``data``, which must be of ``kind`` (or ``default`` when absent)."""
    value = data.get(name, default)
    check(value is not _MISSING, name, value, "a manifest field is missing")
    check(isinstance(value, kind), name, value, f"must be {_kind_name(kind)}")
    return value


def _kind_name(kind) -> str:
    names = {str: "a string", list: "a list", dict: "an object"}
    return " or ".join(
        names.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,))
    )


def _numbers(values: list, name: str, length: int) -> tuple[float, ...]:
    """Pixel statistics: ``length`` finite numbers in [0, 1], or none (a set served on demand)."""
    check(len(values) in (0, length), name, values, f"must hold 0 or {length} numbers")
    for i, value in enumerate(values):
        real = isinstance(value, (int, float)) and not isinstance(value, bool)
        check(
            real and math.isfinite(value) and 0 <= value <= 1,
            f"{name}[{i}]",
            value,
            "must be a number in [0, 1]",
        )
    return tuple(values)


def _shards(data: dict) -> tuple[ShardInfo, ...]:
    shards = tuple(ShardInfo.from_json(s, i) for i, s in enumerate(_get(data, "shards", list)))
    seen: set[str] = set()
    for i, shard in enumerate(shards):
        check(shard.name not in seen, f"shards[{i}].name", shard.name, "listed twice")
        seen.add(shard.name)
    if "num_samples" in data:  # derived from the shards (which verify counts), but a number
        integer(data["num_samples"], "num_samples", 0)
    return shards


def _manifest_fields(data: dict) -> dict:
    encoding = _get(data, "encoding", str, "png")
    check(
        encoding in ENCODINGS, "encoding", encoding, f"unknown encoding; known: {sorted(ENCODINGS)}"
    )
    size = _get(data, "image_size", list)
    check(len(size) == 2, "image_size", size, "must be [height, width]")
    channels = integer(_get(data, "channels", int), "channels", 1, max(CHANNELS))
    check(channels in CHANNELS, "channels", channels, f"must be one of {CHANNELS}")
    names = _get(data, "class_names", list)
    for i, name in enumerate(names):
        check(isinstance(name, str), f"class_names[{i}]", name, "must be a string")
    counts = _get(data, "class_counts", list)
    check(
        len(counts) in (0, len(names)),
        "class_counts",
        counts,
        f"must hold 0 or {len(names)} counts",
    )
    return {
        "kind": _get(data, "kind", str),
        "name": _get(data, "name", str),
        "image_size": tuple(
            integer(v, f"image_size[{i}]", 1, MAX_SIDE) for i, v in enumerate(size)
        ),
        "channels": channels,
        "class_names": tuple(names),
        "class_counts": tuple(integer(c, f"class_counts[{i}]", 0) for i, c in enumerate(counts)),
        "pixel_mean": _numbers(_get(data, "pixel_mean", list), "pixel_mean", channels),
        "pixel_std": _numbers(_get(data, "pixel_std", list), "pixel_std", channels),
        "shards": _shards(data),
        "provenance": _get(data, "provenance", dict, {}),
        "sio_version": _get(data, "sio_version", str, "unknown"),
        "encoding": encoding,
    }


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
