"""LogitNorm: cross-entropy on L2-normalised logits."""

from __future__ import annotations

import torch.nn.functional as F

from sio.train.methods.base import METHODS, Method


@METHODS.register("logitnorm")
class LogitNorm(Method):
    """LogitNorm (Wei et al., "Mitigating neural network overconfidence with logit
    normalization", ICML 2022): L = CE(z / (tau * (||z||_2 + 1e-7)), y), tau = 0.04."""

    def loss(self, model, batch):
        logits = model(batch["images"])
        norms = logits.norm(p=2, dim=1, keepdim=True) + 1e-7
        scaled = logits / (norms * self.config.logitnorm.temperature)
        return F.cross_entropy(scaled, batch["labels"]), logits
