"""Scoring with detectors that need the model and the images: the benchmark's shard sets are
streamed through the checkpoint's classifier (``sio evaluate --run`` and ``sio run``).

With the search on, ``rows`` ({group: {name: sorted row indices}}, from ``search.OodSplit``)
picks the samples of each OOD set to score: its test part, or its OOD val part. Rows index the
shard set's samples in order, the same order as the activations extracted from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sio.core.progress import progress
from sio.evaluate.detectors.base import InputDetector, check_finite
from sio.shards import read_benchmark
from sio.shardset import iter_batches, read_manifest
from sio.train import load_classifier


@dataclass(frozen=True)
class ModelInputs:
    """Where an ``InputDetector`` finds the classifier and the images it scores: a checkpoint,
    or a ``model`` already built (``Evaluator``: any classifier in a ``ModelAdapter``)."""

    checkpoint: Path | None
    benchmark_dir: Path
    batch_size: int
    device: str = "cpu"
    model: object = None


def load_model(inputs: ModelInputs):
    if inputs.model is not None:
        return inputs.model
    model, _ = load_classifier(inputs.checkpoint, inputs.device)
    return model


def score_shard_set(
    detector: InputDetector, model, shard_set: Path, inputs: ModelInputs, rows=None
) -> np.ndarray:
    """Scores of every sample of ``shard_set`` in order, or of the sorted sample ``rows`` only."""
    scores, start = [], 0
    for images, _ in progress(
        iter_batches(shard_set, inputs.batch_size),
        desc=f"{detector.name} {shard_set.name}",
        total=-(-read_manifest(shard_set).num_samples // inputs.batch_size),
        unit="batch",
    ):
        batch, first, start = images, start, start + len(images)
        if rows is not None:
            picked = rows[(rows >= first) & (rows < start)] - first
            batch = images[torch.as_tensor(picked, dtype=torch.long)]
        if len(batch):
            scores.append(detector.score_batch(model, batch.to(inputs.device)))
    scores = np.concatenate(scores) if scores else np.zeros(0)
    if rows is not None and len(scores) != len(rows):
        raise ValueError(
            f"{shard_set}: {start} samples, fewer than the activations extracted from it"
        )
    return scores


def _ood_sets(benchmark):
    return (("near", benchmark.near), ("far", benchmark.far))


def score_image_sets(detector: InputDetector, inputs: ModelInputs, rows=None, model=None):
    """(ID test scores, {"near": {name: scores}, "far": {...}}), each checked to be finite; with
    ``rows``, only those rows of each OOD set."""
    benchmark = read_benchmark(inputs.benchmark_dir)
    model = load_model(inputs) if model is None else model
    id_scores = check_finite(
        detector.name,
        "id.test",
        score_shard_set(detector, model, benchmark.id_splits["test"], inputs),
    )
    ood = {}
    for group, sets in _ood_sets(benchmark):
        ood[group] = {
            name: check_finite(
                detector.name,
                f"ood.{group}.{name}",
                score_shard_set(
                    detector, model, path, inputs, None if rows is None else rows[group][name]
                ),
            )
            for name, path in sets.items()
        }
    return id_scores, ood


def score_image_val(detector: InputDetector, model, inputs: ModelInputs, val_rows):
    """(ID val scores, the ``val_rows`` of every OOD set stacked): the search's val data."""
    benchmark = read_benchmark(inputs.benchmark_dir)
    id_val = score_shard_set(detector, model, benchmark.id_splits["val"], inputs)
    ood_val = [
        score_shard_set(detector, model, path, inputs, val_rows[group][name])
        for group, sets in _ood_sets(benchmark)
        for name, path in sets.items()
    ]
    return (
        check_finite(detector.name, "id.val", id_val),
        check_finite(detector.name, "ood.val", np.concatenate(ood_val)),
    )
