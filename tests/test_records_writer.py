"""One records writer in the shard-set contract (``ShardFileWriter.write_record``, and
``ShardSetWriter(encoding="records")`` over it): ``sio shards convert``, ``sio generate`` and the
benchmarks' sets all write a record through it, so the same images give the same bytes."""

from __future__ import annotations

import numpy as np
import pytest

from sio.core.files import sha256_file
from sio.generate import generate_shard_set
from sio.generate.config import GenerateConfig, GeneratorConfig, SamplerConfig
from sio.shardset import (
    ShardFileWriter,
    ShardSetWriter,
    convert_shard_set,
    iter_chunks,
    shard_chunks,
)
from sio.shardset.records import record_key

NAMES = ("a", "b", "c")


def samples(seed: int, count: int, channels: int):
    rng = np.random.default_rng(seed)
    shape = (count, 5, 7) if channels == 1 else (count, 5, 7, 3)  # odd sides
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = rng.integers(0, len(NAMES), count)
    return images, labels


def write(folder, images, labels, channels, shard_size, **encoding):
    with ShardSetWriter(
        folder,
        kind="real",
        name="set",
        image_size=(5, 7),
        channels=channels,
        class_names=NAMES,
        shard_size=shard_size,
        **encoding,
    ) as writer:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            writer.write(f"s-{i:05d}", image, int(label), {"source": "real", "i": i})
    return folder


def shard_bytes(folder) -> dict:
    return {p.name: sha256_file(p) for p in sorted(folder.glob("shard-*.tar"))}


@pytest.mark.parametrize(
    ("seed", "count", "channels", "shard_size", "record_size"),
    [(0, 23, 1, 10, 4), (1, 17, 3, 5, 5), (2, 9, 1, 9, 20), (3, 31, 3, 7, 3)],
)
def test_convert_and_the_set_writer_write_the_same_records(
    tmp_path, seed, count, channels, shard_size, record_size
):
    images, labels = samples(seed, count, channels)
    png = write(tmp_path / "png", images, labels, channels, shard_size)
    direct = write(
        tmp_path / "direct",
        images,
        labels,
        channels,
        shard_size,
        encoding="records",
        record_size=record_size,
    )
    converted = convert_shard_set(png, tmp_path / "converted", "records", record_size=record_size)
    assert shard_bytes(direct) == shard_bytes(tmp_path / "converted")
    assert len(shard_bytes(direct)) == -(-count // shard_size)
    # every image, label and key back, in order
    chunks = list(iter_chunks(direct))
    np.testing.assert_array_equal(
        np.concatenate([c.images for c in chunks]),
        images[:, None] if channels == 1 else images.transpose(0, 3, 1, 2),
    )
    assert np.concatenate([c.labels for c in chunks]).tolist() == labels.tolist()
    assert [k for c in chunks for k in c.keys] == [f"s-{i:05d}" for i in range(count)]
    assert converted.encoding == "records"


@pytest.mark.parametrize(("batch_size", "shard_size"), [(3, 7), (4, 4), (5, 11)])
def test_generation_writes_its_records_through_the_contract_writer(
    tmp_path, cond_dir, batch_size, shard_size
):
    """A generated records shard is byte for byte what the contract's writer makes of the
    same images (read back from the PNG twin of the job), one record per sampled batch."""
    generator = GeneratorConfig(sampler=SamplerConfig(steps=2))
    fields = dict(num_images=13, batch_size=batch_size, shard_size=shard_size, network_batch=2)
    png = generate_shard_set(cond_dir, tmp_path / "png", GenerateConfig(**fields), generator)
    records = generate_shard_set(
        cond_dir, tmp_path / "rec", GenerateConfig(**fields, encoding="records"), generator
    )
    for shard in png["shards"]:
        chunks = list(shard_chunks(str(tmp_path / "png" / shard["name"]), "png", 1))
        images = np.concatenate([c.images for c in chunks])
        labels = np.concatenate([c.labels for c in chunks])
        keys = [k for c in chunks for k in c.keys]
        metas = [m for c in chunks for m in c.provenance]
        (tmp_path / "again").mkdir(exist_ok=True)
        writer = ShardFileWriter(tmp_path / "again" / shard["name"], len(NAMES), 1)
        for start in range(0, len(keys), batch_size):
            part = slice(start, start + batch_size)
            first = record_key(metas[start]["index"])
            writer.write_record(first, images[part], labels[part], keys[part], metas[part])
        assert writer.close().shard.sha256 == next(
            s["sha256"] for s in records["shards"] if s["name"] == shard["name"]
        )
