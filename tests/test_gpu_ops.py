"""train/gpu.py: the one-gather crop/flip equals a per-image crop and flip bitwise for the same
draws (and the CPU loader's augmentation for the same generator), in both memory layouts; bf16
autocast and channels_last run on the CPU and fp32 changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sio.train.augment import (
    apply_crop_flip,
    crop_flip_draws,
    join_draws,
    random_crop_flip,
    slice_draws,
)
from sio.train.gpu import (
    CropFlip,
    autocast,
    channels_last,
    crop_flip,
    draw_crop_flip,
    pad_images,
    step_generator,
    take_crop_flip,
)

# (n, channels, height, width, padding): odd sizes, non-square, padding 0, larger than the image
SHAPES = [
    (1, 1, 1, 1, 0),
    (5, 3, 7, 5, 2),
    (3, 1, 4, 9, 4),
    (8, 3, 32, 32, 4),
    (2, 2, 3, 3, 5),
    (7, 4, 6, 11, 1),
    (4, 3, 5, 5, 0),
]


def reference(images: np.ndarray, draws: CropFlip) -> np.ndarray:
    """Per image: zero-pad, crop at (dy, dx), flip if drawn; plain numpy."""
    p = draws.padding
    n, _, h, w = images.shape
    out = np.empty_like(images)
    for i in range(n):
        padded = np.pad(images[i], ((0, 0), (p, p), (p, p)))
        dy, dx = int(draws.dy[i]), int(draws.dx[i])
        crop = padded[:, dy : dy + h, dx : dx + w]
        out[i] = crop[:, :, ::-1] if bool(draws.flip[i]) else crop
    return out


def images_for(seed: int, n, c, h, w) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    # 1..255: a zero from padding never matches an image pixel by chance
    return torch.from_numpy(rng.integers(1, 256, (n, c, h, w), dtype=np.uint8))


@pytest.mark.parametrize("shape", SHAPES)
def test_gather_equals_per_image_crop_flip(shape):
    n, c, h, w, p = shape
    for seed in range(12):
        images = images_for(seed, n, c, h, w)
        draws = draw_crop_flip(torch.Generator().manual_seed(seed), n, padding=p, hflip=True)
        expected = reference(images.numpy(), draws)
        out = crop_flip(images, draws)
        assert out.dtype == torch.uint8 and out.is_contiguous()
        np.testing.assert_array_equal(out.numpy(), expected)
        nhwc = crop_flip(images, draws, channels_last=True)
        assert nhwc.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_array_equal(nhwc.numpy(), expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_gather_equals_the_cpu_loaders_augmentation(shape):
    """Same generator state in, the CPU path's images out: switching a trainer to the device
    path need not change its batches."""
    n, c, h, w, p = shape
    for seed in range(12):
        for hflip in (True, False):
            images = images_for(100 + seed, n, c, h, w)
            cpu = random_crop_flip(
                images, torch.Generator().manual_seed(seed), padding=p, hflip=hflip
            )
            generator = torch.Generator().manual_seed(seed)
            draws = draw_crop_flip(generator, n, padding=p, hflip=hflip)
            assert torch.equal(crop_flip(images, draws), cpu)
            # both consumed the same numbers: the next draw agrees too
            check = torch.Generator().manual_seed(seed)
            random_crop_flip(images, check, padding=p, hflip=hflip)
            assert torch.equal(torch.rand(3, generator=generator), torch.rand(3, generator=check))


@pytest.mark.parametrize("shape", SHAPES)
def test_the_trainers_own_draws_give_its_images(shape):
    """``crop_flip_draws`` / ``apply_crop_flip`` (the loader's two halves) and the device path
    on the same draws dict, whole or sliced as a rank takes it."""
    n, c, h, w, p = shape
    for seed in range(8):
        for hflip in (True, False):
            images = images_for(200 + seed, n, c, h, w)
            draws = crop_flip_draws(n, torch.Generator().manual_seed(seed), padding=p, hflip=hflip)
            expected = apply_crop_flip(images, draws, padding=p)
            out = crop_flip(images, CropFlip.from_draws(draws, n, padding=p))
            assert torch.equal(out, expected)
            cut = n // 2
            part = slice_draws(draws, cut, n)
            sliced = crop_flip(images[cut:], CropFlip.from_draws(part, n - cut, padding=p))
            assert torch.equal(sliced, expected[cut:])


def test_draws_of_parts_follow_the_composed_order_and_travel_packed():
    """Augment-then-compose equals compose-then-augment on the device with the parts' draws
    joined in the batch's order (``join_draws``, as the loader does), packed and unpacked."""
    for seed in range(10):
        rng = np.random.default_rng(seed)
        n_real, n_syn, p = (
            int(rng.integers(0, 12)),
            int(rng.integers(0, 6)),
            int(rng.integers(0, 5)),
        )
        real, syn = images_for(seed, n_real, 3, 7, 9), images_for(50 + seed, n_syn, 3, 7, 9)
        generator = torch.Generator().manual_seed(seed)
        d_real = crop_flip_draws(n_real, generator, padding=p, hflip=True)
        d_syn = crop_flip_draws(n_syn, generator, padding=p, hflip=True)
        order = torch.from_numpy(rng.permutation(n_real + n_syn))
        augmented = torch.cat(
            [apply_crop_flip(real, d_real, padding=p), apply_crop_flip(syn, d_syn, padding=p)]
        )
        joined = join_draws([(d_real, n_real), (d_syn, n_syn)], order)
        packed = CropFlip.from_draws(joined, n_real + n_syn, padding=p).pack()
        assert packed.dtype == torch.int64 and packed.shape == (3, n_real + n_syn)
        on_device = crop_flip(torch.cat([real, syn])[order], CropFlip.unpack(packed, p))
        assert torch.equal(on_device, augmented[order])


def test_take_from_a_padded_set_selects_rows_crops_and_flips_in_one_gather():
    for seed in range(10):
        rng = np.random.default_rng(seed)
        size, n, c, h, w = int(rng.integers(3, 40)), int(rng.integers(1, 30)), 3, 9, 7
        p = int(rng.integers(0, 5))
        pool = images_for(seed, size, c, h, w)
        padded = pad_images(pool, p)
        rows = torch.from_numpy(rng.integers(0, size, n))  # repeats allowed
        draws = draw_crop_flip(torch.Generator().manual_seed(seed), n, padding=p, hflip=True)
        expected = reference(pool[rows].numpy(), draws)
        np.testing.assert_array_equal(take_crop_flip(padded, rows, draws).numpy(), expected)
        nhwc = take_crop_flip(padded, rows, draws, channels_last=True)
        assert nhwc.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_array_equal(nhwc.numpy(), expected)


def test_every_offset_and_both_flips_are_reached_and_identity_at_centre():
    images = images_for(0, 1, 2, 5, 6)
    p = 3
    seen = set()
    for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
            for flip in (False, True):
                draws = CropFlip(
                    torch.tensor([dy]), torch.tensor([dx]), torch.tensor([flip]), padding=p
                )
                out = crop_flip(images, draws)
                np.testing.assert_array_equal(out.numpy(), reference(images.numpy(), draws))
                seen.add(out.numpy().tobytes())
                if (dy, dx) == (p, p):
                    target = images.flip(-1) if flip else images
                    assert torch.equal(out, target)
    assert len(seen) == (2 * p + 1) ** 2 * 2  # all distinct: every pixel of the index matters
    counts = draw_crop_flip(torch.Generator().manual_seed(1), 4000, padding=p, hflip=True)
    assert set(counts.dy.tolist()) == set(range(2 * p + 1)) == set(counts.dx.tolist())
    assert 0.45 < counts.flip.float().mean() < 0.55


def test_empty_batch_and_bad_input():
    images = images_for(0, 0, 3, 8, 8)
    draws = draw_crop_flip(torch.Generator().manual_seed(0), 0, padding=2, hflip=True)
    assert crop_flip(images, draws).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        draw_crop_flip(torch.Generator(), 3, padding=-1, hflip=False)
    pool = pad_images(images_for(0, 4, 3, 8, 8), 2)
    two = draw_crop_flip(torch.Generator().manual_seed(0), 2, padding=2, hflip=True)
    with pytest.raises(ValueError, match="3 rows but draws for 2 images"):
        take_crop_flip(pool, torch.tensor([0, 1, 2]), two)


def test_step_generator_depends_on_seed_and_step_alone():
    def draws(seed, step):
        d = draw_crop_flip(step_generator(seed, step), 256, padding=4, hflip=True)
        return torch.cat([d.dy, d.dx, d.flip.long()])

    assert torch.equal(draws(3, 17), draws(3, 17))
    assert not torch.equal(draws(3, 17), draws(3, 18))
    assert not torch.equal(draws(3, 17), draws(4, 17))


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def test_fp32_changes_nothing_and_bf16_runs_on_the_cpu():
    net = small_net().eval()
    x = torch.randn(6, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    plain = net(x)
    with autocast("cpu", "fp32"):
        same = net(x)
    assert same.dtype == torch.float32 and torch.equal(same, plain)
    with autocast("cpu", "bf16"):
        low = net(x)
    assert low.dtype == torch.bfloat16
    error = (low.float() - plain).abs().max() / plain.abs().max()
    assert 0 < error < 0.05  # bf16 really ran (not bitwise fp32), and is close
    with pytest.raises(ValueError, match="precision is one of fp32, bf16, got 'fp16'"):
        autocast("cpu", "fp16")


def test_bf16_training_step_on_the_cpu_keeps_fp32_weights():
    net = small_net().train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 5
    before = [p.detach().clone() for p in net.parameters()]
    with autocast("cpu", "bf16"):
        loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in net.parameters())
    assert all(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))


def test_channels_last_keeps_values():
    net = small_net().eval()
    x = torch.randn(4, 3, 9, 7, generator=torch.Generator().manual_seed(3))
    plain = net(x)
    fast_net, fast_x = channels_last(small_net().eval()), channels_last(x)
    assert fast_x.is_contiguous(memory_format=torch.channels_last) and torch.equal(fast_x, x)
    assert fast_net[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast_net(fast_x), plain, rtol=1e-5, atol=1e-6)
    assert channels_last(x, enabled=False) is x
    vector = torch.ones(3)
    assert channels_last(vector) is vector
