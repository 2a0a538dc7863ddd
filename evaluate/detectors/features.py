"""Detectors that use the penultimate features h themselves: GradNorm, ReAct, DICE, VIM."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from sio.evaluate.config import PercentileSettings
from sio.evaluate.detectors.base import (
    DETECTORS,
    Detector,
    detector_error,
    energy,
    fc_logits,
    split_rows,
)
from sio.evaluate.detectors.logits import one_thread

# A last layer whose smallest singular value is below this fraction of its largest is treated
# as rank-deficient: VIM's origin -pinv(W) b is then dominated by rounding.
ILL_CONDITIONED = 1e-6


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b through torch's BLAS: on the 2-core reference machine 2-4x numpy's for the N x D
    products of VIM (same float32 or float64 arithmetic)."""
    return (torch.from_numpy(np.asarray(a)) @ torch.from_numpy(np.asarray(b))).numpy()


def symmetric_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric float64 matrix through torch's
    LAPACK (MKL's ``syevd``, the routine ``np.linalg.eigh`` calls in OpenBLAS) on one thread:
    the same float64 decomposition, but on the 2-core reference machine under load both
    libraries' threaded solvers were several times slower, and erratic, for VIM's 512 x 512
    covariance (their threads wait on each other), where one thread stays steady."""
    with one_thread():
        values, vectors = torch.linalg.eigh(torch.from_numpy(np.asarray(matrix, np.float64)))
    return values.numpy(), vectors.numpy()


@DETECTORS.register("gradnorm")
class GradNorm(Detector):
    """GradNorm (Huang et al., "On the importance of gradients for detecting distributional
    shifts in the wild", NeurIPS 2021), OpenOOD's loss L = -sum_k log softmax(z)_k:
    dL/dW = (C p - 1) h^T, so the score ||dL/dW||_1 = ||C p - 1||_1 * ||h||_1 in closed form
    (C times the paper's uniform-target score; no metric changes), with no per-sample backward.
    """

    def score_features(self, features):
        logits = self.logits(features)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        classes = probs.shape[1]
        h_norm = np.abs(features).sum(axis=1, dtype=np.float64)
        return np.abs(classes * probs - 1).sum(axis=1) * h_norm


@DETECTORS.register("react")
class ReAct(Detector):
    """ReAct (Sun et al., "ReAct: OOD detection with rectified activations", NeurIPS 2021):
    c = the ``percentile``-th percentile of all ID val activations (default 90), score =
    logsumexp(W min(h, c) + b)."""

    # OpenOOD v1.5 configs/postprocessors/react.yml, postprocessor_sweep.percentile_list
    search_grid = {"percentile": (85.0, 90.0, 95.0, 99.0)}

    def __init__(self, percentile: float = PercentileSettings.percentile):
        self.percentile = percentile

    def fit_bank(self, bank):
        val = split_rows(self.name, bank, "val")
        self.threshold = float(np.percentile(val, self.percentile))

    def score_features(self, features):
        clipped = np.minimum(features, np.asarray(self.threshold, features.dtype))
        return energy(self.logits(clipped))

    def info(self):
        return {"percentile": self.percentile, "threshold": self.threshold}


@DETECTORS.register("dice")
class DICE(Detector):
    """DICE (Sun & Li, "DICE: leveraging sparsification for OOD detection", ECCV 2022):
    contributions m_j W_kj with m = mean ID train h; keep the weights whose contribution is
    above its ``percentile``-th percentile (default 90: the top 10%), score =
    logsumexp((W * mask) h + b)."""

    def __init__(self, percentile: float = PercentileSettings.percentile):
        self.percentile = percentile

    def fit_bank(self, bank):
        train = split_rows(self.name, bank, "train")
        contributions = train.mean(axis=0, dtype=np.float64)[None, :] * bank.fc_weight
        if not np.isfinite(contributions).all():
            raise detector_error(
                self.name, "id.train", "the mean feature times fc.weight is not finite"
            )
        mask = contributions > np.percentile(contributions, self.percentile)
        self.weight = bank.fc_weight * mask
        self.kept = int(mask.sum())

    def score_features(self, features):
        return energy(fc_logits(self.weight, self.fc_bias, features))

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

    float32 features are centred, multiplied and projected in float32 (as pytorch-ood; OpenOOD
    centres in float64), the covariance eigendecomposed in float64; scores differ from an
    all-float64 computation by ~1e-6 relative.
    A rank-deficient or ill-conditioned fc.weight (u then holds rounding noise of size ~1e8)
    gives a warning naming VIM, also recorded in results.json.
    """

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

    def fit_bank(self, bank):
        width = bank.fc_weight.shape[1]
        self.dim = vim_dim(self.configured_dim, width)
        if not 1 <= self.dim < width:
            raise detector_error(
                self.name,
                "id.train",
                f"dim {self.dim} must be in [1, D) for features of width D = {width}: a "
                "principal space that large leaves no residual; set evaluate.vim.dim below D",
            )
        train = split_rows(self.name, bank, "train")
        weight = bank.fc_weight.astype(np.float64)
        self.warning = self.conditioning_warning(weight)
        self.origin = -np.linalg.pinv(weight) @ bank.fc_bias.astype(np.float64)
        # uncentred covariance of h - u, as OpenOOD's EmpiricalCovariance(assume_centered=True);
        # float32 features are centred and multiplied in float32 (one BLAS product, as
        # pytorch-ood), the D x D result widened to float64 for the eigendecomposition
        dtype = np.float32 if train.dtype == np.float32 else np.float64
        centred = train - self.origin.astype(dtype)
        covariance = matmul(centred.T, centred).astype(np.float64) / len(train)
        if not np.isfinite(covariance).all():
            raise detector_error(
                self.name, "id.train", "the covariance of h - u overflows (not finite)"
            )
        scale = np.sqrt(max(np.trace(covariance), 0.0))
        try:
            eigenvalues, eigenvectors = symmetric_eigh(covariance)
        except (np.linalg.LinAlgError, torch.linalg.LinAlgError) as err:
            raise detector_error(
                self.name, "id.train", f"the feature covariance has no eigendecomposition ({err})"
            ) from None
        order = np.argsort(eigenvalues)[::-1]
        self.residual_space = np.ascontiguousarray(eigenvectors[:, order[self.dim :]])
        self.origin_projection = self.origin @ self.residual_space
        # the operands of the products, once, as torch tensors (no numpy BLAS call: OpenBLAS's
        # threads spin against torch's on a small machine)
        self.operands = {
            torch.float32: (
                torch.from_numpy(np.ascontiguousarray(bank.fc_weight.T, np.float32)),
                torch.from_numpy(self.residual_space.astype(np.float32)),
            ),
            torch.float64: (
                torch.from_numpy(np.ascontiguousarray(bank.fc_weight.T, np.float64)),
                torch.from_numpy(self.residual_space),
            ),
        }
        self.bias64 = bank.fc_bias.astype(np.float64)
        max_logit = self.vim_logits(train).max(axis=1)
        residual = self.residual_norm(centred, centred=True).mean()
        del centred
        if not residual > 1e-12 * scale:
            raise detector_error(
                self.name,
                "id.train",
                f"the ID train features have no component outside the top {self.dim} principal "
                "directions (mean residual 0), so alpha is undefined; lower evaluate.vim.dim",
            )
        self.alpha = float(max_logit.mean() / residual)
        if not np.isfinite(self.alpha):
            raise detector_error(self.name, "id.train", f"alpha = {self.alpha} is not finite")

    def conditioning_warning(self, weight: np.ndarray) -> str | None:
        singular = np.linalg.svd(weight, compute_uv=False)
        ratio = singular[-1] / singular[0] if singular[0] > 0 else 0.0
        if ratio >= ILL_CONDITIONED:
            return None
        message = (
            f"detector vim: fc.weight is rank-deficient or ill-conditioned (smallest/largest "
            f"singular value {ratio:.3g}), so the origin u = -pinv(W) b is dominated by rounding "
            "and VIM's scores may be meaningless"
        )
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return message

    def products(self, features: np.ndarray, operand: int) -> np.ndarray:
        """h @ W^T (operand 0) or h @ R (operand 1) through torch's BLAS, widened to float64:
        a float32 product for float32 h (no copy of h), float64 for any other float."""
        h = torch.from_numpy(np.ascontiguousarray(features))
        if h.dtype not in self.operands:
            h = h.double()
        return (h @ self.operands[h.dtype][operand]).numpy().astype(np.float64, copy=False)

    def residual_norm(self, features: np.ndarray, centred: bool = False) -> np.ndarray:
        """r(h) = ||(h - u) R||, R the residual eigenvectors: computed as ||h R - u R|| (one
        product of h itself), or, with ``centred``, from ``features`` = h - u."""
        projected = self.products(features, 1)
        if not centred:
            projected -= self.origin_projection
        return np.sqrt(np.einsum("ij,ij->i", projected, projected))

    def vim_logits(self, features: np.ndarray) -> np.ndarray:
        """z = h W^T + b as ``fc_logits`` computes it (a float32 product for float32 h, widened
        before the bias is added), through torch's BLAS."""
        return self.products(features, 0) + self.bias64

    def score_features(self, features):
        # only the products go through torch (threaded BLAS); the N x K and N x (D - dim)
        # elementwise rest stays in numpy, on one thread: under load torch's threaded small
        # ops and numpy's OpenBLAS products each made scoring several times slower
        return energy(self.vim_logits(features)) - self.alpha * self.residual_norm(features)

    def info(self):
        info = {"dim": self.dim, "alpha": self.alpha}
        return info if self.warning is None else {**info, "warning": self.warning}
