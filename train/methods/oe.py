"""Outlier Exposure: cross-entropy plus KL to uniform on outliers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sio.train.methods.base import METHODS, Method


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
