"""StyleGAN2-ADA for the generate stage: NVIDIA's network pickles, loaded without their code.

``generator.name: stylegan2-ada`` with ``generator.path`` a stylegan2-ada-pytorch ``.pkl`` (e.g.
the class-conditional ``cifar10.pkl``), a folder holding one, or a folder exported by
``sio stylegan2-export`` (see load.py). The pickle is read by a restricted unpickler
that runs none of its embedded code; the network is sio's own (network.py), equal to
NVIDIA's float32 path to within 1e-4.

Sampling follows NVIDIA's ``generate.py``, one seed per image: image i's ``z`` is
``numpy.random.RandomState(seeds[i]).randn(1, z_dim)`` (so ``sample(n, labels, s)`` holds their
images for ``--seeds=s,s+1,...`` and those classes) and its ``random`` noise inputs come from its
own torch stream, the class one-hot, truncation ψ and ``noise_mode`` from
``generator.stylegan2``, and pixels ``clamp(127.5·x + 128, 0, 255)`` truncated to uint8. With a
benchmark ``image_size`` other than the network's, images are resized (bilinear, antialiased).
The weights are the user's: NVIDIA's models are licensed for non-commercial use only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sio.generate.base import Generator, seeded_generators
from sio.generate.config import StyleGAN2Settings
from sio.generate.stylegan2.load import load_network
from sio.generate.stylegan2.network import StyleGAN2


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """NVIDIA's quantisation: ``clamp(127.5·x + 128, 0, 255)``, truncated."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class StyleGAN2Generator(Generator):
    name = "stylegan2-ada"
    title = "StyleGAN2"
    network_attr = "network"

    def __init__(
        self,
        network: StyleGAN2,
        settings: StyleGAN2Settings | None = None,
        *,
        weights: Path,
        image_size: int | None = None,
    ):
        self.network = network.eval().requires_grad_(False)
        self.spec = network.spec
        self.settings = settings or StyleGAN2Settings()
        self.conditional = self.spec.c_dim > 0
        self.class_names = tuple(str(k) for k in range(self.spec.c_dim))
        self.image_size = int(image_size or self.spec.img_resolution)
        self.channels = self.spec.img_channels
        self.weights = [Path(weights)]

    @classmethod
    def from_pretrained(
        cls, path, device="cpu", *, settings=None, image_size=None
    ) -> StyleGAN2Generator:
        network, weights = load_network(path)
        return cls(network.to(device), settings, weights=weights, image_size=image_size)

    def describe(self) -> dict:
        return {
            "truncation_psi": self.settings.truncation_psi,
            "noise_mode": self.settings.noise_mode,
            "resolution": self.spec.img_resolution,
        }

    def _sample_rows(self, labels, seeds) -> torch.Tensor:
        device = self.device
        c = None
        if labels is not None:
            c = F.one_hot(labels, self.spec.c_dim).float().to(device)
        z = np.stack([np.random.RandomState(s % 2**32).randn(self.spec.z_dim) for s in seeds])
        z = torch.from_numpy(z).float().to(device)
        generators = seeded_generators(seeds)
        with self.autocast():
            images = self.network(
                z, c, self.settings.truncation_psi, None, self.settings.noise_mode, generators
            )
        images = images.float()
        if images.shape[-1] != self.image_size:
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True)
        return to_uint8(images).cpu()
