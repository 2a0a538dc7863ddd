"""CE+: cross-entropy with the CE+ recipe (warm-up, longer schedule, RandAugment)."""

from __future__ import annotations

import torch.nn.functional as F

from sio.core.schedules import warmup_cosine
from sio.train.methods.base import METHODS, Method
from sio.train.methods.batch_transforms import RandAugmentTransform


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
