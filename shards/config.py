"""The ``shard`` section of pipeline.yaml: which benchmark ``sio shard`` writes, and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sio.core.config import check as _check


@dataclass(frozen=True)
class DigitsConfig:
    """The embedded benchmark built from scikit-learn's digits and scikit-image's images."""

    id_classes: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    near_ood_classes: tuple[int, ...] = (6, 7, 8, 9)
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    far_ood_images_per_set: int = 500

    def __post_init__(self):
        classes = set(self.id_classes) | set(self.near_ood_classes)
        _check(all(0 <= c <= 9 for c in classes), "id_classes", "digit classes are 0..9")
        _check(len(self.id_classes) >= 2, "id_classes", "needs at least two classes")
        _check(
            not set(self.id_classes) & set(self.near_ood_classes),
            "near_ood_classes",
            "must not overlap id_classes",
        )
        _check(0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)")
        _check(0 < self.test_fraction < 1, "test_fraction", "must be in (0, 1)")
        _check(self.val_fraction + self.test_fraction < 1, "test_fraction", "val + test < 1")
        _check(self.far_ood_images_per_set > 0, "far_ood_images_per_set", "must be positive")


@dataclass(frozen=True)
class ShardConfig:
    """``benchmark``: ``digits`` (built in code), a benchmark file shipped in sio/shards/benchmarks
    (``cifar10``, ``cifar100``, ``imagenet10``, ``imagenet-dogs``, ``mnist5k``) or the path of
    one's own ``.yaml``; ``data_root``: the folder its dataset paths are relative to.

    ``order``: ``shuffled`` (default) writes each split in a random order seeded by ``seed`` and
    the split's folder name, so its shards mix the classes however the source is sorted
    (MNIST-style files, ImageFolder and ImageNet readers list one class after another);
    ``source`` keeps the readers' order. Each manifest records it (``provenance.shard_config``)."""

    benchmark: str = "digits"
    seed: int = 0
    shard_size: int = 256
    order: Literal["shuffled", "source"] = "shuffled"
    data_root: str | None = None
    digits: DigitsConfig = field(default_factory=DigitsConfig)

    def __post_init__(self):
        _check(bool(self.benchmark), "benchmark", "must name a benchmark or a .yaml file")
        _check(self.shard_size > 0, "shard_size", "must be positive")
