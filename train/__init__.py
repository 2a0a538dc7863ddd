"""Train stage: stream real and synthetic shard sets at exactly alpha : 1 - alpha per batch,
with any of the training methods in METHODS and the architectures in BACKBONES."""

from . import densenet, godin, vos  # noqa: F401  (register densenet100, godin, vos)
from .godin import GodinClassifier
from .methods import METHODS, Method, MethodContext, build_method, method_inputs
from .mixing import batch_counts, compose, rank_share, steps_per_epoch, worker_steps
from .models import BACKBONES, HEADS, Classifier, build_classifier
from .trainer import CHECKPOINT, load_checkpoint, train_classifier

__all__ = [
    "BACKBONES",
    "CHECKPOINT",
    "HEADS",
    "METHODS",
    "Classifier",
    "GodinClassifier",
    "Method",
    "MethodContext",
    "batch_counts",
    "build_classifier",
    "build_method",
    "compose",
    "load_checkpoint",
    "method_inputs",
    "rank_share",
    "steps_per_epoch",
    "train_classifier",
    "worker_steps",
]
