"""KNN: distance to the k-th nearest ID train feature, exact, with faiss or a chunked torch search.

faiss is optional (``pip install faiss-cpu``); without it the torch search gives the same
distances (up to float32 rounding) with one matrix product per chunk of queries.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from sio.evaluate.config import KnnSettings
from sio.evaluate.detectors.base import DETECTORS, Detector, detector_error, split_rows

# Queries per torch chunk: a chunk x N float32 similarity matrix (1024 x 50,000 is 200 MB).
QUERY_CHUNK = 1024
NORM_FLOOR = 1e-12


# rows normalised at a time (unit_rows): a few MB, so no N x D temporary beside the output
UNIT_ROWS = 4096


def unit_rows(features: np.ndarray, openood: bool = False) -> np.ndarray:
    """h / max(||h||, 1e-12) in float32: a zero row stays zero (OpenOOD: h/||h|| + 1e-10, so
    0/0 = NaN); ``openood``: OpenOOD's h / ||h|| + 1e-10 for rows with a norm. A block of
    rows at a time into the one output (``np.linalg.norm`` squares all its input first)."""
    out = np.empty(features.shape, np.float32)
    for start in range(0, len(features), UNIT_ROWS):
        block = np.asarray(features[start : start + UNIT_ROWS], np.float32)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        np.divide(block, np.maximum(norms, NORM_FLOOR), out=out[start : start + len(block)])
    if openood:
        out += np.float32(1e-10)
    return out


def unit_blocks(features: np.ndarray, openood: bool = False):
    """``unit_rows`` of ``features`` a block of rows at a time (for an index that copies)."""
    for start in range(0, len(features), UNIT_ROWS):
        yield unit_rows(features[start : start + UNIT_ROWS], openood)


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


class TorchSearch:
    """Exact k-th nearest squared L2 distance: ||q||^2 + ||t||^2 - 2 q.t, top-k per chunk."""

    name = "torch"

    def __init__(self, reference: np.ndarray):
        self.reference = torch.from_numpy(reference)
        # no N x D square of the reference: its row norms, squared
        self.half_sq_norms = 0.5 * torch.linalg.vector_norm(self.reference, dim=1).square_()

    def kth_sq_distance(self, queries: np.ndarray, k: int) -> np.ndarray:
        out = np.empty(len(queries), np.float64)
        with torch.no_grad():
            for start in range(0, len(queries), QUERY_CHUNK):
                chunk = torch.from_numpy(queries[start : start + QUERY_CHUNK])
                # nearest = largest q.t - ||t||^2 / 2; d^2 = ||q||^2 - 2 * that
                closeness = (chunk @ self.reference.T).sub_(self.half_sq_norms)
                kth = torch.topk(closeness, k, dim=1, sorted=False).values.min(dim=1).values
                sq = (chunk * chunk).sum(dim=1) - 2 * kth
                out[start : start + len(chunk)] = sq.clamp_min(0).double().numpy()
        return out


class FaissSearch:
    """Exact search with faiss's ``IndexFlatL2`` (OpenOOD's), which returns squared distances."""

    name = "faiss"

    def __init__(self, reference):
        """``reference``: the unit rows, or an iterable of blocks of them."""
        import faiss

        self.index = None
        blocks = [reference] if isinstance(reference, np.ndarray) else reference
        for block in blocks:  # the index holds its own copy: added a block at a time
            if self.index is None:
                self.index = faiss.IndexFlatL2(block.shape[1])
            self.index.add(block)

    def kth_sq_distance(self, queries: np.ndarray, k: int) -> np.ndarray:
        distances, _ = self.index.search(queries, k)
        kth = distances[:, k - 1].astype(np.float64)
        # faiss answers a NaN query with FLT_MAX (3.4e38), which would pass as a finite score
        bad = ~(kth < 1e30)
        if bad.any():
            raise ValueError(f"row {int(np.argmax(bad))}: faiss found no neighbour (NaN or inf)")
        return np.maximum(kth, 0.0)


@DETECTORS.register("knn")
class KNN(Detector):
    """Deep nearest neighbours (Sun et al., "Out-of-distribution detection with deep nearest
    neighbors", ICML 2022): h normalised to unit L2 norm, score = -(squared) L2 distance to
    the k-th nearest normalised ID train feature (k = 50), exact search over all of ID train.
    Deliberate difference: a zero feature vector stays zero (distance 1 to every unit vector)
    instead of OpenOOD's NaN (its h / ||h|| + 1e-10 divides 0 by 0). Rows with NaN or inf are
    refused, naming the row (faiss would silently return FLT_MAX for them).
    ``KNN(openood_normalizer=True)`` (``evaluate.parity: openood``) adds OpenOOD's 1e-10 to
    every normalised entry.
    """

    # OpenOOD v1.5 configs/postprocessors/knn.yml, postprocessor_sweep.K_list
    search_grid = {"k": (50, 100, 200, 500, 1000)}

    def __init__(
        self,
        k: int = KnnSettings.k,
        backend: str = KnnSettings.backend,
        openood_normalizer: bool = False,
    ):
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"knn backend is auto, faiss or torch, got {backend!r}")
        self.k, self.backend, self.openood_normalizer = k, backend, openood_normalizer

    @classmethod
    def search_settings(cls, bank):
        """The grid's k up to the number of ID train samples ([]: no search, the configured k)."""
        train = len(bank.id_features["train"])
        return [{"k": k} for k in cls.search_grid["k"] if k <= train]

    def fit_bank(self, bank):
        train = split_rows(self.name, bank, "train")
        if self.k > len(train):
            raise detector_error(
                self.name, "id.train", f"k = {self.k} exceeds the {len(train)} ID train samples"
            )
        use_faiss = self.backend == "faiss" or (self.backend == "auto" and faiss_available())
        if use_faiss and not faiss_available():
            raise detector_error(
                self.name, "id.train", "backend faiss asked for, but faiss is not installed"
            )
        if use_faiss:
            self.search = FaissSearch(unit_blocks(train, self.openood_normalizer))
        else:
            self.search = TorchSearch(unit_rows(train, self.openood_normalizer))

    def score_rows(self):
        """All rows at once: the search batches its queries itself, and a bad row is named
        by its place in all of them."""
        return None

    def score_features(self, features):
        bad = ~np.isfinite(features).all(axis=1)
        if bad.any():
            raise detector_error(
                self.name, "its input", f"row {int(np.argmax(bad))} has NaN or inf features"
            )
        try:
            queries = unit_rows(features, self.openood_normalizer)
            return -self.search.kth_sq_distance(queries, self.k)
        except ValueError as err:
            raise detector_error(self.name, "its input", str(err)) from None

    def info(self):
        return {"k": self.k, "backend": self.search.name}
