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
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sio.config import TrainConfig
from sio.registry import Registry

from .batch_transforms import CutMixTransform, PixMixTransform, RandAugmentTransform

METHODS: Registry = Registry("training method")


@dataclass(frozen=True)
class MethodContext:
    """What a method needs to know about the run besides its config."""

    num_classes: int
    feature_dim: int
    seed: int
    steps_per_epoch: int


def cosine(total_steps: int) -> Callable[[int], float]:
    """Per-step cosine from 1 to 0 over ``total_steps`` (SIO's and OpenOOD's schedule)."""
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up (step + 1) / warmup_steps, then the cosine from 1 to 0 over the rest."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = min(step - warmup_steps, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * done / (total_steps - warmup_steps)))

    return factor


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
        """Extra shard sets the method reads: {source name: folder}."""
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


@METHODS.register("ce")
class CrossEntropy(Method):
    """Cross-entropy: L = CE(z, y) with z = fc(h)."""

    def loss(self, model, batch):
        logits = model(batch["images"])
        return F.cross_entropy(logits, batch["labels"]), logits


@METHODS.register("logitnorm")
class LogitNorm(Method):
    """LogitNorm (Wei et al., "Mitigating neural network overconfidence with logit
    normalization", ICML 2022): L = CE(z / (tau * (||z||_2 + 1e-7)), y), tau = 0.04."""

    def loss(self, model, batch):
        logits = model(batch["images"])
        norms = logits.norm(p=2, dim=1, keepdim=True) + 1e-7
        scaled = logits / (norms * self.config.logitnorm.temperature)
        return F.cross_entropy(scaled, batch["labels"]), logits


@METHODS.register("ce_plus")
class CePlus(Method):
    """CE+, a "good closed-set classifier" recipe in the spirit of Vaze et al. (ICLR 2022), as
    defined here: RandAugment (N ops at magnitude M of 30) after the crop and flip, label
    smoothing eps: L = CE with targets (1 - eps) one-hot + eps / K, ``epoch_multiplier`` times
    the epochs, linear warm-up over ``warmup_epochs`` and then a per-step cosine to 0."""

    def transform(self):
        settings = self.config.ce_plus
        return RandAugmentTransform(settings.randaugment_ops, settings.randaugment_magnitude)

    def total_epochs(self) -> int:
        return self.config.epochs * self.config.ce_plus.epoch_multiplier

    def lr_factor(self):
        steps = self.context.steps_per_epoch
        return warmup_cosine(self.total_epochs() * steps, self.config.ce_plus.warmup_epochs * steps)

    def loss(self, model, batch):
        logits = model(batch["images"])
        smoothing = self.config.ce_plus.label_smoothing
        return F.cross_entropy(logits, batch["labels"], label_smoothing=smoothing), logits


@METHODS.register("cutmix")
class CutMix(Method):
    """CutMix (Yun et al., ICCV 2019) on every batch, beta = 1: L = lam CE(z, y) +
    (1 - lam) CE(z, y[partner]), lam the exact kept area share."""

    def transform(self):
        return CutMixTransform(self.config.cutmix.beta)

    def loss(self, model, batch):
        logits = model(batch["images"])
        labels, lam = batch["labels"], float(batch["mix_lambda"])
        partner_labels = labels[batch["mix_partner"]]
        loss = lam * F.cross_entropy(logits, labels)
        return loss + (1 - lam) * F.cross_entropy(logits, partner_labels), logits


@METHODS.register("pixmix")
class PixMix(Method):
    """PixMix (Hendrycks et al., CVPR 2022): every ID image (real or synthetic) is mixed with
    pictures of the ``pixmix.mixing`` shard set, k = 4, beta = 3, severity 3; L = CE."""

    @classmethod
    def inputs(cls, config):
        return {"mixing": config.pixmix.mixing}

    def sources(self):
        return {"mixing": self.config.batch_size}

    def transform(self):
        settings = self.config.pixmix
        return PixMixTransform(settings.k, settings.beta, settings.severity)

    def loss(self, model, batch):
        logits = model(batch["images"])
        return F.cross_entropy(logits, batch["labels"]), logits


def uniform_kl(logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(U || softmax(z)) = logsumexp(z) - mean_k z_k - log K: OE's cross-entropy to the
    uniform distribution minus its constant minimum log K (same gradient; 0 at uniform z)."""
    spread = torch.logsumexp(logits, dim=1) - logits.mean(dim=1)
    return (spread - math.log(logits.shape[1])).mean()


@METHODS.register("oe")
class OutlierExposure(Method):
    """Outlier Exposure (Hendrycks et al., "Deep anomaly detection with outlier exposure",
    ICLR 2019): one forward pass over [ID batch; outliers], ``outlier_multiple`` (2) times the
    batch of outliers from ``oe.outliers``; L = CE(z_ID, y) + 0.5 KL(U || softmax(z_out)).
    The ID part is the exact real + synthetic batch; outliers are never synthetic samples."""

    @classmethod
    def inputs(cls, config):
        return {"outliers": config.oe.outliers}

    def sources(self):
        return {"outliers": self.config.oe.outlier_multiple * self.config.batch_size}

    def loss(self, model, batch):
        images = batch["images"]
        logits = model(torch.cat([images, batch["outliers"].to(images.dtype)]))
        id_logits = logits[: len(images)]
        ce = F.cross_entropy(id_logits, batch["labels"])
        return ce + self.config.oe.weight * uniform_kl(logits[len(images) :]), id_logits


def build_method(config: TrainConfig, context: MethodContext) -> Method:
    return METHODS.get(config.method)(config, context)


def method_inputs(config: TrainConfig) -> dict[str, str]:
    """The extra shard sets ``config.method`` reads ({} for most): {source name: folder}."""
    return METHODS.get(config.method).inputs(config)
