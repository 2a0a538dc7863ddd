"""What every generator shares: class count, label checks, GPU options, and per-image sampling.

Each image of a ``sample_seeds(labels, seeds)`` call draws its noise from its own stream, seeded
by its seed. Once ``prepare(network_batch=M)`` ran (generation jobs always do), the network also
runs in calls of exactly M rows (a short call is padded with copies of its last row), because a
CPU kernel's float rounding can depend on how many rows it is given: image i is then a function
of ``seeds[i]`` and ``labels[i]`` alone, the same whatever batch, shard or process it was
sampled in (on the same device, software and thread count), and any slice of a set can be
regenerated alone. Without it a call runs as one network batch.
"""

from __future__ import annotations

import abc
import contextlib
from pathlib import Path

import torch


def fixed_calls(function, size: int, *columns):
    """``function(*chunks)`` over ``columns`` (tensors or lists of equal length) in calls of
    exactly ``size`` rows, the last call padded with copies of its last row; the outputs'
    first ``len`` rows, concatenated."""
    total = len(columns[0])
    outputs = []
    for start in range(0, total, size):
        chunks = [column[start : start + size] for column in columns]
        short = size - len(chunks[0])
        if short:
            chunks = [_pad(chunk, short) for chunk in chunks]
        outputs.append(function(*chunks)[: size - short])
    return torch.cat(outputs)


def _pad(chunk, extra: int):
    if chunk is None:
        return None
    if isinstance(chunk, torch.Tensor):
        return torch.cat([chunk, chunk[-1:].expand(extra, *chunk.shape[1:])])
    return [*chunk, *[chunk[-1]] * extra]


class Generator(abc.ABC):
    """A network plus its sampler. Subclasses set ``name``, ``title``, ``conditional``,
    ``class_names``, ``image_size``, ``channels``, ``weights`` and ``network_attr`` (the
    attribute holding the torch module), and implement ``_sample_rows(labels, seeds)``."""

    name = ""
    title = "generator"  # how messages call it, e.g. "BigGAN"
    network_attr = "network"
    conditional = False
    class_names: tuple[str, ...] = ()
    weights: list[Path]
    autocast = contextlib.nullcontext
    network_batch: int | None = None  # rows per network call; None: the whole call

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return next(getattr(self, self.network_attr).parameters()).device

    def prepare(
        self, *, precision: str = "fp32", compile: bool = False, network_batch: int | None = None
    ) -> None:
        """bf16 autocast and torch.compile (for GPUs), and the rows per network call."""
        if precision == "bf16":
            device = self.device.type
            self.autocast = lambda: torch.autocast(device, dtype=torch.bfloat16)
        if compile:
            setattr(self, self.network_attr, torch.compile(getattr(self, self.network_attr)))
        if network_batch is not None:
            if network_batch < 1:
                raise ValueError(f"network_batch must be >= 1, got {network_batch}")
            self.network_batch = network_batch

    def use_class_names(self, names) -> None:
        """Draw the target's classes: for a conditional generator with no class names of its
        own (a text-to-image pipeline prompted with them)."""
        self.class_names = tuple(str(n) for n in names)

    def check_labels(self, n: int, labels: torch.Tensor | None) -> torch.Tensor | None:
        """``labels`` as given (n class ids for a conditional generator, None otherwise), or a
        ValueError saying what is wrong."""
        if not self.conditional:
            if labels is not None:
                raise ValueError(f"this {self.title} is unconditional: sample with labels=None")
            return None
        last = self.num_classes - 1
        if labels is None or tuple(labels.shape) != (n,):
            raise ValueError(
                f"this {self.title} is class-conditional: give {n} labels, class ids in 0..{last}"
            )
        if n and (int(labels.min()) < 0 or int(labels.max()) > last):
            raise ValueError(f"labels must be class ids in 0..{last}")
        return labels.long().cpu()

    def checkpoint_sha256(self) -> str:
        from sio.core.files import sha256_file

        if not self.weights:
            raise FileNotFoundError("the generator was not loaded from a folder with weights")
        return sha256_file(self.weights[0])

    def sample(self, n: int, labels: torch.Tensor | None, seed: int, **options) -> torch.Tensor:
        """``n`` images of the seeds ``seed, seed + 1, ...`` (see ``sample_seeds``)."""
        return self.sample_seeds(labels, [seed + i for i in range(n)], **options)

    @torch.no_grad()
    def sample_seeds(self, labels: torch.Tensor | None, seeds, **options) -> torch.Tensor:
        """uint8 N×C×H×W images, image i a function of ``seeds[i]`` (and ``labels[i]``)."""
        seeds = [int(s) for s in seeds]
        labels = self.check_labels(len(seeds), labels)
        if not seeds:
            size = self.image_size
            return torch.zeros((0, self.channels, size, size), dtype=torch.uint8)
        size = self.network_batch or len(seeds)
        if labels is None:
            return fixed_calls(lambda s: self._sample_rows(None, s, **options), size, seeds)
        return fixed_calls(lambda s, y: self._sample_rows(y, s, **options), size, seeds, labels)

    @abc.abstractmethod
    def _sample_rows(self, labels, seeds, **options) -> torch.Tensor:
        """uint8 images of exactly ``len(seeds)`` rows: one network call (``fixed_calls`` pads
        the last call to ``network_batch``)."""


def seeded_generators(seeds) -> list[torch.Generator]:
    """One CPU generator per image."""
    return [torch.Generator().manual_seed(int(s) % 2**63) for s in seeds]
