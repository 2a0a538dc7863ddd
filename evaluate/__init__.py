"""Evaluate stage: post-hoc detectors on cached activations, OOD metrics, tables over seeds."""

from .activations import ActivationBank, ActivationsError, extract_activations, load_activations
from .detectors import DETECTORS, Detector, DetectorError
from .evaluate import evaluate_bank, markdown_table, write_results
from .metrics import fpr_at_95_tpr, mean_metrics, ood_metrics
from .report import aggregate, report

__all__ = [
    "DETECTORS",
    "ActivationBank",
    "ActivationsError",
    "Detector",
    "DetectorError",
    "aggregate",
    "evaluate_bank",
    "extract_activations",
    "fpr_at_95_tpr",
    "load_activations",
    "markdown_table",
    "mean_metrics",
    "ood_metrics",
    "report",
    "write_results",
]
