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


def gram(x: torch.Tensor, strips: int = 4) -> torch.Tensor:
    """x^T x from its upper block triangle alone: each strip of columns multiplied by the
    columns from its own on, the lower triangle mirrored. 10 of 16 blocks for 4 strips: on the
    2-core reference machine 0.29-0.37 s against 0.42 s for VIM's 50,000 x 512 float32
    covariance (the same sums over rows, so the same values as ``x.T @ x`` in every test)."""
    width = x.shape[1]
    if width < 64 * strips:
        return x.T @ x
    edges = [width * i // strips for i in range(strips + 1)]
    out = x.new_empty(width, width)
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        strip = x[:, low:high].T @ x[:, low:]
        out[low:high, low:] = strip
        out[high:, low:high] = strip[:, high - low :].T
    return out


def as_tensor(features: np.ndarray) -> torch.Tensor:
    """``features`` as a torch tensor: float32 shares their memory, any other float is widened
    to float64."""
    h = torch.from_numpy(np.ascontiguousarray(features))
    return h if h.dtype in (torch.float32, torch.float64) else h.double()


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
        # torch's clamp: ~2x np.minimum's time on the reference machine for N x 512 float32
        clipped = as_tensor(features).clamp(max=self.threshold).numpy()
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

    float32 features are centred, multiplied and projected in float32 and r's norm taken in
    float32 (as pytorch-ood; OpenOOD centres in float64), the covariance eigendecomposed in
    float64; scores differ from an all-float64 computation by ~1e-6 relative. The logits and
    the residual come from one product h [W^T | R], the covariance from its upper triangle.
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
        # float32 features are centred and multiplied in float32 (as pytorch-ood), the D x D
        # result widened to float64 for the eigendecomposition
        centred = as_tensor(train)
        centred = centred - torch.from_numpy(self.origin).to(centred.dtype)
        covariance = gram(centred).double().numpy() / len(train)
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
        self.prepare_products(bank, eigenvectors[:, order[self.dim :]])
        logits, residuals = self.logits_and_residual(centred, centred=True)
        del centred
        residual = residuals.mean()
        if not residual > 1e-12 * scale:
            raise detector_error(
                self.name,
                "id.train",
                f"the ID train features have no component outside the top {self.dim} principal "
                "directions (mean residual 0), so alpha is undefined; lower evaluate.vim.dim",
            )
        self.alpha = float(logits.max(axis=1).mean() / residual)
        if not np.isfinite(self.alpha):
            raise detector_error(self.name, "id.train", f"alpha = {self.alpha} is not finite")

    def prepare_products(self, bank, residual_space: np.ndarray) -> None:
        """The one operand [W^T | R] (D x (K + D - dim), R the residual eigenvectors) that gives
        the logits and the residual of h in one product, in float32 and float64, and what that
        product is shifted by: b for the logits, u R for the residual (for h - u: u W^T + b for
        the logits and nothing for the residual)."""
        weight_t = np.ascontiguousarray(bank.fc_weight.T, np.float64)
        operand = np.concatenate([weight_t, residual_space], axis=1)
        self.operands = {
            torch.float32: torch.from_numpy(operand.astype(np.float32)),
            torch.float64: torch.from_numpy(operand),
        }
        self.bias64 = bank.fc_bias.astype(np.float64)
        self.centred_bias = self.origin @ weight_t + self.bias64
        origin_projection = self.origin @ residual_space
        self.origin_projection = {
            torch.float32: torch.from_numpy(origin_projection.astype(np.float32)),
            torch.float64: torch.from_numpy(origin_projection),
        }

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

    def logits_and_residual(
        self, h: torch.Tensor, centred: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """z = h W^T + b (float64) and r(h) = ||(h - u) R|| from one BLAS product h [W^T | R]:
        float32 for float32 h (z widened before the bias is added, as ``fc_logits``; r as
        ||h R - u R|| in float32, as pytorch-ood's), float64 otherwise. With ``centred``, h is
        h - u already."""
        product = h @ self.operands[h.dtype]
        classes = len(self.bias64)
        logits = product[:, :classes].numpy().astype(np.float64)
        logits += self.centred_bias if centred else self.bias64
        residual = product[:, classes:]
        if not centred:
            residual = residual - self.origin_projection[h.dtype]
        norms = torch.linalg.vector_norm(residual, dim=1).numpy().astype(np.float64)
        return logits, norms

    def score_features(self, features):
        logits, residual = self.logits_and_residual(as_tensor(features))
        return energy(logits) - self.alpha * residual

    def info(self):
        info = {"dim": self.dim, "alpha": self.alpha}
        return info if self.warning is None else {**info, "warning": self.warning}
