"""Image operations on one uint8 image (C x H x W) and the two ways they are drawn.

Every parameter comes from an explicit ``torch.Generator`` (never the global RNG):

- ``augmix_op``: PixMix's ``augment`` (the AugMix operation set, Hendrycks et al., ICLR 2020):
  one of 13 operations at a level drawn uniformly from [0.1, severity] on a 0..10 scale.
- ``randaugment``: RandAugment (Cubuk et al., NeurIPS 2020 workshops) as torchvision's
  ``RandAugment``: ``num_ops`` operations from 14, each at magnitude ``m`` of 30 (31 bins).
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as TF

AUGMIX_OPS = (
    *("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y"),
    *("translate_x", "translate_y", "color", "contrast", "brightness", "sharpness"),
)
RANDAUGMENT_OPS = (
    *("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness"),
    *("color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize"),
)
ENHANCE = {
    "brightness": TF.adjust_brightness,
    "color": TF.adjust_saturation,  # PIL's ImageEnhance.Color; grey images are unchanged
    "contrast": TF.adjust_contrast,
    "sharpness": TF.adjust_sharpness,
}


def uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def coin(generator: torch.Generator) -> bool:
    return uniform(generator) < 0.5


def choice(generator: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (), generator=generator))


def _affine(image, *, translate=(0, 0), shear=(0.0, 0.0), center=None):
    return TF.affine(
        image, angle=0.0, translate=list(translate), scale=1.0, shear=list(shear), center=center
    )


def apply_op(image: torch.Tensor, name: str, value: float) -> torch.Tensor:
    """Operation ``name`` with parameter ``value``: shear factor, translation in pixels,
    rotation in degrees, enhancement factor, posterize bits or solarize threshold."""
    if name in ENHANCE:
        return ENHANCE[name](image, value)
    if name == "shear_x":
        return _affine(image, shear=(math.degrees(math.atan(value)), 0.0), center=[0, 0])
    if name == "shear_y":
        return _affine(image, shear=(0.0, math.degrees(math.atan(value))), center=[0, 0])
    if name == "translate_x":
        return _affine(image, translate=(int(value), 0))
    if name == "translate_y":
        return _affine(image, translate=(0, int(value)))
    simple = {
        "identity": lambda: image,
        "autocontrast": lambda: TF.autocontrast(image),
        "equalize": lambda: TF.equalize(image),
        "posterize": lambda: TF.posterize(image, max(0, int(value))),
        "solarize": lambda: torch.where(image >= value, 255 - image, image),
        "rotate": lambda: TF.rotate(image, value),
    }
    if name not in simple:
        raise ValueError(f"unknown image operation {name!r}")
    return simple[name]()


def _augmix_value(name: str, level: float, shape, generator) -> float:
    """AugMix's parameters at ``level`` in [0.1, severity] (0..10 scale)."""
    sign = 1.0 if coin(generator) else -1.0
    height, width = shape[-2:]
    values = {
        "posterize": lambda: 4 - int(level * 4 / 10),
        "solarize": lambda: 256 - int(level * 256 / 10),
        "rotate": lambda: sign * int(level * 30 / 10),
        "shear_x": lambda: sign * level * 0.3 / 10,
        "shear_y": lambda: sign * level * 0.3 / 10,
        "translate_x": lambda: sign * int(level * (width / 3) / 10),
        "translate_y": lambda: sign * int(level * (height / 3) / 10),
    }
    if name in ENHANCE:
        return level * 1.8 / 10 + 0.1
    return values[name]() if name in values else 0.0


def augmix_op(image: torch.Tensor, generator: torch.Generator, severity: int) -> torch.Tensor:
    """One AugMix operation, chosen uniformly, at a level uniform in [0.1, severity]."""
    name = AUGMIX_OPS[choice(generator, len(AUGMIX_OPS))]
    level = uniform(generator, 0.1, severity)
    return apply_op(image, name, _augmix_value(name, level, image.shape, generator))


def _randaugment_value(name: str, magnitude: int, shape, generator) -> float:
    """torchvision's RandAugment magnitudes at bin ``magnitude`` of 0..30; signed ops flip their
    sign with probability 1/2."""
    frac = magnitude / 30
    height, width = shape[-2:]
    signed = {
        "shear_x": 0.3 * frac,
        "shear_y": 0.3 * frac,
        "translate_x": 150 / 331 * width * frac,
        "translate_y": 150 / 331 * height * frac,
        "rotate": 30 * frac,
    }
    if name in signed:
        return signed[name] * (-1.0 if coin(generator) else 1.0)
    if name in ENHANCE:
        return 1.0 + 0.9 * frac * (-1.0 if coin(generator) else 1.0)
    if name == "posterize":
        return 8 - round(magnitude / 7.5)
    if name == "solarize":
        return 255.0 * (1 - frac)
    return 0.0


def randaugment(
    image: torch.Tensor, generator: torch.Generator, num_ops: int, magnitude: int
) -> torch.Tensor:
    """``num_ops`` operations, each drawn uniformly from the 14 of RandAugment."""
    for _ in range(num_ops):
        name = RANDAUGMENT_OPS[choice(generator, len(RANDAUGMENT_OPS))]
        image = apply_op(image, name, _randaugment_value(name, magnitude, image.shape, generator))
    return image
