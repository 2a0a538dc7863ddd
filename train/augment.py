"""Batch augmentation on uint8 tensors, driven by an explicit ``torch.Generator``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, *, padding: int, hflip: bool
) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to size at a random offset per image, then flip
    each image horizontally with probability 1/2 when ``hflip``."""
    n, channels, height, width = images.shape
    if padding > 0 and n > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        # one gather over the flattened padded images: pixel (r, c) of crop i is element
        # (dy_i + r) * padded_width + dx_i + c (the generator, and so every draw, is on the CPU;
        # the images may be on a GPU)
        padded_width = width + 2 * padding
        grid = (torch.arange(height)[:, None] * padded_width + torch.arange(width)).flatten()
        index = ((dy * padded_width + dx)[:, None] + grid[None]).to(images.device)
        index = index[:, None, :].expand(n, channels, height * width)
        images = padded.flatten(2).gather(2, index).view(n, channels, height, width)
    if hflip and n > 0:
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


def _resized_crop_box(height, width, generator, scale, ratio) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, h, w): up to 10 draws of an area share in
    ``scale`` and a log-uniform aspect ratio in ``ratio``, else the centre crop."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_low + (log_high - log_low) * u[1])
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    w, h = width, height
    if width / height < ratio[0]:
        h = round(width / ratio[0])
    elif width / height > ratio[1]:
        w = round(height * ratio[1])
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    images: torch.Tensor,
    generator: torch.Generator,
    size: int,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
) -> torch.Tensor:
    """RandomResizedCrop (Szegedy et al. 2015; torchvision's defaults) of every image to
    ``size`` x ``size``, bilinear with antialiasing, box drawn per image from ``generator``."""
    n, channels, height, width = images.shape
    if n == 0:
        return images.new_zeros((0, channels, size, size))
    crops = [
        TF.resized_crop(
            image, *_resized_crop_box(height, width, generator, scale, ratio), [size, size]
        )
        for image in images
    ]
    return torch.stack(crops)


def base_augment(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    padding: int,
    hflip: bool,
    resized_crop: int,
) -> torch.Tensor:
    """The recipe's augmentation: RandomResizedCrop to ``resized_crop`` when it is > 0, else the
    padded random crop; then the horizontal flip."""
    if resized_crop > 0:
        images = random_resized_crop(images, generator, resized_crop)
        padding = 0
    return random_crop_flip(images, generator, padding=padding, hflip=hflip)
