"""Post-hoc OOD detectors: the registry, and ``fit_detector``.

base.py holds the interfaces, the registry and the shared helpers; logits.py, features.py,
knn.py, odin.py, openmax.py and godin.py the paper's detectors; shaping.py (ash, scale, vra),
class_means.py (mds, rmds, she), boundary.py (fdbd, nci), neighbours.py (nnguide, relation),
subspace.py (residual) and logits.py (gen) OpenOOD v1.5's others, one small class each.

Higher scores mean more in-distribution. Paper order (SIO's Table 1, the default list):
openmax, msp, tempscale, odin, ebo, gradnorm, react, mls, klm, vim, knn, dice. ``odin`` is an
``InputDetector`` (it needs the model and images); every other detector scores cached
activations. Each class's docstring gives its formula, its paper and where it departs from
OpenOOD v1.5.
"""

from __future__ import annotations

from sio.evaluate.activations import ActivationBank
from sio.evaluate.config import EvaluateConfig
from sio.evaluate.detectors import (  # noqa: F401  (importing registers the detectors)
    boundary,
    class_means,
    features,
    godin,
    knn,
    logits,
    neighbours,
    odin,
    openmax,
    shaping,
    subspace,
)
from sio.evaluate.detectors.base import (
    DETECTORS,
    Detector,
    DetectorError,
    InputDetector,
    detector_error,
    finite_scores,
    needs_images,
)

__all__ = [
    "DETECTORS",
    "Detector",
    "DetectorError",
    "InputDetector",
    "finite_scores",
    "fit_detector",
    "needs_images",
]


def fit_detector(name: str, bank: ActivationBank, config: EvaluateConfig | None = None):
    """The activation detector ``name`` with its settings from ``config``, fitted on ``bank``."""
    detector = DETECTORS.get(name).from_config(config or EvaluateConfig())
    if isinstance(detector, InputDetector):
        raise detector_error(
            name, "the activations", "needs the model and the images; use sio evaluate --run"
        )
    return detector.fit(bank)
