"""ODIN: the one detector that needs the classifier and the images (an ``InputDetector``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sio.evaluate.config import OdinSettings
from sio.evaluate.detectors.base import DETECTORS, InputDetector


@DETECTORS.register("odin")
class ODIN(InputDetector):
    """ODIN (Liang et al., "Enhancing the reliability of OOD image detection in neural
    networks", ICLR 2018), as OpenOOD v1.5: y = argmax z(x); x' = x - eps * sign(grad_x
    CE(z(x) / T, y)) with pixels in [0, 1] (equal to OpenOOD's step of eps / std per channel
    on normalised inputs; sign(0) counts as +1, as there); score = max softmax(z(x') / T).
    T = 1000, eps = 0.0014.
    """

    # OpenOOD v1.5 configs/postprocessors/odin.yml, postprocessor_sweep (temperature, noise)
    search_grid = {"temperature": (1.0, 10.0, 100.0, 1000.0), "epsilon": (0.0014, 0.0028)}

    def __init__(
        self,
        temperature: float = OdinSettings.temperature,
        epsilon: float = OdinSettings.epsilon,
    ):
        self.temperature, self.epsilon = temperature, epsilon

    def perturb(self, model, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(pixels) / self.temperature
            loss = F.cross_entropy(logits, logits.argmax(dim=1), reduction="sum")
            (gradient,) = torch.autograd.grad(loss, pixels)
        step = torch.where(gradient >= 0, 1.0, -1.0)
        return pixels.detach() - self.epsilon * step

    def score_batch(self, model, images):
        pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        perturbed = self.perturb(model, pixels)
        with torch.no_grad():
            logits = model(perturbed).double() / self.temperature
        return F.softmax(logits, dim=1).max(dim=1).values.cpu().numpy().astype(np.float64)

    def info(self):
        return {"temperature": self.temperature, "epsilon": self.epsilon}
