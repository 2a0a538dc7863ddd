"""Detectors that need only the logits z = h @ W.T + b: MSP, MLS, EBO, TempScale, KLM, GEN."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from scipy.special import softmax

from sio.evaluate.config import GenSettings, TempScaleSettings
from sio.evaluate.detectors.base import (
    DETECTORS,
    Detector,
    as_rows,
    detector_error,
    energy,
    split_rows,
)


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """max_k softmax(z)_k = 1 / sum_j exp(z_j - z_max), float64, without a full softmax."""
    z = as_rows(logits)
    return (z - z.amax(dim=1, keepdim=True)).exp_().sum(dim=1).reciprocal_().numpy()


def float32_probs(weight: np.ndarray, bias: np.ndarray, features: np.ndarray) -> torch.Tensor:
    """softmax(h W^T + b) all in float32, as OpenOOD v1.5's ``nn.Linear`` then ``torch.softmax``
    (``evaluate.parity: openood``)."""
    h = torch.from_numpy(np.ascontiguousarray(features, np.float32))
    w = torch.from_numpy(np.ascontiguousarray(weight, np.float32))
    b = torch.from_numpy(np.ascontiguousarray(bias, np.float32))
    return torch.softmax(torch.nn.functional.linear(h, w, b), dim=1)


@DETECTORS.register("msp")
class MSP(Detector):
    """Maximum softmax probability, max_k softmax(z)_k (Hendrycks & Gimpel, ICLR 2017).

    Deliberate difference: the softmax is float64; OpenOOD's float32 softmax rounds every
    margin above ~17 to exactly 1.0 (many confident ID samples tie there), which moves AUROC
    slightly; float64 keeps them apart up to a margin of ~37. ``MSP(float32=True)``
    (``evaluate.parity: openood``) is OpenOOD's: float32 logits, ``torch.softmax``, max.
    """

    def __init__(self, float32: bool = False):
        self.float32 = float32

    def score_features(self, features):
        if self.float32:
            return (
                float32_probs(self.fc_weight, self.fc_bias, features).amax(dim=1).double().numpy()
            )
        return max_softmax(self.logits(features))


@DETECTORS.register("mls")
class MaxLogit(Detector):
    """Maximum logit, max_k z_k (Hendrycks et al., "Scaling OOD detection", ICML 2022)."""

    def score_features(self, features):
        return as_rows(self.logits(features)).amax(dim=1).numpy()


@DETECTORS.register("ebo")
class Energy(Detector):
    """Negative energy at T = 1, logsumexp_k z_k (Liu et al., "Energy-based OOD", NeurIPS 2020)."""

    def score_features(self, features):
        return energy(self.logits(features))


def log_max_softmax(logits: np.ndarray) -> np.ndarray:
    """log max_k softmax(z)_k = -log1p(sum_{j != argmax} exp(z_j - z_max)), exact near 1.

    A monotone transform of the max softmax, so every metric is the same, but it keeps apart
    scores that a plain softmax rounds to 1.0 (any margin above ~37 in float64).
    """
    z = as_rows(logits)
    top, where = z.max(dim=1, keepdim=True)
    shifted = (z - top).exp_().scatter_(1, where, 0.0)
    return shifted.sum(dim=1).log1p_().neg_().numpy()


@contextlib.contextmanager
def one_thread():
    """torch on one thread: a one-parameter fit on a few thousand logits gains nothing from
    more, and on a loaded machine their hand-offs made it 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T minimising the NLL of softmax(z / T) on ``labels``, to the last bits of 1 / T.

    In s = 1 / T the NLL, mean_i [logsumexp(s z_i) - s z_iy], is convex: its derivative is
    g(s) = mean_i (E_p[z_i] - z_iy) with p = softmax(s z_i), its second the mean variance
    of z_i under p. So the minimum is g's one root, found by Newton's method kept inside a
    bracket by bisection (each step one pass over the logits), in units of the logits' spread
    (so any scale of logits takes the same steps). g(0) >= 0 (no better than uniform) has no
    finite minimiser: T = inf; nor has every label at its row's maximum (g < 0 for every s),
    which ``TempScale`` handles first: T = 0 if it is not. Finite logits only.
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.int64)
    top, true = z.amax(dim=1, keepdim=True), z.gather(1, y[:, None])
    if z.mean(dim=1).mean() >= true.mean():
        return math.inf
    # z' = (z - max z) / spread, in [-1, 0] (exp(s z') <= 1); g(s) = mean E_p[z'] - offset
    shifted = z - top
    spread = float(-shifted.min())
    shifted /= spread
    offset = float((true - top).mean()) / spread
    weights, moments = torch.empty_like(shifted), torch.empty_like(shifted)

    def slope_and_curvature(s: float) -> tuple[float, float]:
        torch.mul(shifted, s, out=weights).exp_()
        total = weights.sum(dim=1)
        first = torch.mul(weights, shifted, out=moments).sum(dim=1).div_(total)
        second = moments.mul_(shifted).sum(dim=1).div_(total)
        # E[z'^2] - E[z']^2: cancellation there only slows a step (the bracket keeps it)
        return float(first.mean()) - offset, float((second - first.square()).mean())

    low, high = 0.0, 1.0
    while (fit := slope_and_curvature(high))[0] < 0:
        low, high = high, 2 * high
        if high > 2.0**64:
            return 0.0
    s = high
    for _ in range(200):
        slope, curvature = fit
        if slope == 0:
            break
        low, high = (s, high) if slope < 0 else (low, s)
        step = s - slope / curvature if curvature > 0 else math.nan
        following = step if low < step < high else (low + high) / 2
        if abs(following - s) <= 4 * np.finfo(np.float64).eps * s:
            s = following
            break
        s, fit = following, slope_and_curvature(following)
    return spread / s


def fit_temperature_openood(logits: np.ndarray, labels: np.ndarray) -> float:
    """OpenOOD v1.5's T (``temp_scaling_postprocessor.py``): the parameter T itself starts at
    1.5 and takes one ``LBFGS(lr=0.01, max_iter=50)`` step (no line search) on the float32
    mean cross-entropy of z / T; it usually stops far from the NLL minimum."""
    z = torch.as_tensor(np.asarray(logits, np.float32))
    y = torch.as_tensor(labels, dtype=torch.int64)
    temperature = torch.nn.Parameter(torch.ones(1) * 1.5)
    optimizer = torch.optim.LBFGS([temperature], lr=0.01, max_iter=50)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / temperature, y)
        loss.backward()
        return loss

    with one_thread():
        optimizer.step(closure)
    return float(temperature.detach()[0])


@DETECTORS.register("tempscale")
class TempScale(Detector):
    """Temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017):
    T fitted on ID val logits by NLL, score max_k softmax(z / T)_k, returned as its log.

    ``fit: nll`` (the default, a deliberate difference): the NLL minimised to convergence
    (``fit_temperature``: Newton's method on 1 / T, in which the NLL is convex).
    ``fit: openood``: OpenOOD v1.5's T exactly (``fit_temperature_openood``: 50 L-BFGS
    iterations at lr 0.01 from T = 1.5, which usually stop short of the minimum). With ``nll``,
    when every ID val sample is classified correctly the NLL falls without bound as T -> 0 (no
    minimiser); T is then 1 (the MSP ranking) and results.json says so. The log of the max
    softmax (see ``log_max_softmax``) ranks exactly as the max softmax does.
    """

    def __init__(self, fit: str = TempScaleSettings.fit):
        if fit not in ("nll", "openood"):
            raise ValueError(f"tempscale fit is nll or openood, got {fit!r}")
        self.fit_rule = fit

    def fit_bank(self, bank):
        logits = self.logits(split_rows(self.name, bank, "val"))
        labels = bank.id_labels["val"]
        self.note = None
        if not np.isfinite(logits).all():
            raise detector_error(self.name, "id.val", "its logits hold inf or NaN (overflow)")
        if self.fit_rule == "openood":
            self.temperature = fit_temperature_openood(logits, labels)
        elif (logits[np.arange(len(labels)), labels] == logits.max(axis=1)).all():
            self.temperature = 1.0  # every label at its row's maximum (ties included)
            self.note = "every ID val sample is classified correctly: the NLL has no minimum"
            return
        else:
            self.temperature = fit_temperature(logits, labels)
        if self.temperature == math.inf and self.fit_rule == "nll":
            raise detector_error(
                self.name,
                "id.val",
                "the val logits of the true classes are on average no higher than the mean "
                "logit: the NLL falls as T -> inf (no finite T)",
            )
        if not np.isfinite(self.temperature) or self.temperature <= 0:
            raise detector_error(
                self.name,
                "id.val",
                f"the {self.fit_rule} fit gave T = {self.temperature}, not a positive T",
            )

    def score_features(self, features):
        return log_max_softmax(self.logits(features) / self.temperature)

    def info(self):
        info = {"fit": self.fit_rule, "temperature": self.temperature}
        return info if self.note is None else {**info, "note": f"T = 1 because {self.note}"}


# The smallest positive normal float64: log of it is about -708.
TEMPLATE_FLOOR = np.finfo(np.float64).tiny


@DETECTORS.register("klm")
class KLMatching(Detector):
    """KL matching (Hendrycks et al., "Scaling OOD detection", ICML 2022):
    d_k = mean softmax of the ID val samples predicted as class k, score = -min_k KL(p || d_k).

    A class that no ID val sample is predicted as gets the one-hot template e_k (OpenOOD; the
    SIO code takes the mean of an empty set, NaN). Deliberate difference: KL(p || d_k) =
    sum_i p_i (log p_i - log d_ki) with d_ki floored at the smallest normal float64, so a zero
    entry (one-hot templates, underflow) costs about 708 per unit of mass instead of OpenOOD's
    inf (scipy's ``entropy``), which would make the score -inf and the metrics undefined.
    The two nearest templates are found by a float32 product, and their KLs taken in float64.
    """

    def fit_bank(self, bank):
        logits = self.logits(split_rows(self.name, bank, "val"))
        predicted = logits.argmax(axis=1)
        probs = softmax(logits, axis=1)
        classes = bank.fc_weight.shape[0]
        self.templates = np.eye(classes)
        self.empty_classes = []
        for k in range(classes):
            members = predicted == k
            if members.any():
                self.templates[k] = probs[members].mean(axis=0)
            else:
                self.empty_classes.append(k)
        self.log_templates = torch.from_numpy(np.log(np.maximum(self.templates, TEMPLATE_FLOOR)))
        self.log_templates32 = self.log_templates.float()

    def score_features(self, features):
        log_p = torch.log_softmax(as_rows(self.logits(features)), dim=1)
        p = log_p.exp()
        # KL(p || d_k) = sum p log p - p . log d_k: the nearest templates are those of the
        # largest p . log d_k, the two largest found for every template at once in float32
        # (half a float64 product's time), and the nearer of those two taken in float64. The
        # score can differ from the all-float64 minimum only where three templates' KLs lie
        # within the float32 product's rounding (~1e-7 of sum p |log d|) of each other.
        near = min(2, len(self.log_templates))
        nearest = (p.float() @ self.log_templates32.T).topk(near, dim=1).indices
        cross = (p[:, None, :] * self.log_templates[nearest]).sum(dim=2).amax(dim=1)
        return cross.sub_((p * log_p).sum(dim=1)).numpy()

    def info(self):
        return {"classes_without_val_predictions": self.empty_classes}


def complements(probs: torch.Tensor) -> torch.Tensor:
    """1 - p_k for every k, to full relative precision: 1 - p where p <= 1/2 (exact to rounding)
    and, for the top class, the sum of the others (1 - p itself would leave only rounding
    when p is within ~1e-10 of 1)."""
    complement = 1 - probs
    top = probs.argmax(dim=1, keepdim=True)
    others = probs.scatter(1, top, 0.0).sum(dim=1, keepdim=True)
    return complement.scatter_(1, top, others)


@DETECTORS.register("gen")
class GEN(Detector):
    """Generalized entropy (Liu et al., "GEN: pushing the limits of softmax-based
    out-of-distribution detection", CVPR 2023): score = -sum over the m largest p_k of
    p_k^gamma (1 - p_k)^gamma (all C when m >= C); gamma = 0.1, m = 100
    (``gen: {gamma: 0.1, m: 100}``; OpenOOD's ``M``). Deliberate difference: float64, with
    1 - p of the top class as the sum of the others (``complements``); OpenOOD's float32
    1 - p is 0 for every margin above ~17, where its score ties. ``GEN(float32=True)``
    (``evaluate.parity: openood``) is OpenOOD's: float32 softmax, its m largest, 1 - p in
    float32.
    """

    # OpenOOD v1.5 configs/postprocessors/gen.yml: gamma_list, M_list
    search_grid = {
        "gamma": (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0),
        "m": (10, 50, 100, 200, 500, 1000),
    }

    def __init__(
        self, gamma: float = GenSettings.gamma, m: int = GenSettings.m, float32: bool = False
    ):
        self.gamma, self.m, self.float32 = gamma, m, float32

    def score_features(self, features):
        if self.float32:
            probs = float32_probs(self.fc_weight, self.fc_bias, features)
            top = torch.sort(probs, dim=1).values[:, -self.m :]
            return -(top**self.gamma * (1 - top) ** self.gamma).sum(dim=1).double().numpy()
        probs = torch.softmax(as_rows(self.logits(features)), dim=1)
        complement = complements(probs)
        if self.m < probs.shape[1]:
            probs, where = probs.topk(self.m, dim=1, sorted=False)
            complement = complement.gather(1, where)
        # p^gamma (1 - p)^gamma as (p (1 - p))^gamma: one power instead of two (the product
        # cannot underflow where neither factor does: 1 - p >= 1/2 wherever p <= 1/2)
        entropy = probs.mul_(complement).pow_(self.gamma).sum(dim=1)
        return entropy.neg_().numpy()

    def info(self):
        return {"gamma": self.gamma, "m": self.m}
