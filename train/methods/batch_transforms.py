"""Batch transforms of the training methods, run in the DataLoader workers after the recipe's
crop and flip: ``transform(batch, generator) -> batch``. Each is a small frozen dataclass (it
travels to the workers) and draws every random number from the worker's method generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sio.train.methods.ops import augmix_op, choice, coin, randaugment, uniform


def cutmix_box(height: int, width: int, lam: float, generator) -> tuple[int, int, int, int]:
    """CutMix's box (y0, y1, x0, x1): sides sqrt(1 - lam) of the image's, a uniform centre,
    clipped to the image (so the pasted area can be smaller than 1 - lam)."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(height, (), generator=generator))
    cx = int(torch.randint(width, (), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


@dataclass(frozen=True)
class CutMixTransform:
    """CutMix (Yun et al., ICCV 2019) on every batch: lam ~ Beta(beta, beta), one box pasted
    from a random permutation of the batch. ``mix_lambda`` is the exact kept share of the area,
    1 - box area / image area; ``mix_partner[i]`` is the image pasted into image i."""

    beta: float = 1.0

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        images = batch["images"]
        n, _, height, width = images.shape
        seed = int(torch.randint(2**62, (), generator=generator))
        lam = float(np.random.default_rng(seed).beta(self.beta, self.beta))
        partner = torch.randperm(n, generator=generator)
        y0, y1, x0, x1 = cutmix_box(height, width, lam, generator)
        mixed = images.clone()
        mixed[:, :, y0:y1, x0:x1] = images[partner, :, y0:y1, x0:x1]
        kept = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
        return {
            **batch,
            "images": mixed,
            "mix_partner": partner,
            "mix_lambda": torch.tensor(kept, dtype=torch.float64),
        }


@dataclass(frozen=True)
class RandAugmentTransform:
    """RandAugment on every image: ``num_ops`` operations at magnitude ``magnitude`` of 30."""

    num_ops: int = 1
    magnitude: int = 9

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        images = batch["images"]
        if len(images):
            images = torch.stack(
                [randaugment(image, generator, self.num_ops, self.magnitude) for image in images]
            )
        return {**batch, "images": images}


def mixing_weights(generator: torch.Generator, beta: float) -> tuple[float, float]:
    """PixMix's (a, b): (Beta(beta, 1), Beta(1, beta)) or (1 + Beta(1, beta), -Beta(1, beta)),
    each with probability 1/2. Drawn by inversion: Beta(beta, 1) = U^(1/beta) and
    Beta(1, beta) = 1 - U^(1/beta)."""
    first = coin(generator)
    u, v = uniform(generator), uniform(generator)
    if first:
        return u ** (1 / beta), 1 - v ** (1 / beta)
    return 1 + (1 - u ** (1 / beta)), -(1 - v ** (1 / beta))


def pixmix_add(x, y, a, b):
    """a(2x - 1) + b(2y - 1), mapped back from [-1, 1] to [0, 1]."""
    return (a * (2 * x - 1) + b * (2 * y - 1) + 1) / 2


def pixmix_multiply(x, y, a, b):
    """(2x)^a (2y)^b / 2, with y clipped away from 0 (b may be negative)."""
    return (2 * x) ** a * (2 * y).clamp_min(1e-37) ** b / 2


def pixmix_image(image, picture, generator, *, k: int, beta: float, severity: int):
    """PixMix (Hendrycks et al., CVPR 2022) of one uint8 image with one mixing picture.

    Start from the image or, with probability 1/2, an AugMix operation of it; then, randint(0..k)
    times, mix with a partner (the picture, or with probability 1/2 a fresh operation of the
    image) by ``add`` or ``multiply`` (1/2 each) with weights from ``mixing_weights``, clipping
    to [0, 1] after each round. Returns floats in [0, 1]."""
    start = augmix_op(image, generator, severity) if coin(generator) else image
    mixed = start.float() / 255
    for _ in range(choice(generator, k + 1)):
        use_image = coin(generator)
        partner = augmix_op(image, generator, severity) if use_image else picture
        mix = pixmix_add if coin(generator) else pixmix_multiply
        a, b = mixing_weights(generator, beta)
        mixed = mix(mixed, partner.float() / 255, a, b).clamp(0, 1)
    return mixed


@dataclass(frozen=True)
class PixMixTransform:
    """PixMix on every image, with the batch's ``mixing`` pictures (one per image)."""

    k: int = 4
    beta: float = 3.0
    severity: int = 3

    def __call__(self, batch: dict, generator: torch.Generator) -> dict:
        batch = dict(batch)
        pictures, images = batch.pop("mixing"), batch["images"]
        options = {"k": self.k, "beta": self.beta, "severity": self.severity}
        mixed = [
            pixmix_image(image, picture, generator, **options)
            for image, picture in zip(images, pictures, strict=True)
        ]
        batch["images"] = torch.stack(mixed) if mixed else images.float() / 255
        return batch
