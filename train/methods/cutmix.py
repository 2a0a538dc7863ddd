"""CutMix: cross-entropy on pasted patches with the exact area ratio."""

from __future__ import annotations

import torch.nn.functional as F

from sio.train.methods.base import METHODS, Method
from sio.train.methods.batch_transforms import CutMixTransform


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
