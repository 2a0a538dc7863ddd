"""The ``records`` encoding: many small images per tar sample, for streaming at memory speed.

A records shard is still a WebDataset tar shard. Each of its samples is one record of up to
``RECORD_SIZE`` images, three members under a key ``rec-NNNNNN`` (keys have no dots; webdataset
splits a member name at the first dot of its basename, so the extensions carry them):

- ``<key>.images.npy``: uint8 N x C x H x W, the images (npy format, no pickle);
- ``<key>.labels.npy``: int64 N, their class ids;
- ``<key>.meta.json``: ``{"keys": [...], "provenance": [...]}``, each image's sample key and
  provenance, so a conversion back to PNG restores every sample exactly.

Reading a record is a memory copy instead of N PNG decodes. The manifest says
``"encoding": "records"`` and counts images (not records) in ``num_samples``.
"""

from __future__ import annotations

import io
import json

import numpy as np

from sio.shardset.format import ShardError

RECORD_SIZE = 1000
IMAGES, LABELS, META = "images.npy", "labels.npy", "meta.json"


def record_key(index: int) -> str:
    return f"rec-{index:06d}"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def encode_record(images: np.ndarray, labels, keys, provenance) -> dict[str, bytes]:
    """The members of one record: uint8 NxCxHxW ``images`` with their labels, sample keys and
    provenance dicts."""
    labels = np.asarray(labels, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"records hold uint8 NxCxHxW images, got {images.dtype} {images.shape}")
    if not len(images) == len(labels) == len(keys) == len(provenance):
        raise ValueError("a record needs as many labels, keys and provenance dicts as images")
    meta = {"keys": list(keys), "provenance": list(provenance)}
    return {
        IMAGES: _npy(np.ascontiguousarray(images)),
        LABELS: _npy(labels),
        META: json.dumps(meta, sort_keys=True).encode(),
    }


def _member(sample: dict, ext: str) -> bytes:
    try:
        return sample[ext]
    except KeyError:
        where = f"{sample.get('__url__', '?')}: record {sample.get('__key__', '?')}"
        raise ShardError(f"{where}: member {ext} is missing") from None


def _load(sample: dict, ext: str) -> np.ndarray:
    data = _member(sample, ext)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any decoding failure is named with its member
        where = f"{sample.get('__url__', '?')}: record {sample.get('__key__', '?')}"
        raise ShardError(f"{where}: member {ext}: cannot decode: {err}") from err


def decode_record(sample: dict, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """A raw record sample to (uint8 NxCxHxW images, int64 labels), or a ShardError naming the
    URL, the record and the member."""
    where = f"{sample.get('__url__', '?')}: record {sample.get('__key__', '?')}"
    images, labels = _load(sample, IMAGES), _load(sample, LABELS)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != channels:
        raise ShardError(
            f"{where}: member {IMAGES} holds {images.dtype} {images.shape}, "
            f"expected uint8 N x {channels} x H x W"
        )
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise ShardError(f"{where}: member {LABELS} holds {labels.dtype} {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise ShardError(f"{where}: member {LABELS} holds {labels.min()}; class ids are >= 0")
    return images, labels


def record_meta(sample: dict, count: int) -> tuple[list[str], list[dict]]:
    """(sample keys, provenance dicts) of a record of ``count`` images."""
    where = f"{sample.get('__url__', '?')}: record {sample.get('__key__', '?')}"
    try:
        meta = json.loads(_member(sample, META))
        keys, provenance = list(meta["keys"]), list(meta["provenance"])
    except ShardError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ShardError(f"{where}: member {META}: cannot decode: {err!r}") from err
    if len(keys) != count or len(provenance) != count:
        raise ShardError(f"{where}: member {META} describes {len(keys)} images, not {count}")
    return keys, provenance
