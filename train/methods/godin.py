"""G-ODIN (Hsu et al., "Generalized ODIN", CVPR 2020), DeConf-C: the classifier head and loss.

With penultimate features phi: h_i(x) = cos(w_i, phi) (no bias), g(x) = sigmoid(BN(linear(phi)))
and training logits h / g under cross-entropy; h's weights get no weight decay. The test score is
max_i h_i(x~) with x~ = x + eps * sign(grad_x max_i h_i(x)), eps = 0.0025 on pixels in [0, 1]
(the ODIN convention: OpenOOD's step eps / std on normalised inputs is the same step).

The evaluator reads ``features(x)`` and ``fc`` as for every classifier: here ``features`` is the
unit-length phi / ||phi|| and ``fc`` holds the unit-length rows w_i / ||w_i|| with zero bias, so
``fc(features(x))`` is exactly h(x) and every post-hoc detector scores h (MLS = G-ODIN's score
without the perturbation). ``godin_score`` is the perturbed score for an input-gradient detector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sio.train.methods.base import METHODS, Method
from sio.train.models import HEADS, Classifier


class CosineLinear(nn.Module):
    """h_i = <x, w_i / ||w_i||>: cosine similarity for unit-length x. ``weight`` is the
    row-normalised matrix and ``bias`` a zero buffer, so it reads like an ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.direction = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_normal_(self.direction, nonlinearity="relu")
        self.register_buffer("bias", torch.zeros(out_features))

    @property
    def weight(self) -> torch.Tensor:
        return F.normalize(self.direction, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@HEADS.register("godin")
class GodinClassifier(Classifier):
    """normalise -> backbone -> phi; h = fc(phi / ||phi||) (cosine), g = sigmoid(BN(linear(phi))).
    ``forward`` gives h (test-time logits, argmax h = argmax h / g); ``deconf`` gives (h, g)."""

    def __init__(self, backbone: nn.Module, num_classes: int, mean, std, epsilon: float = 0.0025):
        super().__init__(backbone, num_classes, mean, std)
        self.g = nn.Sequential(nn.Linear(backbone.feature_dim, 1), nn.BatchNorm1d(1), nn.Sigmoid())
        self.epsilon = epsilon

    def make_fc(self, feature_dim: int, num_classes: int) -> nn.Module:
        return CosineLinear(feature_dim, num_classes)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """phi, the backbone's raw penultimate features."""
        return self.backbone(self.normalise(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(images), dim=1)

    def deconf(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.embed(images)
        return self.fc(F.normalize(phi, dim=1)), self.g(phi)

    def godin_score(self, images: torch.Tensor, epsilon: float | None = None) -> torch.Tensor:
        """max_i h_i(x~), x~ = x + eps sign(grad_x max_i h_i(x)) on pixels in [0, 1], not
        clipped and with sign(0) = +1 (as OpenOOD's G-ODIN and ODIN). Call in eval mode: in
        train mode batch norm couples the samples of a batch."""
        epsilon = self.epsilon if epsilon is None else epsilon
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            score = self(x).max(dim=1).values
            (grad,) = torch.autograd.grad(score.sum(), x)
        step = torch.where(grad >= 0, 1.0, -1.0)
        with torch.no_grad():
            return self(x.detach() + epsilon * step).max(dim=1).values


@METHODS.register("godin")
class Godin(Method):
    """G-ODIN training: L = CE(h / g, y) on the G-ODIN head; no weight decay on h's weights."""

    head = "godin"

    @classmethod
    def head_options(cls, config):
        return {"epsilon": config.godin.epsilon}

    def param_groups(self, model):
        h_weights = model.fc.direction
        others = [p for p in model.parameters() if p is not h_weights]
        return [{"params": others}, {"params": [h_weights], "weight_decay": 0.0}]

    def loss(self, model, batch):
        h, g = model.deconf(batch["images"])
        return F.cross_entropy(h / g, batch["labels"]), h
