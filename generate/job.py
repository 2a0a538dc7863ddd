"""A generation job: a loaded generator, its settings, its class names and its classifier.

What one image is (its seed, its label, the batches it comes in) is in images.py, how a shard is
written in writing.py, how a folder is resumed and its manifest published in resume.py, and how
both ``sio generate`` and ``sio run`` build a job (with the same checks) in prepare.py.

Shard i holds images ``[i·S, min((i+1)·S, N))``; its file is ``shard_name(i)`` and its progress
record ``record_name(i)``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sio.core.config import to_dict
from sio.core.files import sha256_file
from sio.generate.base import fixed_calls
from sio.generate.config import BYTE_NEUTRAL as BYTE_NEUTRAL  # its home: config.py
from sio.generate.config import PROCESS_ONLY as PROCESS_ONLY
from sio.generate.config import GenerateConfig, LabelConfig
from sio.generate.labels import classify

PROGRESS = ".progress"
JOB_FILE = f"{PROGRESS}/job.json"
LOCK_FILE = f"{PROGRESS}/lock"


class GenerationError(ValueError):
    """A job that cannot go on (shown as one ``Error:`` line)."""


@dataclass
class Job:
    generator: object
    config: GenerateConfig
    class_names: tuple[str, ...]
    classifier: object = None
    classifier_path: str | None = None
    labels: LabelConfig = field(default_factory=LabelConfig)
    classifier_sha256: str | None = None  # default: of the file at classifier_path

    def __post_init__(self):
        if self.classifier is not None and self.classifier_sha256 is None:
            self.classifier_sha256 = classifier_fingerprint(self.classifier, self.classifier_path)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.config.num_images / self.config.shard_size)

    def shard_samples(self, index: int) -> range:
        """The indices of the images of shard ``index``."""
        first = index * self.config.shard_size
        return range(first, min(first + self.config.shard_size, self.config.num_images))

    def definition(self) -> dict:
        return {
            "generator": self.generator.name,
            "checkpoint_sha256": self.generator.checkpoint_sha256(),
            "settings": self.generator.describe(),
            "generate": to_dict(self.config),
            "class_names": list(self.class_names),
            "labels": self._label_mode(),
            "classifier_sha256": self.classifier_sha256,
        }

    def _label_mode(self) -> dict:
        if self.generator.conditional:
            if not self.filtered:
                return {"mode": "conditional"}
            threshold = self.labels.min_confidence
            return {"mode": "conditional", "filter": "agree", "min_confidence": threshold}
        pseudo = {k: v for k, v in to_dict(self.labels).items() if k != "filter"}
        return {"mode": "pseudo", **pseudo}

    @property
    def filtered(self) -> bool:
        """Conditional images kept only where the classifier agrees (``labels.filter``)."""
        return self.generator.conditional and self.labels.filter == "agree"

    def prepare(self) -> None:
        """Fix the generator's rows per network call (every image a function of its index)."""
        self.generator.prepare(network_batch=self.config.network_batch)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's softmax, in calls of ``network_batch`` rows like the generator."""
        return fixed_calls(
            lambda x: classify(self.classifier, x), self.config.network_batch, images
        )


def classifier_fingerprint(classifier, path) -> str:
    """sha256 of the classifier's checkpoint file, else of its parameters and buffers."""
    if path and Path(path).is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for name, tensor in sorted(classifier.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"state:{digest.hexdigest()}"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def record_name(index: int) -> str:
    return f"{PROGRESS}/{shard_name(index)}.json"
