"""BigGAN from a local pytorch-pretrained-biggan folder (``config.json`` + ``pytorch_model.bin``).

The package's own ``from_pretrained`` may download and loads with ``strict=False``, so a
mismatched checkpoint silently keeps random weights; here the weights load with a strict key
check and every problem names the file. Class k of the benchmark is ImageNet class
``imagenet_classes[k]``; z is drawn from a normal truncated to [-2, 2] and scaled by the
truncation (Brock et al., "Large Scale GAN Training", ICLR 2019); images are resized to the
benchmark's size with antialiasing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import truncnorm

from sio.core.files import sha256_file
from sio.generate.config import BigGANSettings

CONFIG_NAME, WEIGHTS_NAME = "config.json", "pytorch_model.bin"


class BigGANGenerator:
    name = "biggan"
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
        self.autocast = contextlib.nullcontext

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device="cpu", *, settings: BigGANSettings, image_size: int
    ):
        from pytorch_pretrained_biggan import BigGAN, BigGANConfig

        folder = Path(folder)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name}: missing; a biggan folder holds "
                    f"{CONFIG_NAME} and {WEIGHTS_NAME} "
                    "(pytorch-pretrained-biggan's layout)"
                )
        model = BigGAN(BigGANConfig.from_json_file(str(folder / CONFIG_NAME)))
        state = torch.load(folder / WEIGHTS_NAME, map_location="cpu", weights_only=True)
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
        return cls(model.to(device), settings, image_size=image_size, weights=folder / WEIGHTS_NAME)

    def checkpoint_sha256(self) -> str:
        return sha256_file(self.weights[0])

    def describe(self) -> dict:
        return {
            "truncation": self.settings.truncation,
            "imagenet_classes": list(self.settings.imagenet_classes),
        }

    def prepare(self, *, precision: str = "fp32", compile: bool = False) -> None:
        device = next(self.model.parameters()).device.type
        if precision == "bf16":
            self.autocast = lambda: torch.autocast(device, dtype=torch.bfloat16)
        if compile:
            self.model = torch.compile(self.model)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor, seed: int) -> torch.Tensor:
        if labels is None or labels.shape != (n,):
            raise ValueError(f"BigGAN is class-conditional: give {n} labels")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must be class ids in 0..{self.num_classes - 1}")
        config = self.model.config
        truncation = self.settings.truncation
        z = (
            truncnorm.rvs(
                -2, 2, size=(n, config.z_dim), random_state=np.random.RandomState(seed % 2**32)
            ).astype(np.float32)
            * truncation
        )
        device = next(self.model.parameters()).device
        index = torch.tensor(self.settings.imagenet_classes)[labels.cpu()]
        one_hot = F.one_hot(index, config.num_classes).float()
        with self.autocast():
            images = self.model(torch.from_numpy(z).to(device), one_hot.to(device), truncation)
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
