"""``sio shards convert``: a shard set from one encoding into the other, sample for sample.

Shard i of the output holds exactly the samples of shard i of the input, in the same order, under
the same name; the manifest is the input's with new sizes, checksums and ``encoding``. PNG to
records packs each shard's samples into records of ``record_size`` images; records to PNG
re-encodes each image with ``encode_png`` and restores its key and provenance, so PNG ->
records -> PNG gives back byte-identical shards when the PNGs were written by sio.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from sio.core.storage import is_url, open_destination
from sio.shardset.format import (
    ENCODINGS,
    MANIFEST,
    ShardError,
    ShardInfo,
    encode_png,
    shard_path,
)
from sio.shardset.read import Chunk, read_manifest, shard_chunks, shard_urls
from sio.shardset.records import RECORD_SIZE, record_key
from sio.shardset.write import ShardFileWriter


def _png_samples(chunk: Chunk):
    """(key, PNG bytes, label, provenance) of each image of ``chunk``."""
    for image, label, key, meta in zip(*chunk, strict=True):
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        yield key, encode_png(np.ascontiguousarray(pixels)), int(label), meta


def _records(chunks, record_size: int):
    """Consecutive chunks regrouped into chunks of ``record_size`` images (the last shorter)."""
    pending: list[Chunk] = []
    held = 0
    for chunk in [*chunks, None]:
        if chunk is not None:
            pending.append(chunk)
            held += len(chunk.images)
        while held >= record_size or (chunk is None and held):
            images = np.concatenate([c.images for c in pending])
            labels = np.concatenate([c.labels for c in pending])
            keys = [k for c in pending for k in c.keys]
            provenance = [p for c in pending for p in c.provenance]
            take = min(record_size, held)
            yield Chunk(images[:take], labels[:take], keys[:take], provenance[:take])
            rest = Chunk(images[take:], labels[take:], keys[take:], provenance[take:])
            pending, held = [rest], held - take


def _convert_shard(url, shard, manifest, encoding, record_size, path: Path) -> ShardInfo:
    """Shard ``shard`` of ``manifest`` in ``encoding``, written by the contract's shard
    writer to ``path``."""
    chunks = shard_chunks(url, manifest.encoding, manifest.channels, shard.num_samples, shard)
    writer = ShardFileWriter(path, len(manifest.class_names), manifest.channels)
    try:
        if encoding == "records":
            for index, record in enumerate(_records(chunks, record_size)):
                writer.write_record(record_key(index), *record)
        else:
            for chunk in chunks:
                for sample in _png_samples(chunk):
                    writer.write(*sample)
    except BaseException:
        writer.abort()
        raise
    return writer.close().shard


def convert_shard_set(
    source: str | Path,
    destination: str | Path,
    encoding: str,
    *,
    record_size: int = RECORD_SIZE,
    staging: str | Path | None = None,
):
    """Write ``source`` (a folder or URL) in ``encoding`` to ``destination`` (a folder or an
    ``s3://`` prefix); returns the new manifest. An existing complete set there is refused."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding is one of {sorted(ENCODINGS)}, got {encoding!r}")
    if record_size < 1:
        raise ValueError(f"record size must be >= 1, got {record_size}")
    manifest = read_manifest(source)
    folder = open_destination(destination, staging)
    if folder.exists(MANIFEST):
        raise ShardError(f"{destination}: a complete shard set is already there")
    if not is_url(destination) and Path(destination).resolve() == Path(str(source)).resolve():
        raise ValueError("convert into another folder than the source")
    shards = []
    for url, shard in zip(shard_urls(source, manifest), manifest.shards, strict=True):
        path = shard_path(folder.staging, shard.name)
        shards.append(_convert_shard(url, shard, manifest, encoding, record_size, path))
        folder.publish(shard.name)
    converted = dataclasses.replace(manifest, shards=tuple(shards), encoding=encoding)
    folder.write_json(MANIFEST, converted.to_json())
    return converted
