"""Residual: the norm of h outside the principal subspace of ID features (ViM's residual alone)."""

from __future__ import annotations

import numpy as np

from sio.evaluate.config import ResidualSettings
from sio.evaluate.detectors.base import (
    DETECTORS,
    Detector,
    centred_scatter,
    detector_error,
    float64_blocks,
    split_rows,
)
from sio.evaluate.detectors.features import symmetric_eigh, vim_dim

# OpenOOD v1.5 configs/postprocessors/residual.yml: dim 512 (meant for 2,048-wide features)
OPENOOD_DIM = 512


def residual_dim(configured: int | None, width: int, rule: str = "sio") -> int:
    """The configured dim, else OpenOOD's 512 where D > 512 (rule ``openood``: always), else
    VIM's rule (``vim_dim``)."""
    if configured is not None:
        return configured
    if rule == "openood" or width > OPENOOD_DIM:
        return OPENOOD_DIM
    return vim_dim(None, width)


@DETECTORS.register("residual")
class Residual(Detector):
    """Residual (Wang et al., "ViM: out-of-distribution with virtual-logit matching", CVPR
    2022, its baseline): u = -pinv(W) b; R = the eigenvectors of the uncentred covariance of
    h_fit - u beyond the top ``dim`` (``eigh``, float64, a block of rows at a time); score =
    -||(h - u) R||.

    Deliberate differences from OpenOOD v1.5: the principal space is fitted on ID train, as
    the paper (OpenOOD fits on ID val; ``Residual(split="val")`` does); dim defaults to 512
    only where D > 512 (OpenOOD's 512 leaves a 512-wide ResNet-18 no residual, every score 0),
    else VIM's rule; dim >= D is an error (OpenOOD: an empty residual, every score 0).
    ``evaluate.parity: openood`` gives OpenOOD's: ``split="val"``, ``dim_rule="openood"``
    (dim 512 unless configured).
    """

    def __init__(
        self, dim: int | None = ResidualSettings.dim, split: str = "train", dim_rule: str = "sio"
    ):
        if split not in ("train", "val"):
            raise ValueError(f"residual split is train or val, got {split!r}")
        if dim_rule not in ("sio", "openood"):
            raise ValueError(f"residual dim_rule is sio or openood, got {dim_rule!r}")
        self.configured_dim, self.split, self.dim_rule = dim, split, dim_rule

    def fit_bank(self, bank):
        width = bank.fc_weight.shape[1]
        self.dim = residual_dim(self.configured_dim, width, self.dim_rule)
        if not 1 <= self.dim < width:
            raise detector_error(
                self.name,
                f"id.{self.split}",
                f"dim {self.dim} must be in [1, D) for features of width D = {width}: a "
                "principal space that large leaves no residual; set evaluate.residual.dim below D",
            )
        rows = split_rows(self.name, bank, self.split)
        weight = bank.fc_weight.astype(np.float64)
        self.origin = -np.linalg.pinv(weight) @ bank.fc_bias.astype(np.float64)
        covariance = centred_scatter(rows, self.origin) / len(rows)
        values, vectors = symmetric_eigh(covariance)
        self.residual_space = vectors[:, np.argsort(values)[::-1][self.dim :]]

    def score_features(self, features):
        out = np.empty(len(features))
        for rows, h in float64_blocks(features):
            out[rows] = -np.linalg.norm((h - self.origin) @ self.residual_space, axis=1)
        return out

    def info(self):
        return {"dim": self.dim, "split": self.split}
