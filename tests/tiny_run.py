"""A two-class digits benchmark and an untrained small_cnn checkpoint, written by hand."""

from __future__ import annotations

import torch

from sio.shards import write_benchmark
from sio.shards.config import DigitsConfig, ShardConfig
from sio.train.models import build_classifier
from sio.train.trainer import CHECKPOINT_FORMAT


def write_tiny_run(root, shard_size: int):
    """``root/bench`` (ID digits 0 and 1, near-OOD 2, 16 far images per set) and
    ``root/run/checkpoint.pt`` (seed 7, alpha 1)."""
    digits = DigitsConfig(id_classes=(0, 1), near_ood_classes=(2,), far_ood_images_per_set=16)
    write_benchmark(ShardConfig(shard_size=shard_size, digits=digits), root / "bench")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_classifier("small_cnn", in_channels=1, num_classes=2, mean=[0.3], std=[0.3])
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": "small_cnn",
        "channels": 1,
        "class_names": ["0", "1"],
        "pixel_mean": [0.3],
        "pixel_std": [0.3],
        "model_state": model.state_dict(),
        "alpha": 1.0,
        "seed": 7,
    }
    (root / "run").mkdir()
    torch.save(state, root / "run" / "checkpoint.pt")
    return root
