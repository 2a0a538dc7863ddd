"""Training methods: one loss object each, registered in METHODS under its ``train.method`` name.

SIO is a plug-in: it only decides which samples fill the ID part of a batch (``int(B*alpha)``
real, the rest synthetic). Every method receives that batch unchanged and may add, without
touching its composition:

- a batch ``transform`` run in the DataLoader workers (CutMix, PixMix, RandAugment);
- extra ``sources`` outside the ID part (OE's outliers, PixMix's mixing pictures);
- its own classifier ``head`` (G-ODIN) and trainable state of its own (VOS);
- parameter groups (G-ODIN: no weight decay on h) and the schedule (CE+: warm-up, longer).

``loss(model, batch)`` returns (loss, ID logits); the logits only feed the logged accuracy.
This module holds ce, logitnorm, ce_plus, cutmix, pixmix and oe; godin.py and vos.py the others.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sio.core.registry import Registry
from sio.core.schedules import cosine
from sio.train.config import TrainConfig

METHODS: Registry = Registry("training method")


@dataclass(frozen=True)
class MethodContext:
    """What a method needs to know about the run besides its config."""

    num_classes: int
    feature_dim: int
    seed: int
    steps_per_epoch: int


class Method(nn.Module, abc.ABC):
    """A training objective. Its parameters and buffers (if any) are trained by the same
    optimiser and saved in the checkpoint as ``method_state``."""

    head = "linear"

    def __init__(self, config: TrainConfig, context: MethodContext):
        super().__init__()
        self.config = config
        self.context = context

    @classmethod
    def head_options(cls, config: TrainConfig) -> dict:
        """Keyword arguments of the classifier head (recorded in the checkpoint)."""
        return {}

    @classmethod
    def inputs(cls, config: TrainConfig) -> dict[str, str]:
        """Extra shard sets the method reads: {source name: folder or URL}, each name the field
        of the method's settings section that gives it (``train.oe.outliers``). The one list of
        them: the trainer opens them, ``sio run`` checks them and records their manifests."""
        return {}

    def sources(self) -> dict[str, int]:
        """Samples per batch from each extra shard set of ``inputs``."""
        return {}

    def transform(self) -> Callable | None:
        """The batch transform run in the DataLoader workers, or None."""
        return None

    def total_epochs(self) -> int:
        return self.config.epochs

    def lr_factor(self) -> Callable[[int], float]:
        return cosine(self.total_epochs() * self.context.steps_per_epoch)

    def param_groups(self, model: nn.Module) -> list[dict]:
        return [{"params": list(model.parameters())}]

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to minimise, the ID logits for logged accuracy) of one batch."""


def build_method(config: TrainConfig, context: MethodContext) -> Method:
    return METHODS.get(config.method)(config, context)


def method_inputs(config: TrainConfig) -> dict[str, str]:
    """The extra shard sets ``config.method`` reads ({} for most): {source name: folder}."""
    return METHODS.get(config.method).inputs(config)
