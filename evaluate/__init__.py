"""Evaluate stage: post-hoc detectors on cached activations, OOD metrics, tables over seeds."""

from sio.core.lazy import lazy_exports

_EXPORTS = {
    "ActivationBank": "sio.evaluate.activations",
    "ActivationsError": "sio.evaluate.activations",
    "extract_activations": "sio.evaluate.activations",
    "load_activations": "sio.evaluate.activations",
    "DETECTORS": "sio.evaluate.detectors",
    "Detector": "sio.evaluate.detectors",
    "DetectorError": "sio.evaluate.detectors",
    "InputDetector": "sio.evaluate.detectors",
    "fit_detector": "sio.evaluate.detectors",
    "evaluate_bank": "sio.evaluate.evaluate",
    "evaluate_checkpoint": "sio.evaluate.evaluate",
    "markdown_table": "sio.evaluate.evaluate",
    "write_results": "sio.evaluate.evaluate",
    "ModelInputs": "sio.evaluate.image_scoring",
    "fpr_at_95_tpr": "sio.evaluate.metrics",
    "mean_metrics": "sio.evaluate.metrics",
    "ood_metrics": "sio.evaluate.metrics",
    "aggregate": "sio.evaluate.report",
    "report": "sio.evaluate.report",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
