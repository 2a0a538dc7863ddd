"""Train stage: stream real and synthetic shard sets at exactly alpha : 1 - alpha per batch,
with any of the training methods in METHODS and the architectures in BACKBONES."""

from sio.core.lazy import lazy_exports

_EXPORTS = {
    "METHODS": "sio.train.methods",
    "GodinClassifier": "sio.train.methods",
    "Method": "sio.train.methods",
    "MethodContext": "sio.train.methods",
    "build_method": "sio.train.methods",
    "method_inputs": "sio.train.methods",
    "batch_counts": "sio.train.mixing",
    "compose": "sio.train.mixing",
    "rank_share": "sio.train.mixing",
    "steps_per_epoch": "sio.train.mixing",
    "worker_steps": "sio.train.mixing",
    "BACKBONES": "sio.train.models",
    "HEADS": "sio.train.models",
    "Classifier": "sio.train.models",
    "build_classifier": "sio.train.models",
    "CHECKPOINT": "sio.train.checkpoint",
    "RunInfo": "sio.train.checkpoint",
    "checkpoint_file": "sio.train.checkpoint",
    "load_checkpoint": "sio.train.checkpoint",
    "load_classifier": "sio.train.checkpoint",
    "train_classifier": "sio.train.trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
