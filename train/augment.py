"""Batch augmentation on uint8 tensors, driven by an explicit ``torch.Generator``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, *, padding: int, hflip: bool
) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to size at a random offset per image, then flip
    each image horizontally with probability 1/2 when ``hflip``."""
    n, _, height, width = images.shape
    if padding > 0 and n > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(height))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width))[:, None, None, :]
        batch = torch.arange(n)[:, None, None, None]
        channel = torch.arange(images.shape[1])[None, :, None, None]
        images = padded[batch, channel, rows, cols]
    if hflip and n > 0:
        flip = torch.rand(n, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images
