"""`sio shards subset`: whole-shard prefixes of a shard set, equal to generating fewer images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from sio.cli import get_cli
from sio.generate import generate_shard_set
from sio.generate.config import GenerateConfig, GeneratorConfig, SamplerConfig
from sio.shardset import ShardError, ShardSetWriter, iter_samples, read_manifest, subset_shard_set


def write_set(folder, images, labels, shard_size):
    with ShardSetWriter(
        folder,
        kind="real",
        name=folder.name,
        image_size=images.shape[1:3],
        channels=1,
        class_names=("a", "b", "c"),
        shard_size=shard_size,
    ) as writer:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            writer.write(f"s{i:04d}", image, int(label), {"source": "real"})
        return writer.close()


@pytest.fixture
def ten(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 6, 5), dtype=np.uint8)
    labels = rng.integers(0, 3, 10)
    return images, labels, write_set(tmp_path / "ten", images, labels, shard_size=4)


def test_subset_is_the_prefix_with_recomputed_statistics(tmp_path, ten):
    images, labels, _ = ten
    subset = subset_shard_set(tmp_path / "ten", 8, tmp_path / "eight")
    direct = write_set(tmp_path / "direct", images[:8], labels[:8], shard_size=4)
    assert [s.sha256 for s in subset.shards] == [s.sha256 for s in direct.shards]
    assert subset.class_counts == tuple(np.bincount(labels[:8], minlength=3))
    assert subset.class_counts != ten[2].class_counts  # the last two samples are not counted
    np.testing.assert_allclose(subset.pixel_mean, direct.pixel_mean, rtol=1e-12)
    np.testing.assert_allclose(subset.pixel_std, direct.pixel_std, rtol=1e-9)
    read = [(image, label) for image, label, _ in iter_samples(tmp_path / "eight")]
    assert np.array_equal(np.stack([i for i, _ in read])[:, 0], images[:8])
    source = subset.provenance["subset_of"]
    assert source["num_samples"] == 10 and len(source["manifest_sha256"]) == 64


def test_subset_off_a_shard_boundary_lists_the_valid_sizes(tmp_path, ten):
    with pytest.raises(ShardError, match=r"6 samples is not a shard boundary.*4, 8, 10"):
        subset_shard_set(tmp_path / "ten", 6, tmp_path / "six")
    assert not (tmp_path / "six" / "manifest.json").exists()


def test_subset_refuses_urls_and_its_own_folder(tmp_path, ten):
    with pytest.raises(ShardError, match="s3://b/x: subsets are made from and into local"):
        subset_shard_set(tmp_path / "ten", 8, "s3://b/x")
    with pytest.raises(ShardError, match="another folder than its source"):
        subset_shard_set(tmp_path / "ten", 8, tmp_path / "ten" / ".." / "ten")
    assert read_manifest(tmp_path / "ten").num_samples == 10


def test_subset_names_a_corrupt_shard(tmp_path, ten):
    shard = tmp_path / "ten" / ten[2].shards[1].name
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    named = f"{shard.name}: its sha256 [0-9a-f]{{16}}… differs from the manifest's"
    with pytest.raises(ShardError, match=named):
        subset_shard_set(tmp_path / "ten", 8, tmp_path / "eight")
    assert not (tmp_path / "eight" / "manifest.json").exists()


def test_prefix_of_a_generated_set_equals_generating_fewer(tmp_path, cond_dir):
    generator = GeneratorConfig(sampler=SamplerConfig(steps=2))
    job = GenerateConfig(num_images=12, batch_size=4, shard_size=4, seed=2)
    generate_shard_set(cond_dir, tmp_path / "twelve", job, generator)
    fewer = generate_shard_set(
        cond_dir, tmp_path / "eight", GenerateConfig(**{**vars(job), "num_images": 8}), generator
    )
    result = CliRunner().invoke(
        get_cli(),
        ["shards", "subset", str(tmp_path / "twelve"), str(tmp_path / "cut"), "--num", "8"],
    )
    assert result.exit_code == 0, result.output
    cut = read_manifest(tmp_path / "cut").to_json()
    for field in ("shards", "class_counts", "pixel_mean", "pixel_std", "num_samples"):
        assert cut[field] == fewer[field], field
    # the subset keeps the source's provenance, which says how many images it was made for
    assert cut["provenance"]["subset_of"]["num_samples"] == 12
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["kind"] == "synthetic"
