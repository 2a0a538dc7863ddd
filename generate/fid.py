"""Fréchet distances between a synthetic shard set and a real one (``sio fid``).

d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½)  (Heusel et al., NeurIPS 2017), from the
mean and unbiased covariance of each set's features, accumulated in float64. The trace of the
matrix square root is taken from the eigenvalues of the symmetric Σ₁^½ Σ₂ Σ₁^½ (similar to
Σ₁Σ₂), so no complex ``sqrtm`` residue needs discarding.

Two feature extractors, never confused in the output:
- ``fid``: torch-fidelity's InceptionV3 pool features (2048-d), its TF-1.x bilinear resize to
  299×299 (the one resize mode), uint8 RGB input (grey images repeated to three channels); the
  weights file is checked against a sha256 before it is loaded, with ``weights_only=True``.
- ``fd_classifier``: penultimate features of a real-trained sio classifier — a labelled
  stand-in where no Inception weights exist (as on a machine without network), not FID.

Real-set statistics are cached outside the real set (a published set is never written to), in
``stats_folder()``: ``$SIO_CACHE_DIR/fid-stats``, else ``~/.cache/sio/fid-stats``, keyed by
extractor, the real manifest's sha256 and the image count. The result is recorded beside the
synthetic set (quality.py), never in its manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from sio.core.files import atomic_path, sha256_file
from sio.core.progress import progress
from sio.core.storage import is_url
from sio.core.weights import load_weights
from sio.generate.quality import record_quality  # noqa: F401 - where it was first defined
from sio.shardset import MANIFEST, iter_batches, read_manifest

STATS_DIR = "fid-stats"


def stats_folder() -> Path:
    """Where real-set statistics are cached: ``$SIO_CACHE_DIR/fid-stats``, else
    ``~/.cache/sio/fid-stats``."""
    cache = os.environ.get("SIO_CACHE_DIR")
    return Path(cache) / STATS_DIR if cache else Path.home() / ".cache" / "sio" / STATS_DIR


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """Squared Fréchet distance between the Gaussians N(mean1, cov1) and N(mean2, cov2)."""
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    values, vectors = np.linalg.eigh(cov1)
    sqrt1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = sqrt1 @ cov2 @ sqrt1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mean1 - mean2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


@dataclass(frozen=True)
class GaussianStats:
    mean: np.ndarray  # D
    cov: np.ndarray  # D x D, unbiased
    count: int

    def save(self, path: Path) -> None:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, mean=self.mean, cov=self.cov, count=self.count)

    @classmethod
    def load(cls, path: Path) -> GaussianStats:
        with np.load(path) as data:
            return cls(data["mean"], data["cov"], int(data["count"]))


class StatsAccumulator:
    """Running float64 sums of x and x xᵀ over feature batches."""

    def __init__(self):
        self.sum = self.outer = None
        self.count = 0

    def add(self, features: torch.Tensor) -> None:
        x = features.detach().to("cpu", torch.float64)
        if self.sum is None:
            self.sum, self.outer = torch.zeros(x.shape[1], dtype=torch.float64), 0
        self.sum += x.sum(0)
        self.outer = self.outer + x.T @ x
        self.count += len(x)

    def result(self) -> GaussianStats:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.count}")
        mean = self.sum / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return GaussianStats(mean.numpy(), cov.numpy(), self.count)


class InceptionFeatures:
    """torch-fidelity's InceptionV3 '2048' features from a local, checksummed weights file."""

    metric = "fid"

    def __init__(self, weights: str | Path, expected_sha256: str, device="cpu"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(
                f"{weights}: no Inception weights; FID needs torch-fidelity's "
                "weights-inception-2015-12-05-6726825d.pth on disk (fid.inception_weights)"
            )
        digest = sha256_file(weights)
        if not digest.startswith(expected_sha256):
            raise ValueError(
                f"{weights}: sha256 {digest} does not start with the expected "
                f"{expected_sha256} (fid.inception_sha256); not the pinned Inception weights"
            )
        load_weights(weights, what="Inception weights file")  # tensors only, or it fails
        self.network = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
        ).to(device)
        self.device = device
        self.identity = {
            "extractor": "torch-fidelity InceptionV3 pool3 (2048)",
            "library": f"torch-fidelity {version('torch-fidelity')}",
            "resize": "torch-fidelity TF-1.x bilinear to 299x299",
            "weights_sha256": digest,
        }
        self.key = f"inception-{digest[:16]}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        (features,) = self.network(images.contiguous())
        return features


class ClassifierFeatures:
    """Penultimate features of a real-trained classifier (``sio train``'s checkpoint.pt)."""

    metric = "fd_classifier"

    def __init__(self, checkpoint: str | Path, device="cpu"):
        from sio.train import load_classifier

        self.model, info = load_classifier(checkpoint, device)
        self.device = device
        self.channels = info.channels
        digest = info.sha256
        self.identity = {
            "extractor": f"sio classifier {info.model} penultimate features "
            "(not Inception: not comparable with FID)",
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": digest,
        }
        self.key = f"classifier-{digest[:16]}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.channels:
            raise ValueError(
                f"{self.identity['checkpoint']}: the classifier takes {self.channels}-channel "
                f"images, the shard set has {images.shape[1]}"
            )
        return self.model.features(images.to(self.device))


def _chosen_rows(total: int, wanted: int, spread: bool) -> np.ndarray:
    """A boolean mask of the rows used: the first ``wanted``, or ``wanted`` evenly spaced ones
    (``spread``: real sets are often sorted by class, so their first rows are few classes)."""
    mask = np.zeros(total, dtype=bool)
    if spread and 1 < wanted < total:
        mask[np.round(np.linspace(0, total - 1, wanted)).astype(int)] = True
    else:
        mask[:wanted] = True
    return mask


def set_stats(
    shard_set, extractor, *, batch_size: int, max_images: int | None, spread: bool = False
) -> GaussianStats:
    """Feature mean and covariance of a shard set: all its images, or ``max_images`` of them
    (the first ones, or evenly spaced ones with ``spread``)."""
    total = read_manifest(shard_set).num_samples
    wanted = total if max_images is None else min(total, max_images)
    rows, start = _chosen_rows(total, wanted, spread), 0
    accumulator = StatsAccumulator()
    with progress(total=wanted, desc=f"{extractor.metric} {shard_set}", unit="img") as bar:
        for images, _ in iter_batches(shard_set, batch_size):
            chosen = images[torch.from_numpy(rows[start : start + len(images)])]
            start += len(images)
            if len(chosen):
                accumulator.add(extractor(chosen))
                bar.update(len(chosen))
            if accumulator.count >= wanted:
                break
    if accumulator.count < 2:
        raise ValueError(f"{shard_set}: a covariance needs at least 2 images, got {total}")
    return accumulator.result()


def real_stats(
    real_set, extractor, *, batch_size: int, max_images: int | None, cache_dir=None
) -> GaussianStats:
    """``set_stats`` of a real set (evenly spaced images when capped), cached in ``cache_dir``
    (default ``stats_folder()``; never in the set) by the sha256 of its manifest."""
    if is_url(str(real_set)):
        return set_stats(real_set, extractor, batch_size=batch_size, max_images=max_images)
    manifest_sha = sha256_file(Path(real_set) / MANIFEST)
    count = "all" if max_images is None else f"even{max_images}"
    folder = Path(cache_dir) if cache_dir is not None else stats_folder()
    cache = folder / f"{extractor.key}-{manifest_sha}-{count}.npz"
    if cache.is_file():
        return GaussianStats.load(cache)
    stats = set_stats(
        real_set, extractor, batch_size=batch_size, max_images=max_images, spread=True
    )
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        stats.save(cache)
    except OSError as err:  # a read-only cache: measure again next time
        print(f"{cache}: real statistics not cached ({err})", flush=True)
    return stats


def _least(*limits: int | None) -> int | None:
    given = [n for n in limits if n is not None]
    return min(given) if given else None


def measure_fid(
    synthetic,
    real,
    extractor,
    *,
    batch_size: int = 200,
    max_images: int | None = None,
    num_synthetic: int | None = None,
    cache_dir=None,
) -> dict:
    """The Fréchet distance of ``synthetic`` to ``real`` under ``extractor``, as a record:
    {"metric", "value", "n_synthetic", "n_real", "real", and the extractor's identity}.

    The synthetic set contributes its first ``min(max_images, num_synthetic)`` images (what
    generating that many would give: compare generators at one count, since the distance falls
    with the sample size); the real set ``max_images`` evenly spaced ones (all if None), its
    statistics cached in ``cache_dir`` (``real_stats``)."""
    syn_manifest, real_manifest = read_manifest(synthetic), read_manifest(real)
    if extractor.metric == "fd_classifier" and syn_manifest.image_size != real_manifest.image_size:
        raise ValueError(
            f"{synthetic}: images are {syn_manifest.image_size}, the real set's "
            f"{real_manifest.image_size}; classifier features need one size"
        )
    real_gauss = real_stats(
        real, extractor, batch_size=batch_size, max_images=max_images, cache_dir=cache_dir
    )
    syn_gauss = set_stats(
        synthetic, extractor, batch_size=batch_size, max_images=_least(max_images, num_synthetic)
    )
    value = frechet_distance(syn_gauss.mean, syn_gauss.cov, real_gauss.mean, real_gauss.cov)
    return {
        "metric": extractor.metric,
        "value": value,
        "n_synthetic": syn_gauss.count,
        "n_real": real_gauss.count,
        "real": str(real),
        **extractor.identity,
    }


def fid_extractor(config, classifier: str | Path | None, device="cpu"):
    """Inception when ``config.inception_weights`` is set, else the classifier's features."""
    if config.inception_weights:
        return InceptionFeatures(config.inception_weights, config.inception_sha256, device)
    if classifier is None:
        raise ValueError(
            "no feature extractor: set fid.inception_weights (or --inception) for FID, or "
            "give --classifier CHECKPOINT for the classifier-feature Fréchet distance"
        )
    return ClassifierFeatures(classifier, device)
