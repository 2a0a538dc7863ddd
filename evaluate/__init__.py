"""Evaluate stage: post-hoc detectors on cached activations of sio runs or any classifier
(``Evaluator``), one detector on a model and a DataLoader (``detector``, the notebook path),
OOD metrics, per-sample score histograms (``plot_scores``), tables over seeds."""

from sio.core.lazy import lazy_exports

# each module and the public names it defines, imported on first use
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "sio.evaluate.activations": (
            "ActivationBank",
            "ActivationsError",
            "benchmark_record",
            "extract_activations",
            "load_activations",
        ),
        "sio.evaluate.detectors": (
            "DETECTORS",
            "Detector",
            "DetectorError",
            "InputDetector",
            "fit_detector",
        ),
        "sio.evaluate.evaluate": (
            "evaluate_bank",
            "evaluate_checkpoint",
            "markdown_table",
            "summary_line",
            "write_results",
        ),
        "sio.evaluate.image_scoring": ("ModelInputs",),
        "sio.evaluate.models": (
            "Evaluator",
            "ModelAdapter",
            "ModelError",
            "build_model",
            "openood_resnet18_32x32_to_sio",
        ),
        "sio.evaluate.metrics": ("fpr_at_95_tpr", "mean_metrics", "ood_metrics"),
        "sio.evaluate.notebook": ("NotebookDetector", "detector"),
        "sio.evaluate.score_plots": ("plot_scores",),
        "sio.evaluate.report": (
            "aggregate",
            "load_run",
            "mean_std",
            "mean_std_cell",
            "report",
            # `report` and `aggregate` are also submodules' names, which Python binds on the
            # package once they are imported: the orchestrator imports these names instead
            ("write_report", "report"),
            ("aggregate_runs", "aggregate"),
        ),
        "sio.evaluate.config": ("EvaluateConfig",),
        "sio.evaluate.stage": ("evaluate_stage",),
    },
)
