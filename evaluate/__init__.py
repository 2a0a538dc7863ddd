"""Evaluate stage: post-hoc detectors on cached activations, OOD metrics, tables over seeds."""

from .activations import ActivationBank, ActivationsError, extract_activations, load_activations
from .detectors import DETECTORS, Detector, DetectorError, InputDetector, fit_detector
from .evaluate import evaluate_bank, evaluate_checkpoint, markdown_table, write_results
from .image_scoring import ModelInputs
from .metrics import fpr_at_95_tpr, mean_metrics, ood_metrics
from .report import aggregate, report

__all__ = [
    "DETECTORS",
    "ActivationBank",
    "ActivationsError",
    "Detector",
    "DetectorError",
    "InputDetector",
    "ModelInputs",
    "aggregate",
    "evaluate_bank",
    "evaluate_checkpoint",
    "extract_activations",
    "fit_detector",
    "fpr_at_95_tpr",
    "load_activations",
    "markdown_table",
    "mean_metrics",
    "ood_metrics",
    "report",
    "write_results",
]
