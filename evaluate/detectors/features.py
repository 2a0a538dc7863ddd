"""Detectors that use the penultimate features h themselves: GradNorm, ReAct, DICE, VIM."""

from __future__ import annotations

import numpy as np
from scipy.special import softmax

from sio.evaluate.config import PercentileSettings
from sio.evaluate.detectors.base import (
    DETECTORS,
    Detector,
    detector_error,
    energy,
    fc_logits,
    split_rows,
)


@DETECTORS.register("gradnorm")
class GradNorm(Detector):
    """GradNorm (Huang et al., "On the importance of gradients for detecting distributional
    shifts in the wild", NeurIPS 2021), OpenOOD's loss L = -sum_k log softmax(z)_k:
    dL/dW = (C p - 1) h^T, so the score ||dL/dW||_1 = ||C p - 1||_1 * ||h||_1 in closed form
    (C times the paper's uniform-target score; no metric changes), with no per-sample backward.
    """

    name = "gradnorm"

    def score(self, bank, features):
        probs = softmax(bank.logits(features), axis=1)
        classes = probs.shape[1]
        return np.abs(classes * probs - 1).sum(axis=1) * np.abs(features).astype(np.float64).sum(
            axis=1
        )


@DETECTORS.register("react")
class ReAct(Detector):
    """ReAct (Sun et al., "ReAct: OOD detection with rectified activations", NeurIPS 2021):
    c = the ``percentile``-th percentile of all ID val activations (default 90), score =
    logsumexp(W min(h, c) + b)."""

    name = "react"
    # OpenOOD v1.5 configs/postprocessors/react.yml, postprocessor_sweep.percentile_list
    search_grid = {"percentile": (85.0, 90.0, 95.0, 99.0)}

    def __init__(self, percentile: float = PercentileSettings.percentile):
        self.percentile = percentile

    @classmethod
    def from_config(cls, config):
        return cls(config.react.percentile)

    def fit(self, bank):
        val = split_rows(self.name, bank, "val")
        self.threshold = float(np.percentile(val, self.percentile))
        return self

    def score(self, bank, features):
        return energy(fc_logits(bank, np.minimum(features, self.threshold)))

    def info(self):
        return {"percentile": self.percentile, "threshold": self.threshold}


@DETECTORS.register("dice")
class DICE(Detector):
    """DICE (Sun & Li, "DICE: leveraging sparsification for OOD detection", ECCV 2022):
    contributions m_j W_kj with m = mean ID train h; keep the weights whose contribution is
    above its ``percentile``-th percentile (default 90: the top 10%), score =
    logsumexp((W * mask) h + b)."""

    name = "dice"

    def __init__(self, percentile: float = PercentileSettings.percentile):
        self.percentile = percentile

    @classmethod
    def from_config(cls, config):
        return cls(config.dice.percentile)

    def fit(self, bank):
        train = split_rows(self.name, bank, "train")
        contributions = train.mean(axis=0, dtype=np.float64)[None, :] * bank.fc_weight
        mask = contributions > np.percentile(contributions, self.percentile)
        self.weight = bank.fc_weight * mask
        self.kept = int(mask.sum())
        return self

    def score(self, bank, features):
        return energy(fc_logits(bank, features, self.weight))

    def info(self):
        return {"percentile": self.percentile, "weights_kept": self.kept}


def vim_dim(configured: int | None, width: int) -> int:
    """The principal-space dimension: the configured one, else 256 for D >= 512, else D // 2."""
    if configured is not None:
        return configured
    return 256 if width >= 512 else width // 2


@DETECTORS.register("vim")
class VIM(Detector):
    """ViM (Wang et al., "ViM: out-of-distribution with virtual-logit matching", CVPR 2022):
    u = -pinv(W) b; P = the top ``dim`` eigenvectors of the uncentred covariance of h_train - u
    (``eigh``, not OpenOOD's ``eig``, which can return complex values); residual r(h) =
    ||(h - u) - P P^T (h - u)||; alpha = mean max logit / mean r over ID train; score =
    logsumexp(z) - alpha r(h). A dim >= D leaves no residual (OpenOOD: 0 / 0, NaN): an error.
    """

    name = "vim"
    # OpenOOD v1.5 configs/postprocessors/vim.yml, postprocessor_sweep.dim_list
    search_grid = {"dim": (256, 1000)}

    def __init__(self, dim: int | None = None):
        self.configured_dim = dim

    @classmethod
    def search_settings(cls, bank):
        """The grid's dims below D (a dim >= D leaves no residual), then the default rule's dim
        (``vim_dim``) if it is not among them, so the grid is never empty."""
        width = bank.fc_weight.shape[1]
        dims = [dim for dim in cls.search_grid["dim"] if dim < width]
        default = vim_dim(None, width)
        return [{"dim": dim} for dim in (dims if default in dims else [*dims, default])]

    @classmethod
    def from_config(cls, config):
        return cls(config.vim.dim)

    def fit(self, bank):
        width = bank.fc_weight.shape[1]
        self.dim = vim_dim(self.configured_dim, width)
        if not 1 <= self.dim < width:
            raise detector_error(
                self.name,
                "id.train",
                f"dim {self.dim} must be in [1, D) for features of width D = {width}: a "
                "principal space that large leaves no residual; set evaluate.vim.dim below D",
            )
        weight = bank.fc_weight.astype(np.float64)
        self.origin = -np.linalg.pinv(weight) @ bank.fc_bias.astype(np.float64)
        centred = split_rows(self.name, bank, "train").astype(np.float64) - self.origin
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(centred))
        order = np.argsort(eigenvalues)[::-1]
        self.residual_space = eigenvectors[:, order[self.dim :]]
        residual = self.residual_norm(bank.id_features["train"]).mean()
        if not residual > 1e-12 * np.linalg.norm(centred, axis=1).mean():
            raise detector_error(
                self.name,
                "id.train",
                f"the ID train features have no component outside the top {self.dim} principal "
                "directions (mean residual 0), so alpha is undefined; lower evaluate.vim.dim",
            )
        self.alpha = float(bank.logits(bank.id_features["train"]).max(axis=1).mean() / residual)
        return self

    def residual_norm(self, features):
        centred = features.astype(np.float64) - self.origin
        return np.linalg.norm(centred @ self.residual_space, axis=1)

    def score(self, bank, features):
        return energy(bank.logits(features)) - self.alpha * self.residual_norm(features)

    def info(self):
        return {"dim": self.dim, "alpha": self.alpha}
