"""The two detector protocols, their registry, and the finite-score guard.

- ``Detector`` (eleven of the twelve): ``fit(bank)`` on ID activations, ``score(bank, h)`` on
  penultimate features ``h``; logits are ``h @ W.T + b`` with the bank's last layer.
- ``InputDetector`` (ODIN): needs the classifier and the images, ``score_batch(model, images)``;
  only ``sio evaluate --run`` (and ``sio run``) can run it.

Scores are higher for more in-distribution and must be finite: a detector that cannot give
finite scores raises ``DetectorError`` naming the detector, the dataset and the cause.
"""

from __future__ import annotations

import abc
import itertools

import numpy as np
from scipy.special import logsumexp

from sio.core.registry import Registry
from sio.evaluate.activations import ActivationBank
from sio.evaluate.config import EvaluateConfig

DETECTORS: Registry = Registry("detector")


def grid_settings(grid: dict[str, tuple]) -> list[dict]:
    """The cartesian product of ``grid`` in OpenOOD v1.5's order (``recursive_generator``: the
    first key varies fastest), as {setting: value} dicts; [] for an empty grid."""
    if not grid:
        return []
    names = list(grid)
    combos = itertools.product(*(grid[name] for name in reversed(names)))
    return [dict(zip(names, reversed(combo), strict=True)) for combo in combos]


class Searchable:
    """``search_grid``: OpenOOD v1.5's ``postprocessor_sweep`` for a detector whose APS is on,
    keyed by its ``evaluate.<name>`` config fields; {} = no search (the settings are kept)."""

    search_grid: dict[str, tuple] = {}

    @classmethod
    def search_settings(cls, bank: ActivationBank) -> list[dict]:
        """The candidate settings for ``bank``, in grid order."""
        return grid_settings(cls.search_grid)


class DetectorError(ValueError):
    """A detector that cannot give finite scores; the message names detector, dataset, cause."""


def detector_error(name: str, dataset: str, cause: str) -> DetectorError:
    return DetectorError(f"detector {name} on {dataset}: {cause}")


class Detector(Searchable, abc.ABC):
    """``fit`` learns what the detector needs from ID activations (nothing, for logit scores);
    ``score`` maps penultimate features to one score per row, higher = more in-distribution."""

    name = "detector"

    @classmethod
    def from_config(cls, config: EvaluateConfig) -> Detector:
        """The detector with its settings from ``config`` (none, unless overridden)."""
        return cls()

    def fit(self, bank: ActivationBank) -> Detector:
        return self

    @abc.abstractmethod
    def score(self, bank: ActivationBank, features: np.ndarray) -> np.ndarray: ...

    def info(self) -> dict:
        """Settings and fitted values worth recording in results.json (JSON-ready)."""
        return {}


class InputDetector(Searchable, abc.ABC):
    """A detector that needs the classifier and its input images (ODIN's input gradients)."""

    name = "input-detector"

    @classmethod
    def from_config(cls, config: EvaluateConfig) -> InputDetector:
        return cls()

    @abc.abstractmethod
    def score_batch(self, model, images) -> np.ndarray:
        """Scores for one batch of uint8 images (N x C x H x W) under ``model``."""

    def info(self) -> dict:
        return {}


def needs_images(name: str) -> bool:
    """True for detectors that need the model and images (an unknown name raises)."""
    return issubclass(DETECTORS.get(name), InputDetector)


def check_finite(name: str, dataset: str, scores: np.ndarray, features=None) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    bad = ~np.isfinite(scores)
    if bad.any():
        cause = "numerical overflow or an invalid fit"
        if features is not None and not np.isfinite(features).all():
            cause = "its input features contain NaN or inf"
        raise DetectorError(
            f"detector {name} gave {int(bad.sum())} non-finite scores on {dataset} ({cause})"
        )
    return scores


def finite_scores(
    detector: Detector, bank: ActivationBank, features: np.ndarray, dataset: str
) -> np.ndarray:
    """``detector.score`` on ``features``; raises ``DetectorError`` on any NaN or inf."""
    return check_finite(detector.name, dataset, detector.score(bank, features), features)


# --- shared formulas --------------------------------------------------------------------------


def energy(logits: np.ndarray) -> np.ndarray:
    """Negative energy at T = 1, logsumexp_k z_k, computed stably in float64."""
    return logsumexp(np.asarray(logits, np.float64), axis=1)


def split_rows(name: str, bank: ActivationBank, split: str) -> np.ndarray:
    """The ID ``split`` features that detector ``name`` fits on; an empty split is an error."""
    features = bank.id_features[split]
    if len(features) == 0:
        raise detector_error(name, f"id.{split}", f"the ID {split} set is empty; nothing to fit")
    return features


def fc_logits(bank: ActivationBank, features: np.ndarray, weight=None) -> np.ndarray:
    """``h @ W.T + b`` in float64, with ``weight`` replacing the bank's W when given."""
    weight = bank.fc_weight if weight is None else weight
    return np.asarray(features, np.float64) @ np.asarray(weight, np.float64).T + bank.fc_bias
