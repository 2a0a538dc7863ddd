"""PixMix: cross-entropy on images mixed with fractals/pictures."""

from __future__ import annotations

import torch.nn.functional as F

from sio.train.methods.base import METHODS, Method
from sio.train.methods.batch_transforms import PixMixTransform


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
