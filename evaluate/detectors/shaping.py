"""Activation shaping, then the energy of the reshaped features: ASH, SCALE, VRA.

Each reshapes the pooled penultimate vector h (one row at a time, a block of rows per product)
and scores logsumexp(W h' + b), as OpenOOD v1.5's ``ASHNet``, ``ScaleNet`` and VRA postprocessor.
"""

from __future__ import annotations

import abc

import numpy as np
import torch

from sio.evaluate.config import AshSettings, ScaleSettings, VraSettings
from sio.evaluate.detectors.base import DETECTORS, Detector, detector_error, energy, split_rows

# rows reshaped (and multiplied) at a time
SHAPE_ROWS = 2048
# OpenOOD v1.5 configs/postprocessors/{ash,scale}.yml, postprocessor_sweep.percentile_list
PERCENTILES = (65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)


def kept_count(width: int, percentile: float) -> int:
    """k = D - round(D p / 100) entries kept (round half to even, as ``np.round``)."""
    return width - int(np.round(width * percentile / 100.0))


class Shaping(Detector):
    """A detector that reshapes h (``shape``) and scores the energy of W shape(h) + b."""

    @abc.abstractmethod
    def shape(self, h: np.ndarray) -> np.ndarray:
        """h reshaped, row by row, in h's own float type."""

    def score_features(self, features):
        logits = np.empty((len(features), len(self.fc_bias)))
        for start in range(0, len(features), SHAPE_ROWS):
            rows = slice(start, start + SHAPE_ROWS)
            logits[rows] = self.logits(self.shape(features[rows]))
        return energy(logits)


class TopShaping(Shaping):
    """A shaping that keeps the top k = D - round(D p / 100) entries of each h (``percentile``
    p, set by the subclass)."""

    @classmethod
    def search_settings(cls, bank):
        """The grid's percentiles that keep at least one of the D entries."""
        width = bank.fc_weight.shape[1]
        return [
            {"percentile": p} for p in cls.search_grid["percentile"] if kept_count(width, p) >= 1
        ]

    def fit_bank(self, bank):
        width = bank.fc_weight.shape[1]
        self.kept = kept_count(width, self.percentile)
        if self.kept < 1:
            raise detector_error(
                self.name,
                "its input",
                f"percentile {self.percentile} keeps none of the D = {width} features",
            )

    def info(self):
        return {"percentile": self.percentile, "kept": self.kept}


@DETECTORS.register("ash")
class ASH(TopShaping):
    """ASH-B (Djurisic et al., "Extremely simple activation shaping for out-of-distribution
    detection", ICLR 2023) on the pooled penultimate vector h, as OpenOOD v1.5 applies it:
    the top k = D - round(D p / 100) entries of h are set to sum_j h_j / k and the rest to 0,
    score = logsumexp(W ASH-B(h) + b); p = 90 (``ash: {percentile: 90}``).

    The paper shapes the activation map before global pooling; sio, like OpenOOD, has only the
    pooled vector. Among equal entries at the k-th place, which ones are kept is arbitrary (as
    OpenOOD's ``topk``). A percentile that keeps no entry is an error (OpenOOD: 0 / 0).
    """

    # OpenOOD v1.5 configs/postprocessors/ash.yml
    search_grid = {"percentile": PERCENTILES}

    def __init__(self, percentile: float = AshSettings.percentile):
        self.percentile = percentile

    def shape(self, h):
        # torch's topk: about 4x numpy's argpartition per row of a few hundred entries
        t = torch.from_numpy(np.ascontiguousarray(h))
        fill = (t.sum(dim=1, dtype=torch.float64) / self.kept).to(t.dtype)
        where = torch.topk(t, self.kept, dim=1, sorted=False).indices
        shaped = torch.zeros_like(t).scatter_(1, where, fill[:, None].expand(-1, self.kept))
        return shaped.numpy()


@DETECTORS.register("scale")
class SCALE(TopShaping):
    """SCALE (Xu et al., "Scaling for training time and post-hoc out-of-distribution detection
    enhancement", ICLR 2024): s1 = sum_j h_j, s2 = the sum of the top k = D - round(D p / 100)
    entries, score = logsumexp(W (h exp(s1 / s2)) + b); h itself is not pruned; p = 85
    (``scale: {percentile: 85}``), on the pooled vector as OpenOOD v1.5's ``ScaleNet``.
    Deliberate difference: a row whose top entries sum to 0 (a dead-ReLU h = 0) is left as it
    is (OpenOOD: 0 / 0, NaN).
    """

    # OpenOOD v1.5 configs/postprocessors/scale.yml
    search_grid = {"percentile": PERCENTILES}

    def __init__(self, percentile: float = ScaleSettings.percentile):
        self.percentile = percentile

    def shape(self, h):
        t = torch.from_numpy(np.ascontiguousarray(h))
        top = torch.topk(t, self.kept, dim=1, sorted=False).values
        top_sum = top.sum(dim=1, dtype=torch.float64).numpy()
        ratio = np.zeros(len(h))
        np.divide(h.sum(axis=1, dtype=np.float64), top_sum, out=ratio, where=top_sum != 0)
        return h * np.exp(ratio)[:, None].astype(h.dtype)


@DETECTORS.register("vra")
class VRA(Shaping):
    """VRA (Xu et al., "VRA: variational rectified activation for out-of-distribution
    detection", NeurIPS 2023), OpenOOD v1.5's form: t_low, t_high = the ``percentile_low`` and
    ``percentile_high`` percentiles of all ID val activations (10 and 90), score =
    logsumexp(W clip(h, t_low, t_high) + b). Low activations are raised to t_low, as OpenOOD
    does; the paper's other piecewise variants (VRA+, with a shift of the middle part) are not
    implemented.
    """

    # OpenOOD v1.5 configs/postprocessors/vra.yml (percentile_high_list first, as its order)
    search_grid = {
        "percentile_high": (85.0, 90.0, 95.0, 99.0),
        "percentile_low": (1.0, 5.0, 10.0, 15.0),
    }

    def __init__(
        self,
        percentile_high: float = VraSettings.percentile_high,
        percentile_low: float = VraSettings.percentile_low,
    ):
        self.percentile_high, self.percentile_low = percentile_high, percentile_low

    def fit_bank(self, bank):
        val = split_rows(self.name, bank, "val")
        low, high = np.percentile(val, [self.percentile_low, self.percentile_high])
        self.low, self.high = float(low), float(high)

    def shape(self, h):
        return np.clip(h, self.low, self.high)

    def info(self):
        return {
            "percentile_low": self.percentile_low,
            "percentile_high": self.percentile_high,
            "low": self.low,
            "high": self.high,
        }
