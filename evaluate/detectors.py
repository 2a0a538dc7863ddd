"""Post-hoc OOD detectors. One small class each; ``score`` is higher for more in-distribution.

Every detector is fitted on ID activations (``fit(bank)``) and scores penultimate features
``h`` (``score(bank, h)``); logits are ``h @ W.T + b`` with the bank's last layer. Scores must
be finite: a detector that would produce NaN or inf raises ``DetectorError`` instead.
"""

from __future__ import annotations

import abc

import numpy as np
from scipy.special import logsumexp, softmax

from sio.registry import Registry

from .activations import ActivationBank

DETECTORS: Registry = Registry("detector")


class DetectorError(RuntimeError):
    """A detector that cannot give finite scores; the message names detector and cause."""


class Detector(abc.ABC):
    """``fit`` learns what the detector needs from ID activations (nothing, for logit scores);
    ``score`` maps penultimate features to one score per row, higher = more in-distribution."""

    name = "detector"

    def fit(self, bank: ActivationBank) -> Detector:
        return self

    @abc.abstractmethod
    def score(self, bank: ActivationBank, features: np.ndarray) -> np.ndarray: ...


@DETECTORS.register("msp")
class MSP(Detector):
    """Maximum softmax probability, max_k softmax(z)_k (Hendrycks & Gimpel, ICLR 2017)."""

    name = "msp"

    def score(self, bank, features):
        return softmax(bank.logits(features), axis=1).max(axis=1)


@DETECTORS.register("mls")
class MaxLogit(Detector):
    """Maximum logit, max_k z_k (Hendrycks et al., "Scaling OOD detection", ICML 2022)."""

    name = "mls"

    def score(self, bank, features):
        return bank.logits(features).max(axis=1)


@DETECTORS.register("ebo")
class Energy(Detector):
    """Negative energy at T = 1, logsumexp_k z_k (Liu et al., "Energy-based OOD", NeurIPS 2020)."""

    name = "ebo"

    def score(self, bank, features):
        return logsumexp(bank.logits(features), axis=1)


def fit_detector(name: str, bank: ActivationBank) -> Detector:
    return DETECTORS.get(name)().fit(bank)


def finite_scores(
    detector: Detector, bank: ActivationBank, features: np.ndarray, dataset: str
) -> np.ndarray:
    scores = np.asarray(detector.score(bank, features), dtype=np.float64)
    bad = ~np.isfinite(scores)
    if bad.any():
        raise DetectorError(
            f"detector {detector.name} gave {int(bad.sum())} non-finite scores on {dataset}"
        )
    return scores
