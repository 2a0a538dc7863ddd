"""Train stage: stream real and synthetic shard sets at exactly alpha : 1 - alpha per batch,
with any of the training methods in METHODS and the architectures in BACKBONES."""

from sio.core.lazy import lazy_exports

# each module and the public names it defines, imported on first use
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "sio.train.methods": (
            "METHODS",
            "GodinClassifier",
            "Method",
            "MethodContext",
            "build_method",
            "method_inputs",
        ),
        "sio.train.mixing": (
            "batch_counts",
            "StepItems",
            "rank_share",
            "steps_per_epoch",
        ),
        "sio.train.models": ("BACKBONES", "HEADS", "Classifier", "build_classifier"),
        "sio.train.checkpoint": (
            "CHECKPOINT",
            "RunInfo",
            "checkpoint_file",
            "load_checkpoint",
            "load_classifier",
        ),
        "sio.train.config": ("TrainConfig",),
        "sio.train.stage": ("RESUMABLE_CHANGES", "train_stage"),
        "sio.train.trainer": ("train_classifier",),
    },
)
