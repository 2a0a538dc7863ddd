"""One shard's bytes to checked, decoded rows: the one place a reader turns a shard into data.

``decode_shard(ref, data, encoding, check)`` checks the bytes against the manifest's sha256
**before** parsing them (a replaced or corrupt shard is never parsed), groups the tar
members into samples as webdataset does (the contract's one check and one grouping, those of
the streaming readers too: ``tario.check_shard_bytes``, ``tario.group_samples``), checks the
sample count against the manifest's, and decodes every sample (PNG) or record into uint8 rows
N x C x H x W, int64 labels and keys. Each image must be of the manifest's channels and size
and each label in [0, classes). A whole-shard fault raises a ShardError naming the URL; a
broken sample or record does not: its rows are zeros and ``broken`` names it, so a reader can
raise it or skip it when (and only when) that sample is asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from sio.shardset.format import ShardError
from sio.shardset.read import decode_sample
from sio.shardset.records import decode_record
from sio.shardset.tario import bytes_samples, check_count, check_shard_bytes


@dataclass(frozen=True)
class ShardRef:
    """One shard as a reader needs it: where, how many samples, its sha256 ("": unknown)."""

    url: str
    count: int
    sha256: str = ""


@dataclass(frozen=True)
class Check:
    """What every image of a source must be: channels, (H, W), labels in [0, classes)."""

    channels: int
    image_size: tuple[int, int]
    classes: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.image_size)

    def image(self, image: np.ndarray, where: str, member: str) -> None:
        if tuple(image.shape[-3:]) != self.shape:
            raise ShardError(
                f"{where}: member {member} holds {'x'.join(map(str, image.shape[-3:]))} images, "
                f"the manifest says {'x'.join(map(str, self.shape))} (channels x height x width)"
            )

    def labels(self, labels: np.ndarray, where: str, member: str) -> None:
        if self.classes is not None and len(labels) and int(labels.max()) >= self.classes:
            raise ShardError(
                f"{where}: member {member} holds class {int(labels.max())}; the set has "
                f"{self.classes} classes (ids 0..{self.classes - 1})"
            )


@dataclass
class Rows:
    """A shard decoded: ``images`` uint8 N x C x H x W, ``labels`` int64 N, ``keys`` (an object
    array, taken by index); ``broken`` maps the index of each unreadable sample to its
    (error, kind: "samples" | "records"). ``portable``: the keys come from the
    shard itself (not its URL), so the rows are the same for any set holding the shard."""

    url: str
    images: np.ndarray
    labels: np.ndarray
    keys: np.ndarray
    broken: dict[int, tuple[ShardError, str]] = field(default_factory=dict)
    portable: bool = True

    def sample(self, index: int) -> tuple[np.ndarray, int]:
        """(uint8 CxHxW image, label) of sample ``index``, or its ShardError."""
        if index in self.broken:
            raise self.broken[index][0]
        return self.images[index], int(self.labels[index])

    @property
    def cacheable(self) -> bool:
        return self.portable and not self.broken


def decode_shard(ref: ShardRef, data: bytes, encoding: str, check: Check) -> Rows:
    """``data``, the bytes of shard ``ref``, as checked rows (see the module docstring)."""
    check_shard_bytes(ref.url, data, ref.sha256)
    samples = list(bytes_samples(data, ref.url))
    rows = _records(ref.url, samples, check) if encoding == "records" else _png(ref.url, samples)
    check_count(ref.url, len(rows.keys), ref.count)
    if encoding != "records":
        _decode_png(rows, samples, check)
    return rows


def _png(url: str, samples: list[dict]) -> Rows:
    keys = np.array([s["__key__"] for s in samples], dtype=object)
    return Rows(url, np.empty(0, np.uint8), np.zeros(len(samples), np.int64), keys)


def _decode_png(rows: Rows, samples: list[dict], check: Check) -> None:
    rows.images = np.zeros((len(samples), *check.shape), np.uint8)
    for index, raw in enumerate(samples):
        where = f"{rows.url}: sample {raw['__key__']}"
        try:
            image, label, _ = decode_sample(raw, check.channels)
            check.image(image, where, "png")
            check.labels(np.array([label]), where, "cls")
        except ShardError as error:
            rows.broken[index] = (error, "samples")
            continue
        rows.images[index], rows.labels[index] = image, label


def _records(url: str, samples: list[dict], check: Check) -> Rows:
    images, labels, keys, broken, portable = [], [], [], {}, True
    for sample in samples:
        where = f"{url}: record {sample['__key__']}"
        try:
            record, record_labels = decode_record(sample, check.channels)
            check.image(record, where, "images.npy")
            check.labels(record_labels, where, "labels.npy")
        except ShardError as error:
            size = _meta_size(url, sample)
            for i in range(size):
                broken[len(keys) + i] = (error, "records")
            record = np.zeros((size, *check.shape), np.uint8)
            record_labels = np.zeros(size, np.int64)
        images.append(record)
        labels.append(record_labels)
        record_keys = _record_keys(sample, len(record))
        portable &= record_keys is not None
        keys += record_keys or _positional_keys(url, sample, len(record))
    return Rows(
        url,
        np.concatenate(images) if images else np.zeros((0, *check.shape), np.uint8),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        np.array(keys, dtype=object),
        broken,
        portable,
    )


def _record_keys(sample: dict, count: int) -> list[str] | None:
    """Each image's sample key from the record's meta.json (unique within the set)."""
    try:
        keys = json.loads(sample["meta.json"])["keys"]
        if len(keys) == count:
            return [str(key) for key in keys]
    except Exception:  # noqa: BLE001, S110 - a broken meta.json: positional keys
        pass
    return None


def _positional_keys(url: str, sample: dict, count: int) -> list[str]:
    """``shard/record/index`` (record keys repeat from shard to shard)."""
    shard = url.rsplit("/", 1)[-1].removesuffix(".tar")
    return [f"{shard}/{sample['__key__']}/{i}" for i in range(count)]


def _meta_size(url: str, sample: dict) -> int:
    try:
        return len(json.loads(sample["meta.json"])["keys"])
    except Exception as err:  # noqa: BLE001 - without its size the shard cannot be indexed
        raise ShardError(
            f"{url}: record {sample.get('__key__')} is unreadable and its size unknown"
        ) from err
