"""OpenMax with libMR's tail fit, reimplemented with numpy and scipy (no libmr to build)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import logsumexp

from sio.evaluate.config import OpenMaxSettings
from sio.evaluate.detectors.base import (
    BLOCK_VALUES,
    DETECTORS,
    Detector,
    detector_error,
    split_rows,
)

# libMR shifts the tail so that its smallest value sits at ``translate_amount`` before fitting:
# 1 in libMR's Python ``MR()`` (libmr.pyx), which OpenOOD uses; 10000 is only the C++ default.
LIBMR_TRANSLATION = 1.0


def weibull_mle(samples: np.ndarray) -> tuple[float, float]:
    """(shape k, scale lambda) maximising the two-parameter Weibull likelihood of ``samples``.

    The shape solves sum x^k ln x / sum x^k - 1/k - mean ln x = 0 (the profile-likelihood
    equation; scale-free, so x is divided by its maximum first), found with Brent's method;
    then lambda = (mean x^k)^(1/k). Needs positive samples with at least two distinct values.
    """
    x = np.asarray(samples, np.float64)
    if x.min() <= 0 or x.max() == x.min():
        raise ValueError("a Weibull fit needs positive samples with at least two distinct values")
    log_y = np.log(x / x.max())  # <= 0, max 0

    def equation(shape: float) -> float:
        weights = np.exp(shape * log_y)
        return weights @ log_y / weights.sum() - 1 / shape - log_y.mean()

    high = 1.0
    while equation(high) < 0:  # g rises from -inf (k -> 0) to -mean(log y) > 0 (k -> inf)
        high *= 2
    shape = brentq(equation, high / 2 if high > 1 else 1e-6, high, xtol=1e-12, rtol=1e-14)
    log_scale = np.log(x.max()) + (logsumexp(shape * log_y) - np.log(len(x))) / shape
    return float(shape), float(np.exp(log_scale))


@dataclass(frozen=True)
class TailModel:
    """libMR's ``FitHigh``: a Weibull on the largest values, shifted so the smallest of them is
    at 1 (``translate_amount``); ``cdf`` is libMR's ``w_score``: the probability that ``x`` is
    an outlier (0 below the shifted origin)."""

    shape: float
    scale: float
    smallest: float

    @classmethod
    def fit(cls, values: np.ndarray, tail_size: int) -> TailModel:
        tail = np.sort(np.asarray(values, np.float64))[-tail_size:]
        shape, scale = weibull_mle(tail - tail[0] + LIBMR_TRANSLATION)
        return cls(shape, scale, float(tail[0]))

    def cdf(self, values: np.ndarray) -> np.ndarray:
        shifted = np.asarray(values, np.float64) - self.smallest + LIBMR_TRANSLATION
        with np.errstate(over="ignore", divide="ignore"):
            power = np.exp(self.shape * (np.log(np.maximum(shifted, 0.0)) - np.log(self.scale)))
        return -np.expm1(-power)  # 1 - exp(-(x / scale)^shape), exactly 0 or 1 at the ends


def distances(logits: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Euclidean distance of every row of ``logits`` to every class mean: N x C."""
    sq = (logits**2).sum(axis=1)[:, None] + (means**2).sum(axis=1)[None, :] - 2 * logits @ means.T
    return np.sqrt(np.maximum(sq, 0.0))


@DETECTORS.register("openmax")
class OpenMax(Detector):
    """OpenMax (Bendale & Boult, "Towards open set deep networks", CVPR 2016), as OpenOOD v1.5:
    per class, the mean logit vector (MAV) of the correctly classified ID train samples and a
    Weibull fitted (libMR ``FitHigh``) to their ``tail_size`` (20) largest distances to it. At
    test time the top ``alpha_rank`` (3) classes, weighted (a + 1 - i) / a, are recalibrated:
    z'_c = z_c (1 - w_c W_c(||z - MAV_c||)), z_unknown = sum_c (z_c - z'_c); score =
    -P(unknown) = -softmax([z', z_unknown])_unknown, computed stably (OpenOOD exponentiates
    float32 logits directly and overflows to inf / inf = NaN above ~88). The Weibull is the
    exact maximum-likelihood fit (libMR's Newton iteration stops at its tolerance; its w_scores
    agree to ~1e-6, tests/data/libmr_w_score.json). The fit takes the train logits a block of
    rows at a time, twice (the means, then each row's distance to its class's mean).
    """

    def __init__(
        self,
        tail_size: int = OpenMaxSettings.tail_size,
        alpha_rank: int = OpenMaxSettings.alpha_rank,
    ):
        self.tail_size, self.alpha_rank = tail_size, alpha_rank

    def fit_bank(self, bank):
        train = split_rows(self.name, bank, "train")
        labels = bank.id_labels["train"]
        classes = bank.fc_weight.shape[0]
        correct, self.means = self.class_means(train, labels, classes)
        distances = self.distances_to_means(train, labels, correct)
        self.tails = []
        for k in range(classes):
            try:
                tail = TailModel.fit(distances[correct & (labels == k)], self.tail_size)
            except ValueError as err:
                raise detector_error(self.name, "id.train", f"class {k}: {err}") from None
            self.tails.append(tail)

    def logit_blocks(self, features: np.ndarray):
        """(rows, float64 logits of those rows), a block of rows at a time: the fit never holds
        the N x K logits of all of ID train."""
        step = max(1, BLOCK_VALUES // max(1, len(self.fc_bias)))
        for start in range(0, len(features), step):
            rows = slice(start, min(start + step, len(features)))
            yield rows, self.logits(features[rows])

    def class_means(self, train, labels, classes):
        """(correctly classified mask, K x K mean logit vectors of those rows per class); a
        class with fewer than 2 is an error."""
        correct = np.zeros(len(train), bool)
        sums, counts = np.zeros((classes, classes)), np.zeros(classes, np.int64)
        for rows, logits in self.logit_blocks(train):
            hits = logits.argmax(axis=1) == labels[rows]
            correct[rows] = hits
            np.add.at(sums, labels[rows][hits], logits[hits])
            counts += np.bincount(labels[rows][hits], minlength=classes)
        if (counts < 2).any():
            k = int(np.argmax(counts < 2))
            raise detector_error(
                self.name,
                "id.train",
                f"class {k} has {counts[k]} correctly classified ID train samples; a "
                "mean activation vector and a Weibull tail need at least 2",
            )
        return correct, sums / counts[:, None]

    def distances_to_means(self, train, labels, correct) -> np.ndarray:
        """||z_i - MAV_{y_i}|| of every correctly classified row (0 for the others)."""
        out = np.zeros(len(train))
        for rows, logits in self.logit_blocks(train):
            hits = correct[rows]
            gap = logits[hits] - self.means[labels[rows][hits]]
            out[np.flatnonzero(hits) + rows.start] = np.linalg.norm(gap, axis=1)
        return out

    def rank_weights(self, logits: np.ndarray) -> np.ndarray:
        """(a + 1 - i) / a for the i-th largest logit, i = 1..a; 0 for the other classes."""
        alpha = min(self.alpha_rank, logits.shape[1])
        weights = np.zeros_like(logits)
        top = np.argsort(-logits, axis=1, kind="stable")[:, :alpha]
        rows = np.arange(len(logits))[:, None]
        weights[rows, top] = (alpha + 1 - np.arange(1, alpha + 1)) / alpha
        return weights

    def score_features(self, features):
        logits = self.logits(features)
        dist = distances(logits, self.means)
        outlier = np.stack([tail.cdf(dist[:, k]) for k, tail in enumerate(self.tails)], axis=1)
        recalibrated = logits * (1 - outlier * self.rank_weights(logits))
        unknown = (logits - recalibrated).sum(axis=1, keepdims=True)
        all_logits = np.concatenate([recalibrated, unknown], axis=1)
        return -np.exp(unknown[:, 0] - logsumexp(all_logits, axis=1))

    def info(self):
        return {
            "tail_size": self.tail_size,
            "alpha_rank": self.alpha_rank,
            "weibull_shape": [t.shape for t in self.tails],
        }
