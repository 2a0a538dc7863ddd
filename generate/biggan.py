"""BigGAN from a local pytorch-pretrained-biggan folder (``config.json`` + ``pytorch_model.bin``).

The package's own ``from_pretrained`` may download and loads with ``strict=False``, so a
mismatched checkpoint silently keeps random weights; here the weights load with a strict key
check and every problem names the file. Class k of the benchmark is ImageNet class
``imagenet_classes[k]``; z is drawn from a normal truncated to [-2, 2] and scaled by the
truncation (Brock et al., "Large Scale GAN Training", ICLR 2019), image i's z by the inverse
normal CDF of ``z_dim`` uniforms from its own stream (seeded by its seed); images are resized to
the benchmark's size with antialiasing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from sio.core.weights import load_weights
from sio.generate.base import Generator, seeded_generators
from sio.generate.config import BigGANSettings

CONFIG_NAME, WEIGHTS_NAME = "config.json", "pytorch_model.bin"


def truncated_normal_rows(z_dim: int, seeds, bound: float = 2.0) -> torch.Tensor:
    """len(seeds) × z_dim standard normals truncated to [-bound, bound], row i from ``z_dim``
    uniforms of its own stream: ``Φ⁻¹(Φ(-b) + u (Φ(b) - Φ(-b)))`` in float64."""
    u = torch.stack(
        [torch.rand(z_dim, generator=g, dtype=torch.float64) for g in seeded_generators(seeds)]
    )
    low = 0.5 * math.erfc(bound / math.sqrt(2))
    return torch.special.ndtri(low + u * (1 - 2 * low)).clamp(-bound, bound).float()


class BigGANGenerator(Generator):
    name = "biggan"
    title = "BigGAN"
    network_attr = "model"
    conditional = True

    def __init__(self, model, settings: BigGANSettings, *, image_size: int, weights: Path):
        if not settings.imagenet_classes:
            raise ValueError(
                "generator.biggan.imagenet_classes is empty: give the ImageNet "
                "class index of each benchmark class"
            )
        self.model = model.eval().requires_grad_(False)
        self.settings = settings
        self.class_names = tuple(str(c) for c in settings.imagenet_classes)
        self.image_size = image_size
        self.channels = 3
        self.weights = [weights]

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device="cpu", *, settings: BigGANSettings, image_size=None
    ):
        """``image_size``: the benchmark's (None: the network's own output size)."""
        from pytorch_pretrained_biggan import BigGAN, BigGANConfig

        folder = Path(folder)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name}: missing; a biggan folder holds "
                    f"{CONFIG_NAME} and {WEIGHTS_NAME} "
                    "(pytorch-pretrained-biggan's layout)"
                )
        try:
            config = BigGANConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
            model = BigGAN(config)
        except Exception as err:  # noqa: BLE001 - a bad config fails in many ways
            raise ValueError(f"{folder / CONFIG_NAME}: not a BigGAN config: {err!r}") from None
        state = load_weights(folder / WEIGHTS_NAME, what="weights file")
        if not isinstance(state, dict):
            raise ValueError(f"{folder / WEIGHTS_NAME}: not a state dict")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"{folder / WEIGHTS_NAME} does not match {folder / CONFIG_NAME}: {err}"
            ) from None
        n_classes = model.config.num_classes
        if max(settings.imagenet_classes, default=0) >= n_classes:
            raise ValueError(
                f"imagenet_classes go up to {max(settings.imagenet_classes)}, "
                f"the model has {n_classes} classes"
            )
        size = int(image_size or config.output_dim)
        return cls(model.to(device), settings, image_size=size, weights=folder / WEIGHTS_NAME)

    def describe(self) -> dict:
        return {
            "truncation": self.settings.truncation,
            "imagenet_classes": list(self.settings.imagenet_classes),
        }

    def _sample_rows(self, labels, seeds) -> torch.Tensor:
        config = self.model.config
        truncation = self.settings.truncation
        z = truncated_normal_rows(config.z_dim, seeds) * truncation
        device = self.device
        index = torch.tensor(self.settings.imagenet_classes)[labels]
        one_hot = F.one_hot(index, config.num_classes).float()
        with self.autocast():
            images = self.model(z.to(device), one_hot.to(device), truncation)
        images = images.float()
        if images.shape[-1] != self.image_size:
            images = F.interpolate(
                images,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
