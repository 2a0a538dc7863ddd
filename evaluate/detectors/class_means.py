"""Detectors built on per-class means of ID train features: MDS, RMDS (Mahalanobis), SHE.

The means and covariances are float64 sums over blocks of rows (``base.class_means``,
``base.centred_scatter``): no float64 or centred copy of the train features.
"""

from __future__ import annotations

import numpy as np

from sio.evaluate.config import SheSettings
from sio.evaluate.detectors.base import (
    DETECTORS,
    Detector,
    centred_scatter,
    class_means,
    detector_error,
    float64_blocks,
    predicted_classes,
    split_rows,
)
from sio.evaluate.detectors.features import symmetric_eigh


def whitening(name: str, covariance: np.ndarray, what: str) -> np.ndarray:
    """T with T T^T = pinv(covariance) (D x r): the eigenvectors of the eigenvalues above
    D eps max(eigenvalue), scipy's ``pinvh`` cut-off, each divided by the root of its
    eigenvalue; a zero covariance is an error."""
    values, vectors = symmetric_eigh(covariance)
    kept = values > len(values) * np.finfo(np.float64).eps * max(values.max(), 0.0)
    if not kept.any():
        raise detector_error(name, "id.train", f"the {what} covariance is zero")
    return vectors[:, kept] / np.sqrt(values[kept])


def squared_distances(features: np.ndarray, origin, transform, centres) -> np.ndarray:
    """N x K: ||(h - mu_k) T||^2 for the whitened ``centres`` (mu_k - origin) T, from
    (h - origin) T a block of rows at a time; h is centred on ``origin`` (the train mean)
    first, so the expansion |x|^2 - 2 x.m + |m|^2 loses little to cancellation."""
    out = np.empty((len(features), len(centres)))
    centre_norms = (centres * centres).sum(axis=1)
    for rows, block in float64_blocks(features):
        x = (block - origin) @ transform
        out[rows] = (x * x).sum(axis=1, keepdims=True) - 2 * x @ centres.T + centre_norms
    return np.maximum(out, 0.0)


@DETECTORS.register("mds")
class MDS(Detector):
    """Mahalanobis distance (Lee et al., "A simple unified framework for detecting
    out-of-distribution samples and adversarial attacks", NeurIPS 2018), OpenOOD v1.5's
    ``mds`` (no input noise, one layer): mu_k = mean ID train h of class k, Sigma = the tied
    covariance sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T / N, score =
    max_k -(h - mu_k)^T pinv(Sigma) (h - mu_k). No search (OpenOOD's APS is off).

    float64 statistics (OpenOOD: float32 features through sklearn); the pseudo-inverse cut-off
    is scipy's ``pinvh`` (sklearn's ``precision_``). A class with no ID train rows is an error
    (OpenOOD: a NaN mean, NaN scores).
    """

    def fit_bank(self, bank):
        train = split_rows(self.name, bank, "train")
        labels, classes = bank.id_labels["train"], len(bank.fc_bias)
        self.counts, self.means = class_means(self.name, train, labels, classes, "ID train rows")
        self.origin = self.counts @ self.means / self.counts.sum()
        self.scatter = centred_scatter(train, self.means, labels)
        self.transform = whitening(self.name, self.scatter / len(train), "class-centred")
        self.centres = (self.means - self.origin) @ self.transform

    def score_features(self, features):
        distances = squared_distances(features, self.origin, self.transform, self.centres)
        return -distances.min(axis=1)

    def info(self):
        return {"rank": int(self.transform.shape[1])}


@DETECTORS.register("rmds")
class RMDS(MDS):
    """Relative Mahalanobis distance (Ren et al., "A simple fix to Mahalanobis distance for
    improving near-OOD detection", arXiv 2021), OpenOOD v1.5's ``rmds``: MDS's class terms
    relative to a background Gaussian of all ID train h (mean mu_0, covariance Sigma_0):
    score = max_k [-MD_k(h)] + MD_0(h). Sigma_0 is the total scatter, the tied scatter plus
    sum_k n_k (mu_k - mu_0)(mu_k - mu_0)^T (the same sum as centring every row on mu_0, without
    a second pass), over N. Same float64 statistics and departures as MDS.
    """

    def fit_bank(self, bank):
        super().fit_bank(bank)
        spread = self.means - self.origin
        total = self.scatter + (spread.T * self.counts) @ spread
        self.background = whitening(self.name, total / self.counts.sum(), "ID train")

    def score_features(self, features):
        at_mean = np.zeros((1, self.background.shape[1]))  # mu_0 itself, whitened
        background = squared_distances(features, self.origin, self.background, at_mean)[:, 0]
        return super().score_features(features) + background


@DETECTORS.register("she")
class SHE(Detector):
    """Simplified Hopfield energy (Zhang et al., "Out-of-distribution detection based on
    in-distribution data patterns memorization with modern Hopfield energy", ICLR 2023), as
    OpenOOD v1.5's ``she``: m_k = mean ID train h of the rows labelled k *and* predicted k,
    score = <h, m_yhat> for yhat = argmax z (``metric: inner_product``; ``euclidean``:
    -||h - m_yhat||, ``cosine``: cos(h, m_yhat)). No search (OpenOOD's APS is off).

    A class with no correctly classified ID train row is an error (OpenOOD: a NaN pattern,
    NaN scores for the rows predicted as it). Patterns are float64 means.
    """

    def __init__(self, metric: str = SheSettings.metric):
        if metric not in ("inner_product", "euclidean", "cosine"):
            raise ValueError(f"she metric is inner_product, euclidean or cosine, got {metric!r}")
        self.metric = metric

    def fit_bank(self, bank):
        train = split_rows(self.name, bank, "train")
        labels = bank.id_labels["train"]
        predicted = predicted_classes(bank.fc_weight, bank.fc_bias, train)
        correct = np.where(predicted == labels, labels, -1)
        what = "correctly classified ID train rows"
        _, self.patterns = class_means(self.name, train, correct, len(bank.fc_bias), what)

    def score_features(self, features):
        out = np.empty(len(features))
        predicted = predicted_classes(self.fc_weight, self.fc_bias, features)
        for rows, h in float64_blocks(features):
            pattern = self.patterns[predicted[rows]]
            if self.metric == "euclidean":
                out[rows] = -np.linalg.norm(h - pattern, axis=1)
                continue
            out[rows] = (h * pattern).sum(axis=1)
            if self.metric == "cosine":
                norms = np.linalg.norm(h, axis=1) * np.linalg.norm(pattern, axis=1)
                out[rows] /= np.maximum(norms, 1e-8)
        return out

    def info(self):
        return {"metric": self.metric}
