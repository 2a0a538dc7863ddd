"""Reading shard sets: the manifest, the shard URLs, and decoded samples with named errors."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from .format import MANIFEST, Manifest, ShardError


def read_manifest(shard_set: str | Path) -> Manifest:
    path = Path(shard_set) / MANIFEST
    if not path.is_file():
        raise ShardError(
            f"{path}: no manifest. A shard set is a folder of shard-NNNNNN.tar files plus "
            "manifest.json, written by `sio shard` or `sio generate`."
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ShardError(f"{path}: not valid JSON: {err}") from None
    return Manifest.from_json(data, str(path))


def shard_urls(shard_set: str | Path, manifest: Manifest | None = None) -> list[str]:
    manifest = manifest or read_manifest(shard_set)
    return [str(Path(shard_set) / s.name) for s in manifest.shards]


def decode_sample(sample: dict, channels: int) -> tuple[np.ndarray, int, dict]:
    """A raw webdataset sample to (uint8 CxHxW image, label, provenance), or a ShardError."""
    where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    try:
        with Image.open(io.BytesIO(sample["png"])) as image:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
        label = int(sample["cls"])
        meta = json.loads(sample["json"])
    except KeyError as err:
        raise ShardError(f"{where}: member {err.args[0]} is missing") from None
    except Exception as err:  # noqa: BLE001 - any decoding failure is named with its member
        raise ShardError(f"{where}: cannot decode: {err}") from err
    if label < 0:
        raise ShardError(f"{where}: member cls holds {label}; class ids are >= 0")
    image = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return image, label, meta


def _raise_named(err: Exception) -> bool:
    raise ShardError(f"while reading shards: {err}") from err


def iter_samples(shard_set: str | Path) -> Iterator[tuple[np.ndarray, int, dict]]:
    """Every sample of a shard set once, in shard order (for evaluation and inspection)."""
    manifest = read_manifest(shard_set)
    for url in shard_urls(shard_set, manifest):
        if not Path(url).is_file():
            raise ShardError(f"{url}: shard listed in the manifest is missing")
        pipeline = wds.DataPipeline(
            wds.SimpleShardList([url]), wds.tarfile_to_samples(handler=_raise_named)
        )
        for sample in pipeline:
            yield decode_sample(sample, manifest.channels)


def iter_batches(
    shard_set: str | Path, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 NxCxHxW images, int64 labels) batches, in order, the last one possibly short."""
    images, labels = [], []
    for image, label, _ in iter_samples(shard_set):
        images.append(image)
        labels.append(label)
        if len(images) == batch_size:
            yield torch.from_numpy(np.stack(images)), torch.tensor(labels)
            images, labels = [], []
    if images:
        yield torch.from_numpy(np.stack(images)), torch.tensor(labels)
