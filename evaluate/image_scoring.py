"""Scoring with detectors that need the model and the images: the benchmark's shard sets are
streamed through the checkpoint's classifier (``sio evaluate --run`` and ``sio run``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sio.shards import iter_batches, read_benchmark
from sio.train import load_checkpoint

from .detector_base import InputDetector, check_finite


@dataclass(frozen=True)
class ModelInputs:
    """Where an ``InputDetector`` finds the classifier and the images it scores."""

    checkpoint: Path
    benchmark_dir: Path
    batch_size: int
    device: str = "cpu"


def score_shard_set(detector: InputDetector, model, shard_set: Path, inputs: ModelInputs):
    scores = [
        detector.score_batch(model, images.to(inputs.device))
        for images, _ in tqdm(
            iter_batches(shard_set, inputs.batch_size),
            desc=f"{detector.name} {shard_set.name}",
            unit="batch",
            leave=False,
        )
    ]
    return np.concatenate(scores) if scores else np.zeros(0)


def score_image_sets(detector: InputDetector, inputs: ModelInputs):
    """(ID test scores, {"near": {name: scores}, "far": {...}}), each checked to be finite."""
    benchmark = read_benchmark(inputs.benchmark_dir)
    model, _ = load_checkpoint(inputs.checkpoint, inputs.device)
    id_scores = check_finite(
        detector.name,
        "id.test",
        score_shard_set(detector, model, benchmark.id_splits["test"], inputs),
    )
    ood = {}
    for group, sets in (("near", benchmark.near), ("far", benchmark.far)):
        ood[group] = {
            name: check_finite(
                detector.name, f"ood.{group}.{name}", score_shard_set(detector, model, path, inputs)
            )
            for name, path in sets.items()
        }
    return id_scores, ood
