"""Reading shard sets from a folder or a URL: the manifest, the shard URLs, and decoded samples
(in either encoding) with named errors.

A set may be read from several mirrors at once (``URL1,URL2,...`` or a list: e.g. one ``sio
serve`` per GPU): every mirror's manifest must describe the same set (``read_manifest`` compares
them, naming both URLs and the first differing fields), and shard i is asked of mirror ``i mod
n`` first, then of the next ones on a transport error (``sio.core.storage``), so the shards are
spread over the mirrors and the samples are the same as from any one of them."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from sio.core.definition import require_same
from sio.core.storage import as_location, is_url, join_location, mirrors, open_url, rotate
from sio.shardset.format import MANIFEST, Manifest, ShardError, ShardInfo, shorten
from sio.shardset.records import decode_record, record_meta
from sio.shardset.tario import CHUNK, check_count, tar_samples


def read_manifest(shard_set) -> Manifest:
    """The manifest of a shard set in a folder or at an ``s3://`` or ``http(s)://`` prefix, or
    at each of a list of mirrors, which must all serve the same set."""
    urls = mirrors(shard_set)
    if len(urls) > 1:
        return _same_manifest(urls)
    shard_set = urls[0]
    where = join_location(shard_set, MANIFEST)
    if not is_url(shard_set) and not Path(where).is_file():
        raise ShardError(_no_manifest(where))
    try:
        text = _manifest_bytes(where)
    except FileNotFoundError:
        raise ShardError(_no_manifest(where)) from None
    except OSError as err:
        raise ShardError(f"{where}: cannot read the manifest: {err}") from err
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:  # bad JSON, an int of > 4,300 digits, nesting
        raise ShardError(f"{where}: not valid JSON: {shorten(str(err))}") from None
    return Manifest.from_json(data, where)


MAX_MANIFEST = 256 << 20  # bytes: a million shards' lines fit many times


def _manifest_bytes(where: str) -> bytes:
    """The manifest's bytes, refused beyond MAX_MANIFEST (a server may send without end)."""
    pieces, held = [], 0
    with open_url(where) as stream:
        while piece := stream.read(min(CHUNK, MAX_MANIFEST + 1 - held)):
            pieces.append(piece)
            held += len(piece)
            if held > MAX_MANIFEST:
                raise ShardError(f"{where}: more than {MAX_MANIFEST} bytes; not a manifest")
    return b"".join(pieces)


def set_definition(manifest: Manifest) -> dict:
    """What makes two manifests the same set: every field, the shard list by its sha256."""
    definition = manifest.to_json()
    shards = definition.pop("shards")
    definition["shards"] = f"{len(shards)} shards, content sha256 {manifest.content_sha256[:16]}"
    return definition


def _same_manifest(urls: tuple[str, ...]) -> Manifest:
    first = read_manifest(urls[0])
    for url in urls[1:]:
        require_same(
            f"{join_location(urls[0], MANIFEST)} and {join_location(url, MANIFEST)} describe "
            "different shard sets",
            set_definition(first),
            set_definition(read_manifest(url)),
            remedy="every URL of a list must serve the same set (same generator, settings, seed "
            "and num_images)",
            error=ShardError,
        )
    return first


def _no_manifest(where: str) -> str:
    return (
        f"{where}: no manifest. A shard set is a folder (or URL prefix) of shard-NNNNNN.tar "
        "files plus manifest.json, written by `sio shard` or `sio generate`."
    )


def shard_urls(shard_set, manifest: Manifest | None = None) -> list[str]:
    """Each shard's location; of a list of n mirrors, shard i's lists them from mirror i mod n
    (where it is fetched from unless that one fails)."""
    shard_set = as_location(shard_set)
    manifest = manifest or read_manifest(shard_set)
    return [join_location(rotate(shard_set, i), s.name) for i, s in enumerate(manifest.shards)]


def decode_png(data: bytes, channels: int) -> np.ndarray:
    """A PNG's pixels as uint8 C x H x W with ``channels`` channels (1: grey, 3: RGB): PIL's
    ``convert`` only for a PNG of another mode (palette, alpha, 16-bit, the other channel
    count), since converting an image to its own mode copies it (~40 % of the decode of a
    32 x 32 RGB sample). Raises on data that is not a decodable PNG."""
    mode = "L" if channels == 1 else "RGB"
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image if image.mode == mode else image.convert(mode))
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def decode_sample(sample: dict, channels: int) -> tuple[np.ndarray, int, dict]:
    """A raw per-sample PNG to (uint8 CxHxW image, label, provenance), or a ShardError naming
    the URL, the sample and the member."""
    where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    member = "png"
    try:
        image = decode_png(sample["png"], channels)
        member = "cls"
        label = int(sample["cls"])
        member = "json"
        meta = json.loads(sample["json"])
    except KeyError as err:
        raise ShardError(f"{where}: member {err.args[0]} is missing") from None
    except Exception as err:  # noqa: BLE001 - any decoding failure is named with its member
        raise ShardError(f"{where}: member {member}: cannot decode: {err}") from err
    if label < 0:
        raise ShardError(f"{where}: member cls holds {label}; class ids are >= 0")
    return image, label, meta


class Chunk(NamedTuple):
    """Consecutive samples of a shard: uint8 NxCxHxW images, int64 labels, keys, provenance."""

    images: np.ndarray
    labels: np.ndarray
    keys: list[str]
    provenance: list[dict]


def shard_chunks(
    url: str,
    encoding: str,
    channels: int,
    expected: int | None = None,
    shard: ShardInfo | None = None,
):
    """Every sample of one shard, in order, as chunks: one per record, or one per PNG sample;
    a shard with another count than ``expected`` is an error naming it. With the manifest's
    ``shard``, its size and sha256 (where listed) are checked before it is parsed."""
    count = 0
    sha256, size = (None, None) if shard is None else (shard.sha256, shard.bytes)
    for sample in tar_samples(url, sha256, size):
        if encoding == "records":
            images, labels = decode_record(sample, channels)
            keys, provenance = record_meta(sample, len(images))
        else:
            image, label, meta = decode_sample(sample, channels)
            images, labels = image[None], np.array([label], dtype=np.int64)
            keys, provenance = [sample["__key__"]], [meta]
        count += len(images)
        if expected is not None and count > expected:  # an endless shard stops here
            check_count(url, count, expected)
        yield Chunk(images, labels, keys, provenance)
    check_count(url, count, expected)


def iter_chunks(shard_set: str | Path) -> Iterator[Chunk]:
    manifest = read_manifest(shard_set)
    for url, shard in zip(shard_urls(shard_set, manifest), manifest.shards, strict=True):
        if not is_url(url) and not Path(url).is_file():
            raise ShardError(f"{url}: shard listed in the manifest is missing")
        yield from shard_chunks(url, manifest.encoding, manifest.channels, shard.num_samples, shard)


def iter_samples(shard_set: str | Path) -> Iterator[tuple[np.ndarray, int, dict]]:
    """Every sample of a shard set once, in shard order (for evaluation and inspection), as
    (uint8 CxHxW image, label, provenance), whichever the encoding."""
    for chunk in iter_chunks(shard_set):
        for image, label, meta in zip(chunk.images, chunk.labels, chunk.provenance, strict=True):
            yield image, int(label), meta


def iter_batches(
    shard_set: str | Path, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 NxCxHxW images, int64 labels) batches, in order, the last one possibly short."""
    images, labels, held = [], [], 0
    for chunk in iter_chunks(shard_set):
        images.append(chunk.images)
        labels.append(chunk.labels)
        held += len(chunk.images)
        if held < batch_size:
            continue
        all_images, all_labels, start = _joined(images), _joined(labels), 0
        while held - start >= batch_size:
            end = start + batch_size
            yield torch.from_numpy(all_images[start:end]), torch.from_numpy(all_labels[start:end])
            start = end
        images, labels, held = [all_images[start:]], [all_labels[start:]], held - start
    if held:
        yield torch.from_numpy(_joined(images)), torch.from_numpy(_joined(labels))


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
