"""The ID validation accuracy a run logs after each epoch (``val_acc`` in ``log.jsonl``).

``sio train --val SET`` (``sio run`` passes the benchmark's ``id_val``) names a shard set of the
real set's classes, channels and image size. After each epoch rank 0 puts the classifier in eval
mode, predicts every image of the set in order (``model(uint8 images).argmax(1)``, as
``load_classifier`` + any evaluation would) and puts the train mode back. Nothing it does reaches
a training batch, the weights or any RNG state: the BatchNorm statistics are not updated in eval
mode, the global RNG states are forked around it, and the batches are a function of (seed, step)
alone, so a run's weights are bitwise the same with and without ``--val``. A set of at most
``HOLD_BYTES`` is read once and held in memory; a larger one is read again after each epoch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sio.shardset import Manifest, iter_batches, read_manifest
from sio.train.sources import check_compatible

HOLD_BYTES = 256 * 2**20


class ValidationSet:
    """A shard set of ID validation images, checked against the real training set."""

    def __init__(self, location: str | Path, real: Manifest, batch_size: int):
        self.location = location
        self.manifest = read_manifest(location)
        check_compatible(real, self.manifest, f"val ({location})", same_classes=True)
        if not self.manifest.num_samples:
            raise ValueError(f"{location}: the validation set holds no images")
        self.batch_size = batch_size
        self._held: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _batches(self):
        if self._held is not None:
            return self._held
        height, width = self.manifest.image_size
        size = self.manifest.num_samples * self.manifest.channels * height * width
        if size > HOLD_BYTES:
            return iter_batches(self.location, self.batch_size)
        self._held = list(iter_batches(self.location, self.batch_size))
        return self._held

    def accuracy(self, model: torch.nn.Module, device) -> float:
        """Top-1 accuracy of ``model`` on the set, leaving its mode and the RNG states as they
        were (one host sync, at the end)."""
        was_training = model.training
        devices = []
        if str(device).startswith("cuda"):
            index = torch.device(device).index
            devices = [torch.cuda.current_device() if index is None else index]
        correct, total = None, 0
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            try:
                for images, labels in self._batches():
                    predicted = model(images.to(device)).argmax(1)
                    hits = (predicted == labels.to(device)).sum()
                    correct = hits if correct is None else correct + hits
                    total += len(labels)
            finally:
                model.train(was_training)
        return int(correct) / total
