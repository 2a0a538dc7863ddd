"""The GPU side of a training step: uint8 batch augmentation on the device, bf16 autocast and
``channels_last``. Everything here also runs on the CPU, and the fp32 / contiguous defaults
change nothing.

Augmentation in the manner of airbench (Jordan 2024, arXiv 2404.00498: the set resident on the
GPU, padded once, whole batches augmented there; airbench crops by shifts and flips with a
``where``), here with crop and flip as ONE gather of uint8 pixels. With zero padding ``p``, crop
offsets ``(dy_i, dx_i)`` in ``0..2p`` and flips ``f_i``, output pixel ``(i, c, r, x)`` is pixel
``(dy_i + r, dx_i + x')`` of channel ``c`` of the padded image, ``x' = W - 1 - x`` if ``f_i``
else ``x``. ``take_crop_flip`` can gather straight from a padded set (rows of the set, crop and
flip in one ``torch.take``: no batch copy, no padding per batch; ``benchmarks/gpu.py`` measures
it, the trainer's resident sets do not use it yet); ``crop_flip`` pads a batch first (the
trainer's ``device_augment``). Both can write the batch directly in ``channels_last`` order.

The draws: ``draw_crop_flip`` takes from a CPU ``torch.Generator`` exactly what
``sio.train.augment.random_crop_flip`` takes, in its order (dy, then dx, then the flips), so the
same generator state gives the CPU path's images bitwise, on any device; ``CropFlip.from_draws``
takes the trainer's own draws (``crop_flip_draws``, made once per global batch and sliced per
rank), so the device path can replace ``apply_crop_flip`` without changing a batch.
``draw_crop_flip`` and ``step_generator(seed, step)`` (a generator of one global step) are for
standalone use, ``benchmarks/gpu.py`` and the tests; the trainer's draws come from the stream
(``part_draws``: a function of seed, source, step and position) through ``from_draws``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sio.core.seeding import torch_generator

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class CropFlip:
    """One batch's draws: crop offsets into the padded image and horizontal flips."""

    dy: torch.Tensor  # int64 (n,), in 0..2 * padding
    dx: torch.Tensor  # int64 (n,)
    flip: torch.Tensor  # bool (n,)
    padding: int

    def __len__(self) -> int:
        return len(self.flip)

    @classmethod
    def from_draws(cls, draws: dict, n: int, *, padding: int) -> CropFlip:
        """The draws of ``sio.train.augment.crop_flip_draws`` (keys dy, dx, flip, each absent
        when not drawn) for ``n`` images, e.g. a rank's slice of a global batch's draws."""
        centre = torch.full((n,), padding if "dy" in draws else 0, dtype=torch.int64)
        return cls(
            draws.get("dy", centre),
            draws.get("dx", centre),
            draws.get("flip", torch.zeros(n, dtype=torch.bool)),
            padding if "dy" in draws else 0,
        )

    def pack(self) -> torch.Tensor:
        """One int64 3 x n tensor (dy, dx, flip) that travels with a batch (pinned, copied with
        the images); ``unpack`` takes it back."""
        return torch.stack([self.dy, self.dx, self.flip.to(torch.int64)])

    @classmethod
    def unpack(cls, packed: torch.Tensor, padding: int) -> CropFlip:
        return cls(packed[0], packed[1], packed[2].bool(), padding)

    def to(self, device, non_blocking: bool = False) -> CropFlip:
        move = {"device": device, "non_blocking": non_blocking}
        return CropFlip(self.dy.to(**move), self.dx.to(**move), self.flip.to(**move), self.padding)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of global step ``step`` of a run seeded ``seed``."""
    return torch_generator(seed, "device-augment", step)


def draw_crop_flip(generator: torch.Generator, n: int, *, padding: int, hflip: bool) -> CropFlip:
    """``n`` images' draws, the same numbers ``random_crop_flip`` draws from ``generator``."""
    if padding < 0:
        raise ValueError(f"crop padding must be >= 0, got {padding}")
    if padding > 0 and n > 0:
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    else:
        dy = dx = torch.full((n,), padding, dtype=torch.int64)
    if hflip and n > 0:
        flip = torch.rand(n, generator=generator) < 0.5
    else:
        flip = torch.zeros(n, dtype=torch.bool)
    return CropFlip(dy, dx, flip, padding)


def pad_images(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad uint8 N x C x H x W images by ``padding`` on every side (once, for a set)."""
    if padding == 0:
        return images
    return F.pad(images, (padding, padding, padding, padding))


def crop_flip_index(
    rows: torch.Tensor, draws: CropFlip, shape: tuple[int, int, int, int], *, nhwc: bool = False
) -> torch.Tensor:
    """Flat indices into padded images of ``shape`` (N, C, H + 2p, W + 2p): element (i, c, r, x)
    of the batch is pixel (dy_i + r, dx_i + x') of channel c of row ``rows[i]``. The index is
    n x C x H x W, or n x H x W x C with ``nhwc``."""
    _, channels, padded_h, padded_w = shape
    height, width = padded_h - 2 * draws.padding, padded_w - 2 * draws.padding
    if height <= 0 or width <= 0:
        raise ValueError(f"images of shape {tuple(shape)} are smaller than padding {draws.padding}")
    device = rows.device
    x = torch.arange(width, device=device)
    col = torch.where(draws.flip[:, None], width - 1 - x, x) + draws.dx[:, None]  # n x W
    row = (draws.dy[:, None] + torch.arange(height, device=device)) * padded_w  # n x H
    plane = padded_h * padded_w
    base = rows.to(torch.int64) * (channels * plane)  # n
    spatial = base[:, None, None] + row[:, :, None] + col[:, None, :]  # n x H x W
    c = torch.arange(channels, device=device) * plane
    if nhwc:
        return spatial[..., None] + c
    return spatial[:, None] + c[None, :, None, None]


def take_crop_flip(
    padded: torch.Tensor, rows: torch.Tensor, draws: CropFlip, *, channels_last: bool = False
) -> torch.Tensor:
    """The batch of rows ``rows`` of ``padded`` (N x C x H+2p x W+2p, e.g. a resident set padded
    once), cropped and flipped per ``draws``: one gather, on ``padded``'s device. With
    ``channels_last`` the n x C x H x W result is laid out in that order."""
    if len(rows) != len(draws):
        raise ValueError(f"{len(rows)} rows but draws for {len(draws)} images")
    device = padded.device
    draws = draws.to(device, non_blocking=True)
    index = crop_flip_index(rows.to(device), draws, tuple(padded.shape), nhwc=channels_last)
    batch = torch.take(padded.contiguous(), index)
    return batch.permute(0, 3, 1, 2) if channels_last else batch


def crop_flip(
    images: torch.Tensor, draws: CropFlip, *, channels_last: bool = False
) -> torch.Tensor:
    """``images`` (uint8 N x C x H x W) zero-padded, cropped and flipped per ``draws``."""
    rows = torch.arange(len(images), device=images.device)
    return take_crop_flip(
        pad_images(images, draws.padding), rows, draws, channels_last=channels_last
    )


def autocast(device, precision: str):
    """The context of a training or sampling step: bf16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision is one of {', '.join(PRECISIONS)}, got {precision!r}")


def channels_last(value, enabled: bool = True):
    """A module or 4-d tensor in ``channels_last`` memory order (``enabled=False``: unchanged).
    Values are unchanged; convolutions on a GPU run faster in this order, bf16 most."""
    if not enabled:
        return value
    if isinstance(value, nn.Module):
        return value.to(memory_format=torch.channels_last)
    if torch.is_tensor(value) and value.ndim == 4:
        return value.contiguous(memory_format=torch.channels_last)
    return value
