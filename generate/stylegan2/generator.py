"""StyleGAN2-ADA for the generate stage: NVIDIA's network pickles, loaded without their code.

``generator.name: stylegan2-ada`` with ``generator.path`` a stylegan2-ada-pytorch ``.pkl`` (e.g.
the class-conditional ``cifar10.pkl``), a folder holding one, or a folder exported by
``sio stylegan2-export`` (see load.py). The pickle is read by a restricted unpickler
that runs none of its embedded code; the network is sio's own (network.py), equal to
NVIDIA's float32 path to within 1e-4.

Sampling follows NVIDIA's ``generate.py``: ``z`` row-major from
``numpy.random.RandomState(seed).randn(n, z_dim)`` (so ``sample(1, [k], s)`` is their image for
``--seeds=s --class=k``), the class one-hot, truncation ψ and ``noise_mode`` from
``generator.stylegan2``, and pixels ``clamp(127.5·x + 128, 0, 255)`` truncated to uint8. With a
benchmark ``image_size`` other than the network's, images are resized (bilinear, antialiased).
The weights are the user's: NVIDIA's models are licensed for non-commercial use only.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sio.core.files import sha256_file
from sio.generate.config import StyleGAN2Settings
from sio.generate.stylegan2.load import load_network
from sio.generate.stylegan2.network import StyleGAN2


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """NVIDIA's quantisation: ``clamp(127.5·x + 128, 0, 255)``, truncated."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class StyleGAN2Generator:
    name = "stylegan2-ada"

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
        self.autocast = contextlib.nullcontext

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_pretrained(
        cls, path, device="cpu", *, settings=None, image_size=None
    ) -> StyleGAN2Generator:
        network, weights = load_network(path)
        return cls(network.to(device), settings, weights=weights, image_size=image_size)

    def checkpoint_sha256(self) -> str:
        return sha256_file(self.weights[0])

    def describe(self) -> dict:
        return {
            "truncation_psi": self.settings.truncation_psi,
            "noise_mode": self.settings.noise_mode,
            "resolution": self.spec.img_resolution,
        }

    def prepare(self, *, precision: str = "fp32", compile: bool = False) -> None:
        """bf16 autocast and torch.compile, for GPUs."""
        device = self.network_device().type
        if precision == "bf16":
            self.autocast = lambda: torch.autocast(device, dtype=torch.bfloat16)
        if compile:
            self.network = torch.compile(self.network)

    def _classes(self, n: int, labels, device):
        if not self.conditional:
            if labels is not None:
                raise ValueError("this StyleGAN2 is unconditional: sample with labels=None")
            return None
        if labels is None or labels.shape != (n,):
            raise ValueError(f"this StyleGAN2 is class-conditional: give {n} labels")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must be class ids in 0..{self.num_classes - 1}")
        return F.one_hot(labels.long().cpu(), self.spec.c_dim).float().to(device)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None, seed: int) -> torch.Tensor:
        """``n`` images (of classes ``labels`` if conditional), uint8 N×C×H×W; one seed, one
        result."""
        device = self.network_device()
        c = self._classes(n, labels, device)
        z = np.random.RandomState(seed % 2**32).randn(n, self.spec.z_dim)
        z = torch.from_numpy(z).float().to(device)
        generator = torch.Generator().manual_seed(seed)
        with self.autocast():
            images = self.network(
                z, c, self.settings.truncation_psi, None, self.settings.noise_mode, generator
            )
        images = images.float()
        if images.shape[-1] != self.image_size:
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True)
        return to_uint8(images).cpu()

    def network_device(self) -> torch.device:
        return next(self.network.parameters()).device
