"""Train stage: stream real and synthetic shard sets at exactly alpha : 1 - alpha per batch."""

from .mixing import batch_counts, compose, rank_share, steps_per_epoch, worker_steps
from .models import BACKBONES, Classifier, build_classifier
from .trainer import CHECKPOINT, load_checkpoint, train_classifier

__all__ = [
    "BACKBONES",
    "CHECKPOINT",
    "Classifier",
    "batch_counts",
    "build_classifier",
    "compose",
    "load_checkpoint",
    "rank_share",
    "steps_per_epoch",
    "train_classifier",
    "worker_steps",
]
