"""Detectors that compare h with stored ID train rows: NNGuide (a guided nearest-neighbour
bank) and Relation (a relation graph to all of ID train).

Products are taken in the features' own float type (float32 activations in float32, as KNN),
a chunk of queries against a block of train rows at a time (never N x N at once).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sio.evaluate.config import NnguideSettings, RelationSettings
from sio.evaluate.detectors.base import (
    DETECTORS,
    Detector,
    detector_error,
    energy,
    split_rows,
)

NORM_FLOOR = 1e-12
QUERY_CHUNK = 1024
TRAIN_BLOCK = 4096
# Relation's cut-off for small edges (OpenOOD v1.5 and the paper's code: 0.03)
EDGE_THRESHOLD = 0.03


def float_rows(features: np.ndarray) -> torch.Tensor:
    """float32 rows as they are (shared), any other float widened to float64."""
    h = torch.from_numpy(np.ascontiguousarray(features))
    return h if h.dtype in (torch.float32, torch.float64) else h.double()


def unit(h: torch.Tensor) -> torch.Tensor:
    """h / max(||h||, 1e-12): a zero row stays zero (OpenOOD: h / ||h|| + 1e-10, 0 / 0)."""
    return h / torch.linalg.vector_norm(h, dim=1, keepdim=True).clamp_min(NORM_FLOOR)


def bank_rows(total: int, alpha: float, loader_batch: int | None = None) -> np.ndarray:
    """The ID train rows of NNGuide's bank: floor(alpha N) rows (at least 1) spread evenly over
    the file (rows floor(i N / n)); with ``loader_batch`` B, OpenOOD v1.5's: whole batches of B
    rows from the first until more than floor(alpha N) rows are held."""
    size = math.floor(alpha * total)
    if loader_batch is None:
        size = max(1, size)
        return np.arange(size) * total // size
    return np.arange(min(total, loader_batch * (size // loader_batch + 1)))


@DETECTORS.register("nnguide")
class NNGuide(Detector):
    """Nearest neighbour guidance (Park et al., "Nearest neighbor guidance for
    out-of-distribution detection", ICCV 2023): a bank of ID train rows g_j = h_j/||h_j|| E_j
    with E = logsumexp(z); score = E(h) * mean of the k largest <h/||h||, g_j>; k = 100 and
    the bank a fraction alpha = 0.01 of ID train (``nnguide: {k: 100, alpha: 0.01}``). No
    search (OpenOOD's APS is off).

    Deliberate difference: the bank is floor(alpha N) rows spread evenly over ID train (a file
    sorted by class still gives every class its share); OpenOOD v1.5 takes whole loader batches
    from the start of the file until more than floor(alpha N) rows are held
    (``NNGuide(loader_batch=B)`` gives that bank; ``evaluate.parity: openood``: B = 256). A
    zero feature vector stays zero (OpenOOD: NaN). k larger than the bank is an error (faiss
    would pad with -FLT_MAX).
    """

    def __init__(
        self,
        k: int = NnguideSettings.k,
        alpha: float = NnguideSettings.alpha,
        loader_batch: int | None = None,
    ):
        self.k, self.alpha, self.loader_batch = k, alpha, loader_batch

    def fit_bank(self, bank):
        train = split_rows(self.name, bank, "train")
        rows = bank_rows(len(train), self.alpha, self.loader_batch)
        if self.k > len(rows):
            raise detector_error(
                self.name,
                "id.train",
                f"k = {self.k} exceeds the bank's {len(rows)} rows (alpha = {self.alpha} of "
                f"{len(train)} ID train rows)",
            )
        held = train[rows]
        self.guide = unit(float_rows(held)) * torch.from_numpy(energy(self.logits(held)))[:, None]
        self.bank_size = len(rows)

    def score_features(self, features):
        h = float_rows(features)
        guide = self.guide.to(h.dtype)
        out = np.empty(len(h))
        with torch.no_grad():
            for start in range(0, len(h), QUERY_CHUNK):
                chunk = slice(start, start + QUERY_CHUNK)
                similarity = unit(h[chunk]) @ guide.T
                top = torch.topk(similarity, self.k, dim=1, sorted=False).values
                out[chunk] = top.double().mean(dim=1).numpy()
        return out * energy(self.logits(features))

    def info(self):
        return {"k": self.k, "alpha": self.alpha, "bank_rows": self.bank_size}


@DETECTORS.register("relation")
class Relation(Detector):
    """Neural relation graph (Kim et al., "Neural relation graph: a unified framework for
    identifying label noise and outlier data", NeurIPS 2023), OpenOOD v1.5's ``relation``:
    edges to every ID train row j, r_j = max(<h/||h||, h_j/||h_j||>, 0) * <p, p_j>; score =
    sum over the edges with r_j > 0.03 of r_j^power; power = 1 (``relation: {power: 1}``,
    OpenOOD's ``pow``). The train rows are kept as they are with their inverse norms (no
    normalised copy); a zero feature vector stays zero (OpenOOD: h / sqrt(||h||^2 + 1e-10)).
    Scoring is N_query x N_train products, as OpenOOD's.
    """

    # OpenOOD v1.5 configs/postprocessors/relation.yml, pow_list
    search_grid = {"power": (1.0, 2.0, 4.0, 6.0, 8.0)}

    def __init__(self, power: float = RelationSettings.power):
        self.power = power

    def fit_bank(self, bank):
        train = float_rows(split_rows(self.name, bank, "train"))
        self.train = train
        self.inverse_norms = torch.linalg.vector_norm(train, dim=1).clamp_min(NORM_FLOOR)
        self.inverse_norms = self.inverse_norms.reciprocal_()
        self.probs = self.softmax(bank.id_features["train"], train.dtype)

    def softmax(self, features: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """p = softmax(z) of every row (float64, a block of rows at a time) as ``dtype``."""
        probs = torch.empty(len(features), len(self.fc_bias), dtype=dtype)
        for start in range(0, len(features), TRAIN_BLOCK):
            rows = slice(start, start + TRAIN_BLOCK)
            probs[rows] = torch.softmax(torch.from_numpy(self.logits(features[rows])), dim=1)
        return probs

    def score_rows(self):
        """All rows at once: the queries are taken ``QUERY_CHUNK`` at a time, each chunk
        against all of ID train (blocks of another size would add passes over it)."""
        return None

    def score_features(self, features):
        h = float_rows(features).to(self.train.dtype)
        probs = self.softmax(features, self.train.dtype)
        out = np.empty(len(h))
        with torch.no_grad():
            for start in range(0, len(h), QUERY_CHUNK):
                chunk = slice(start, start + QUERY_CHUNK)
                out[chunk] = self.edge_sums(unit(h[chunk]), probs[chunk]).numpy()
        return out

    def edge_sums(self, queries: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """sum_j r_j^power over the edges above the threshold, a block of train rows at a time."""
        total = torch.zeros(len(queries), dtype=torch.float64)
        for start in range(0, len(self.train), TRAIN_BLOCK):
            block = slice(start, start + TRAIN_BLOCK)
            edges = (queries @ self.train[block].T).mul_(self.inverse_norms[block])
            edges.clamp_(min=0).mul_(probs @ self.probs[block].T)
            edges = torch.where(edges > EDGE_THRESHOLD, edges, 0).pow_(self.power)
            total += edges.sum(dim=1, dtype=torch.float64)
        return total

    def info(self):
        return {"power": self.power}
