"""Cross-entropy: the plain objective, and SIO's default."""

from __future__ import annotations

import torch.nn.functional as F

from sio.train.methods.base import METHODS, Method


@METHODS.register("ce")
class CrossEntropy(Method):
    """Cross-entropy: L = CE(z, y) with z = fc(h)."""

    def loss(self, model, batch):
        logits = model(batch["images"])
        return F.cross_entropy(logits, batch["labels"]), logits
