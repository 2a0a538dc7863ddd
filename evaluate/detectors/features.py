"""Detectors that use the penultimate features h themselves: GradNorm, ReAct, DICE, VIM."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch

from sio.evaluate.activations import linear, widened
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
# centred_gram centres h first where a column's uncentred second moment is above this many
# times its centred one (the expansion would then lose more than 2 bits to cancellation)
CANCELLATION = 4.0
# rows per block where a product of many rows is taken a block at a time: an output of tens
# of MB is freshly mapped memory whose page faults cost more than the product on the
# reference machine, while a block's few MB are reused (VIM's 50,000-row train product:
# 50 ms in blocks, 220 ms at once)
ROWS_PER_BLOCK = 4096
# ReAct clips this many rows at a time: 2 MB of float32 x 512, within the two cores' L2
CLIP_ROWS = 1024


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


def centred_gram(h: torch.Tensor, origin: np.ndarray) -> np.ndarray:
    """(h - u)^T (h - u) in float64, from the gram of h itself: h^T h - s u^T - u s^T + n u u^T
    (s the column sums of h), with no centred copy of h (for 50,000 x 512 float32 features, a
    100 MB allocation that took longer than the gram on the reference machine). Where u
    dominates a column (its diagonal entry in h^T h over CANCELLATION times the centred one)
    the subtraction would leave float32 rounding as the answer, and where h^T h itself
    overflows it has no answer: then h is centred first, a block of rows at a time
    (``shifted_gram``)."""
    n = len(h)
    uncentred = gram(h).double().numpy()
    sums = h.sum(dim=0).double().numpy()
    cross = np.outer(sums, origin)
    centred = uncentred - cross - cross.T + n * np.outer(origin, origin)
    cancels = np.diag(uncentred) > CANCELLATION * np.diag(centred)
    if cancels.any() or not np.isfinite(centred).all():
        return shifted_gram(h, origin)
    return centred


def shifted_gram(h: torch.Tensor, origin: np.ndarray) -> np.ndarray:
    """(h - u)^T (h - u) in float64 from centred blocks of ``ROWS_PER_BLOCK`` rows (in h's
    float type, as a centred copy of all of h would be): no N x D copy."""
    shift = torch.from_numpy(origin).to(h.dtype)
    out = np.zeros((h.shape[1], h.shape[1]))
    for rows in row_blocks(len(h), ROWS_PER_BLOCK):
        out += gram(h[rows] - shift).double().numpy()
    return out


def row_blocks(rows: int, block: int) -> Iterator[slice]:
    """Consecutive slices of at most ``block`` rows covering ``range(rows)``."""
    for start in range(0, rows, block):
        yield slice(start, min(start + block, rows))


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
        # clipped a block of rows at a time into one buffer that stays in the cores' caches
        # and multiplied from there, with no clipped copy of all rows (torch's clamp: ~2x
        # np.minimum's time for N x 512 float32 on the reference machine)
        h = as_tensor(features)
        weight = torch.from_numpy(np.ascontiguousarray(self.fc_weight, h.numpy().dtype))
        buffer = h.new_empty(min(len(h), CLIP_ROWS), h.shape[1])
        product = h.new_empty(len(h), len(weight))
        for rows in row_blocks(len(h), CLIP_ROWS):
            clipped = torch.clamp(h[rows], max=self.threshold, out=buffer[: rows.stop - rows.start])
            product[rows] = linear(clipped, weight)
        return energy(widened(product, self.fc_bias))

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

    float32 features are multiplied and projected in float32 and r's norm taken in float32
    (as pytorch-ood; OpenOOD centres in float64), the covariance eigendecomposed in float64;
    scores differ from an all-float64 computation by ~1e-6 relative. The covariance is h's own
    gram (its upper triangle) shifted by u in float64 (``centred_gram``; a centred copy of h
    only if u dominates a column), and the logits and the residual come from one product
    h [W^T | R].
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
        h = as_tensor(train)
        # uncentred covariance of h - u, as OpenOOD's EmpiricalCovariance(assume_centered=True)
        covariance = centred_gram(h, self.origin) / len(train)
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
        top_logits, residuals = self.logits_and_residual(h, top_only=True)
        residual = residuals.mean()
        if not residual > 1e-12 * scale:
            raise detector_error(
                self.name,
                "id.train",
                f"the ID train features have no component outside the top {self.dim} principal "
                "directions (mean residual 0), so alpha is undefined; lower evaluate.vim.dim",
            )
        self.alpha = float(top_logits.mean() / residual)
        if not np.isfinite(self.alpha):
            raise detector_error(self.name, "id.train", f"alpha = {self.alpha} is not finite")

    def prepare_products(self, bank, residual_space: np.ndarray) -> None:
        """The one operand [W^T | R]^T ((K + D - dim) x D, nn.Linear's layout, R the residual
        eigenvectors) that gives the logits and the residual of h in one product, in float32
        and float64, and what that product is shifted by: b for the logits, u R for the
        residual."""
        operand = np.concatenate([bank.fc_weight.astype(np.float64), residual_space.T])
        self.operands = {
            torch.float32: torch.from_numpy(operand.astype(np.float32)),
            torch.float64: torch.from_numpy(operand),
        }
        self.bias64 = bank.fc_bias.astype(np.float64)
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
        self, h: torch.Tensor, top_only: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """z = h W^T + b (float64) and r(h) = ||h R - u R|| from one product h [W^T | R]
        (``linear``), a block of rows at a time (``row_blocks``): float32 for float32 h (z
        widened before the bias is added, as ``fc_logits``; r's norm in float32, as
        pytorch-ood's), float64 otherwise. ``top_only``: max_k z_k of each row instead of z
        (the fit's alpha; no N x K array of ID train's logits)."""
        operand, shift = self.operands[h.dtype], self.origin_projection[h.dtype]
        classes = len(self.bias64)
        logits = np.empty(len(h) if top_only else (len(h), classes))
        norms = np.empty(len(h))
        for rows in row_blocks(len(h), ROWS_PER_BLOCK):
            product = linear(h[rows], operand)
            block = product[:, :classes].numpy() + self.bias64
            logits[rows] = block.max(axis=1) if top_only else block
            norms[rows] = torch.linalg.vector_norm(product[:, classes:] - shift, dim=1).numpy()
        return logits, norms

    def score_features(self, features):
        logits, residual = self.logits_and_residual(as_tensor(features))
        return energy(logits) - self.alpha * residual

    def info(self):
        info = {"dim": self.dim, "alpha": self.alpha}
        return info if self.warning is None else {**info, "warning": self.warning}
