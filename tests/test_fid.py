"""Fréchet distances: the formula against hand-computed values, a tiny feature extractor on tiny
shard sets, the real-stats cache, the manifest record, and the checksummed Inception loader."""

from __future__ import annotations

import math
from unittest import mock
from unittest.mock import ANY

import numpy as np
import pytest
import scipy.linalg
import torch

from sio.core.files import sha256_file
from sio.generate.fid import (
    InceptionFeatures,
    StatsAccumulator,
    frechet_distance,
    measure_fid,
    record_quality,
)
from sio.generate.quality import read_quality
from sio.shardset import ShardSetWriter, read_manifest


def test_one_dimensional_gaussians():
    # N(1, 4) vs N(3, 1): (1 - 3)^2 + 4 + 1 - 2 sqrt(4 * 1) = 5
    assert frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(5.0, abs=1e-12)


def test_diagonal_gaussians():
    # |(0,0) - (1,2)|^2 = 5; traces 5 + 13; tr sqrt(diag(4, 36)) = 8: 5 + 18 - 16 = 7
    value = frechet_distance([0, 0], np.diag([1.0, 4.0]), [1, 2], np.diag([4.0, 9.0]))
    assert value == pytest.approx(7.0, abs=1e-12)


def test_agrees_with_sqrtm_on_non_commuting_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 30, 6))
    cov1, cov2 = np.cov(a, rowvar=False), np.cov(b @ rng.normal(size=(6, 6)), rowvar=False)
    mean1, mean2 = a.mean(0), b.mean(0)
    root = scipy.linalg.sqrtm(cov1 @ cov2).real
    expected = ((mean1 - mean2) ** 2).sum() + np.trace(cov1 + cov2 - 2 * root)
    assert frechet_distance(mean1, cov1, mean2, cov2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mean1, cov1, mean1, cov1) == pytest.approx(0.0, abs=1e-9)


def test_accumulator_matches_numpy_in_batches():
    x = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    accumulator = StatsAccumulator()
    for batch in x.split(7):
        accumulator.add(batch)
    stats = accumulator.result()
    np.testing.assert_allclose(stats.mean, x.numpy().mean(0), atol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x.numpy(), rowvar=False), atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 images"):
        StatsAccumulator().result()


class MeanIntensity:
    """A tiny feature extractor: one feature, the image's mean pixel value."""

    metric = "fd_test"
    key = "mean-intensity"
    identity = {"extractor": "mean pixel value"}

    def __init__(self):
        self.images_seen = 0

    def __call__(self, images):
        self.images_seen += len(images)
        return images.double().mean((1, 2, 3))[:, None]


def constant_set(folder, values):
    with ShardSetWriter(
        folder,
        kind="synthetic",
        name=folder.name,
        image_size=(4, 4),
        channels=1,
        class_names=("a",),
        shard_size=2,
    ) as writer:
        for i, value in enumerate(values):
            writer.write(f"s{i}", np.full((4, 4), value, np.uint8), 0, {"source": "synthetic"})
        writer.close()
    return folder


def folder_hashes(folder) -> dict:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_tiny_extractor_on_shard_sets_against_a_hand_computed_value(tmp_path, monkeypatch):
    monkeypatch.setenv("SIO_CACHE_DIR", str(tmp_path / "cache"))
    # synthetic features {0, 2}: mean 1, unbiased variance 2; real {4, 5, 6}: mean 5, variance 1
    synthetic = constant_set(tmp_path / "syn", [0, 2])
    real = constant_set(tmp_path / "real", [4, 5, 6])
    real_files, published = folder_hashes(real), sha256_file(synthetic / "manifest.json")
    extractor = MeanIntensity()
    record = measure_fid(synthetic, real, extractor, batch_size=2)
    assert record["value"] == pytest.approx(16 + 2 + 1 - 2 * math.sqrt(2), abs=1e-9)
    assert (record["n_synthetic"], record["n_real"], record["metric"]) == (2, 3, "fd_test")
    assert extractor.images_seen == 5
    # cached outside the real set, keyed by its manifest's sha256
    real_sha = sha256_file(real / "manifest.json")
    cached = list((tmp_path / "cache" / "fid-stats").glob(f"mean-intensity-{real_sha}-all.npz"))
    assert len(cached) == 1
    again = measure_fid(synthetic, real, extractor, batch_size=2)
    assert again["value"] == record["value"]
    assert extractor.images_seen == 7  # the real statistics came from the cache
    limited = measure_fid(synthetic, real, MeanIntensity(), batch_size=2, max_images=2)
    # two evenly spaced real images {4, 6} (real sets are often sorted by class): mean 5,
    # variance 2; so (1 - 5)^2 + 2 + 2 - 2 sqrt(2 * 2)
    assert limited["value"] == pytest.approx(16 + 2 + 2 - 4, abs=1e-9)
    assert (limited["n_synthetic"], limited["n_real"]) == (2, 2)
    longer = constant_set(tmp_path / "longer", [0, 2, 100])
    first_two = measure_fid(longer, real, MeanIntensity(), batch_size=2, num_synthetic=2)
    assert first_two["value"] == pytest.approx(record["value"], abs=1e-9)  # the first 2 only
    assert record_quality(synthetic, record)
    assert read_quality(synthetic)["fd_test"] == {**record, "shards_sha256": ANY}
    assert "quality" not in read_manifest(synthetic).provenance
    # the published manifest and the real set are left byte for byte as they were
    assert sha256_file(synthetic / "manifest.json") == published
    assert folder_hashes(real) == real_files


def inception_weights(path):
    """A file in the true format of torch-fidelity's weights, with random values."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    module = "torch_fidelity.feature_extractor_inceptionv3"
    with (
        mock.patch(f"{module}.load_state_dict_from_url", return_value={}),
        mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"),
        torch.random.fork_rng(devices=[]),
    ):
        torch.manual_seed(0)
        network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(network.state_dict(), path)
    return path


def test_inception_weights_are_checked_then_used(tmp_path):
    weights = inception_weights(tmp_path / "weights-inception.pth")
    with pytest.raises(ValueError, match="does not start with the expected 6726825d"):
        InceptionFeatures(weights, "6726825d0af5")
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05"):
        InceptionFeatures(tmp_path / "absent.pth", "6726825d")
    extractor = InceptionFeatures(weights, sha256_file(weights)[:12])
    # Inception at 299x299 costs seconds per image on two CPU cores: two images per set
    syn = constant_set(tmp_path / "syn", [10, 200])
    real = constant_set(tmp_path / "real", [10, 200])
    same = measure_fid(syn, real, extractor, batch_size=2)
    other = measure_fid(constant_set(tmp_path / "dark", [0, 3]), real, extractor, batch_size=2)
    assert abs(same["value"]) < 1e-3 * other["value"]
    assert other["metric"] == "fid" and other["weights_sha256"] == sha256_file(weights)
    assert other["library"] == "torch-fidelity 0.4.0"


def test_a_weights_file_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "payload": MeanIntensity}, path)
    from sio.core.files import sha256_file

    with pytest.raises(Exception, match="refused by the weights-only load") as refused:
        InceptionFeatures(path, sha256_file(path))
    assert "evil.pth" in str(refused.value) and "weights_only=False" not in str(refused.value)
