"""Batch augmentation on uint8 tensors, driven by an explicit ``torch.Generator``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def crop_flip_draws(n: int, generator: torch.Generator, *, padding: int, hflip: bool) -> dict:
    """The random draws of ``random_crop_flip`` for ``n`` images (offsets, flips), so that a
    global batch's draws can be made once and each rank apply its slice."""
    draws = {}
    if padding > 0 and n > 0:
        draws["dy"] = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        draws["dx"] = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    if hflip and n > 0:
        draws["flip"] = torch.rand(n, generator=generator) < 0.5
    return draws


def apply_crop_flip(images: torch.Tensor, draws: dict, *, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back at the drawn offsets, then flip the drawn images:
    one gather over the flattened (padded) images, so each output pixel is copied once.
    Pixel (r, c) of crop i is element (dy_i + r) * source_width + dx_i + c', where c' is c, or
    width - 1 - c for a flipped image (the draws are on the CPU; the images may be on a GPU)."""
    n, channels, height, width = images.shape
    crop, flip = "dy" in draws and n > 0, "flip" in draws and n > 0
    if not (crop or flip):
        return images
    source = F.pad(images, (padding, padding, padding, padding)) if crop else images
    source_width = width + 2 * padding if crop else width
    columns = torch.arange(width).expand(n, width)
    if flip:
        columns = torch.where(draws["flip"][:, None], width - 1 - columns, columns)
    rows = torch.arange(height).expand(n, height)
    if crop:
        rows, columns = rows + draws["dy"][:, None], columns + draws["dx"][:, None]
    index = (rows[:, :, None] * source_width + columns[:, None, :]).view(n, 1, height * width)
    index = index.to(images.device).expand(n, channels, height * width)
    return source.flatten(2).gather(2, index).view(n, channels, height, width)


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, *, padding: int, hflip: bool
) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to size at a random offset per image, then flip
    each image horizontally with probability 1/2 when ``hflip``."""
    draws = crop_flip_draws(len(images), generator, padding=padding, hflip=hflip)
    return apply_crop_flip(images, draws, padding=padding)


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


def augment_draws(
    n: int, image_size, generator: torch.Generator, *, padding: int, hflip: bool, resized_crop: int
) -> dict:
    """Every random draw of ``base_augment`` for ``n`` images of ``image_size`` (H, W)."""
    draws = {}
    if resized_crop > 0:
        height, width = image_size
        draws["boxes"] = [
            _resized_crop_box(height, width, generator, (0.08, 1.0), (3 / 4, 4 / 3))
            for _ in range(n)
        ]
        padding = 0
    return {**draws, **crop_flip_draws(n, generator, padding=padding, hflip=hflip)}


def slice_draws(draws: dict, start: int, stop: int) -> dict:
    """The draws of images ``start .. stop - 1``."""
    return {key: value[start:stop] for key, value in draws.items()}


def join_draws(parts: list[tuple[dict, int]], order: torch.Tensor) -> dict:
    """The draws of a composed batch: ``parts`` are (draws, images) of its pieces in
    concatenation order (``augment_draws`` dicts), ``order`` the permutation that composes
    them. Augmenting the composed batch with these gives, image for image, what augmenting each
    piece with its own draws and composing after gives (every draw is per image)."""
    drawn = [draws for draws, n in parts if n > 0]
    if not drawn:
        return {}
    if any(draws.keys() != drawn[0].keys() for draws in drawn):
        raise ValueError("the pieces of one batch were drawn with different augmentations")
    joined = {}
    for key in drawn[0]:
        values = [draws[key] for draws in drawn]
        if key == "boxes":
            boxes = [box for value in values for box in value]
            joined[key] = [boxes[i] for i in order.tolist()]
        else:
            joined[key] = torch.cat(values).index_select(0, order)
    return joined


def apply_augment(images: torch.Tensor, draws: dict, *, padding: int, resized_crop: int):
    """``base_augment`` with its draws made beforehand (``augment_draws``)."""
    if resized_crop > 0:
        n, channels = images.shape[:2]
        if n == 0:
            images = images.new_zeros((0, channels, resized_crop, resized_crop))
        else:
            size = [resized_crop, resized_crop]
            images = torch.stack(
                [
                    TF.resized_crop(image, *box, size)
                    for image, box in zip(images, draws["boxes"], strict=True)
                ]
            )
        padding = 0
    return apply_crop_flip(images, draws, padding=padding)


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
    draws = augment_draws(
        len(images),
        tuple(images.shape[-2:]),
        generator,
        padding=padding,
        hflip=hflip,
        resized_crop=resized_crop,
    )
    return apply_augment(images, draws, padding=padding, resized_crop=resized_crop)
