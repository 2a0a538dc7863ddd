"""The two detector protocols, their registry, and the finite-score guard.

- ``Detector`` (eleven of the twelve): ``fit(bank)`` on ID activations, then ``score(h)`` on
  penultimate features ``h`` alone (as pytorch-ood's ``fit``/``predict``): ``fit`` keeps the
  last layer (W, b) and everything else it needs; logits are ``h @ W.T + b``.
- ``InputDetector`` (ODIN): needs the classifier and the images, ``score_batch(model, images)``;
  ``sio evaluate --run``, ``sio evaluate --model`` and ``Evaluator`` run it.

Registering a class (``@DETECTORS.register("name")``) sets its ``name``; its settings come from
the ``evaluate.<name>`` section of the config, whose fields are its constructor's arguments
(``from_config``, one for all). A detector registered in Python (a module named in
``evaluate.plugins``) is nameable in ``evaluate.detectors``.

Scores are higher for more in-distribution and must be finite: a detector that cannot give
finite scores raises ``DetectorError`` naming the detector, the dataset and the cause.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools

import numpy as np
import torch

from sio.core.registry import Registry
from sio.evaluate.activations import ActivationBank, fc_logits
from sio.evaluate.config import EvaluateConfig
from sio.evaluate.detectors.parity import parity_arguments

DETECTORS: Registry = Registry("detector", name_attribute="name")

# float64 values per block: 8 MB, a few thousand rows of a few hundred features
BLOCK_VALUES = 2**20


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

    name = "unregistered"
    search_grid: dict[str, tuple] = {}

    @classmethod
    def from_config(cls, config: EvaluateConfig):
        """The detector with the settings of ``config.<name>`` (a settings dataclass whose
        fields are the constructor's keyword arguments; no such section: the defaults), and
        with ``config.parity`` openood, OpenOOD v1.5's quirks (``parity.OPENOOD``)."""
        section = getattr(config, cls.name, None)
        settings = {}
        if section is not None and dataclasses.is_dataclass(section):
            settings = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
        # evaluate.parity: openood sets OpenOOD's quirks over the settings (parity.py)
        return cls(**{**settings, **parity_arguments(cls.name, config.parity)})

    @classmethod
    def search_settings(cls, bank: ActivationBank) -> list[dict]:
        """The candidate settings for ``bank``, in grid order."""
        return grid_settings(cls.search_grid)


class DetectorError(ValueError):
    """A detector that cannot give finite scores; the message names detector, dataset, cause."""


def detector_error(name: str, dataset: str, cause: str) -> DetectorError:
    return DetectorError(f"detector {name} on {dataset}: {cause}")


class Detector(Searchable, abc.ABC):
    """``fit`` keeps the last layer and learns what the detector needs from ID activations
    (``fit_bank``; nothing, for logit scores); ``score`` maps penultimate features to one score
    per row, higher = more in-distribution, with no bank needed any more."""

    def fit(self, bank: ActivationBank) -> Detector:
        self.fc_weight, self.fc_bias = bank.fc_weight, bank.fc_bias
        self.fit_bank(bank)
        return self

    def fit_bank(self, bank: ActivationBank) -> None:
        """What the detector learns from the ID activations (nothing, by default)."""

    def logits(self, features: np.ndarray) -> np.ndarray:
        """z = h @ W.T + b, float64 (see ``fc_logits``)."""
        return fc_logits(self.fc_weight, self.fc_bias, features)

    def score(self, features: np.ndarray, *legacy) -> np.ndarray:
        """Scores of the rows of ``features`` (``score(bank, features)`` still works: the bank
        is not needed after ``fit``)."""
        if legacy:
            features = legacy[0]
        if not hasattr(self, "fc_weight"):
            raise detector_error(self.name, "its input", "score() needs fit(bank) first")
        features = np.asarray(features)
        step = self.score_rows()
        if step is None or len(features) <= step:
            return self.score_features(features)
        out = np.empty(len(features))
        for start in range(0, len(features), step):
            out[start : start + step] = self.score_features(features[start : start + step])
        return out

    def score_rows(self) -> int | None:
        """Rows scored at a time (None: all at once): those whose float64 logits fill a block
        of ``BLOCK_VALUES``, so no N x K array is held for all N rows (1,048 rows at K =
        1,000; a CIFAR-sized set is one block) and a block's logits are reduced while they
        are still in the cores' caches. Each row's score is its own; only the float32
        product's rounding may differ in the last bit from a product over all rows."""
        return max(1, BLOCK_VALUES // max(1, len(self.fc_bias)))

    @abc.abstractmethod
    def score_features(self, features: np.ndarray) -> np.ndarray: ...

    def info(self) -> dict:
        """Settings and fitted values worth recording in results.json (JSON-ready)."""
        return {}


class InputDetector(Searchable, abc.ABC):
    """A detector that needs the classifier and its input images (ODIN's input gradients)."""

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


def finite_scores(detector: Detector, bank, features: np.ndarray, dataset: str) -> np.ndarray:
    """``detector.score`` on ``features``; raises ``DetectorError`` on any NaN or inf (``bank``
    is unused, kept for the callers that pass it)."""
    return check_finite(detector.name, dataset, detector.score(features), features)


# --- shared formulas --------------------------------------------------------------------------


def energy(logits: np.ndarray) -> np.ndarray:
    """Negative energy at T = 1, logsumexp_k z_k, in float64: ``torch.logsumexp`` (the max
    shifted out, as ``scipy.special.logsumexp``, to its last bit or two on every test), about
    2.5x numpy's max / exp / sum over the short rows of an N x K array."""
    return torch.logsumexp(as_rows(logits), dim=1).numpy()


def as_rows(logits: np.ndarray) -> torch.Tensor:
    """An N x K array as a float64 torch tensor (shared, when it is one already): the N x K
    work after the logits runs in torch, whose reductions over short rows (max, sum) took
    a third to a half of numpy's time on the reference machine."""
    return torch.from_numpy(np.ascontiguousarray(logits, np.float64))


def split_rows(name: str, bank: ActivationBank, split: str) -> np.ndarray:
    """The ID ``split`` features that detector ``name`` fits on; an empty split is an error."""
    features = bank.id_features[split]
    if len(features) == 0:
        raise detector_error(name, f"id.{split}", f"the ID {split} set is empty; nothing to fit")
    return features


# --- streaming statistics (fits that widen rows to float64 a block at a time) ---------------


def float64_blocks(features: np.ndarray):
    """(rows, a float64 copy of those rows), a block of about ``BLOCK_VALUES`` values at a
    time: a fit never holds a float64 copy of all of ``features``."""
    step = max(1, BLOCK_VALUES // max(1, features.shape[1]))
    for start in range(0, len(features), step):
        rows = slice(start, min(start + step, len(features)))
        yield rows, np.array(features[rows], dtype=np.float64)


def predicted_classes(weight: np.ndarray, bias: np.ndarray, features: np.ndarray) -> np.ndarray:
    """argmax_k z_k of every row, the logits taken a block of rows at a time."""
    predicted = np.empty(len(features), np.int64)
    step = max(1, BLOCK_VALUES // max(1, len(bias)))
    for start in range(0, len(features), step):
        rows = slice(start, min(start + step, len(features)))
        predicted[rows] = fc_logits(weight, bias, features[rows]).argmax(axis=1)
    return predicted


def class_means(name: str, features: np.ndarray, labels: np.ndarray, classes: int, what: str):
    """(row counts, float64 K x D means) of ``features`` by ``labels`` (rows labelled -1 left
    out); a class with no rows is an error naming detector ``name`` and ``what`` rows lack."""
    sums = torch.zeros((classes, features.shape[1]), dtype=torch.float64)
    for rows, block in float64_blocks(features):
        # each row added to its class's sum in row order (``index_add_``: 14x numpy's
        # sort + ``reduceat`` at 1,000 classes, whose segments are then a row or two)
        block_labels = labels[rows]
        keep = block_labels >= 0
        index = torch.from_numpy(block_labels[keep].astype(np.int64, copy=False))
        sums.index_add_(0, index, torch.from_numpy(block[keep]))
    sums = sums.numpy()
    counts = np.bincount(labels[labels >= 0], minlength=classes)
    if (counts == 0).any():
        empty = int(np.argmin(counts))
        raise detector_error(name, "id.train", f"class {empty} has no {what}")
    return counts, sums / counts[:, None]


def centred_scatter(
    features: np.ndarray, centres: np.ndarray, labels: np.ndarray | None = None
) -> np.ndarray:
    """sum_i (h_i - c_i)^T (h_i - c_i) in float64, c_i = ``centres`` (one vector) or
    ``centres[labels[i]]``, a block of rows at a time (no centred copy of all rows)."""
    scatter = np.zeros((features.shape[1], features.shape[1]))
    for rows, block in float64_blocks(features):
        block -= centres if labels is None else centres[labels[rows]]
        scatter += block.T @ block
    return scatter
