"""sio.train.stream.MixedBatches through a real multi-worker DataLoader, and augment."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from sio.shardset import shard_urls
from sio.train.augment import random_crop_flip
from sio.train.compose import augment_part, compose_order
from sio.train.passes import slice_start
from sio.train.ring import SlotRing
from sio.train.stream import MixedBatches, MixSpec, SharedEpoch, StreamLoader

from .shardsets import grey_writer

N_REAL, N_SYN_SET = 60, 40
SYN_BASE = 128  # synthetic image j is the constant 128 + j; real image i is the constant i
STEPS, BATCH_REAL, BATCH_SYN = 7, 6, 2


def write_constant_set(folder, count, base, kind):
    with grey_writer(folder, kind, ("0", "1", "2"), 16) as writer:
        for i in range(count):
            writer.write(f"{kind}-{i:04d}", np.full((8, 8), base + i, np.uint8), i % 3, {})
    return tuple(shard_urls(folder))


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    real = write_constant_set(root / "real", N_REAL, 0, "real")
    synthetic = write_constant_set(root / "synthetic", N_SYN_SET, SYN_BASE, "synthetic")
    assert len(real) == 4 and len(synthetic) == 3
    return real, synthetic


@pytest.fixture(scope="module")
def spec(urls):
    real, synthetic = urls
    return MixSpec(
        real_urls=real,
        synthetic_urls=synthetic,
        n_real=BATCH_REAL,
        n_syn=BATCH_SYN,
        channels=1,
        image_size=(8, 8),
        steps_per_epoch=STEPS,
        seed=0,
        shuffle_window=20,
        crop_padding=0,
    )


def run_epochs(spec, epochs, num_workers=2):
    epoch = SharedEpoch(0)
    loader = StreamLoader(MixedBatches(spec, epoch), num_workers=num_workers)
    out = []
    for e in range(epochs):
        epoch.set(e)
        out.append(list(loader))
    return out


def check_batch(batch, n_real, n_syn):
    images, labels, flags = batch["images"], batch["labels"], batch["is_synthetic"]
    size = n_real + n_syn
    assert images.dtype == torch.uint8
    assert images.shape == (size, 1, 8, 8)
    assert labels.dtype == torch.int64
    assert labels.shape == (size,)
    assert flags.dtype == torch.bool
    values = images[:, 0, 0, 0].long()
    # each image is one of the constants written above
    assert torch.equal(images, values[:, None, None, None].expand_as(images).to(torch.uint8))
    is_syn = values >= SYN_BASE
    assert torch.equal(flags, is_syn)
    assert int(is_syn.sum()) == n_syn
    assert int((~is_syn).sum()) == n_real
    assert bool((values[~is_syn] < N_REAL).all())
    assert bool((values[is_syn] < SYN_BASE + N_SYN_SET).all())
    ids = torch.where(is_syn, values - SYN_BASE, values)
    assert torch.equal(labels, ids % 3)


@pytest.fixture(scope="module")
def two_epochs(spec):
    return run_epochs(spec, 2)


def test_every_batch_is_exact(two_epochs):
    for batches in two_epochs:
        assert len(batches) == STEPS
        for batch in batches:
            check_batch(batch, BATCH_REAL, BATCH_SYN)


def test_steps_are_global_and_in_order(two_epochs):
    first, second = two_epochs
    assert [b["step"] for b in first] == list(range(STEPS))
    assert [b["step"] for b in second] == list(range(STEPS, 2 * STEPS))


def test_batches_are_shuffled_and_draw_widely(two_epochs):
    first = two_epochs[0]
    flags = torch.stack([b["is_synthetic"] for b in first])
    # synthetic samples are not always in the same positions
    assert len({tuple(f.tolist()) for f in flags}) > 1
    values = torch.cat([b["images"][:, 0, 0, 0] for b in first]).tolist()
    assert len(set(values)) > 20


def test_epochs_differ(two_epochs):
    first, second = two_epochs
    a = torch.stack([b["images"] for b in first])
    b = torch.stack([b["images"] for b in second])
    assert not torch.equal(a, b)


def test_same_seed_same_batches_on_a_new_loader(spec, two_epochs):
    again = run_epochs(spec, 2)
    for batches, repeat in zip(two_epochs, again, strict=True):
        assert len(batches) == len(repeat)
        for x, y in zip(batches, repeat, strict=True):
            assert x["step"] == y["step"]
            for key in ("images", "labels", "is_synthetic"):
                assert torch.equal(x[key], y[key]), key


def test_other_seed_other_batches(spec, two_epochs):
    other = run_epochs(dataclasses.replace(spec, seed=1), 1, num_workers=0)[0]
    a = torch.stack([b["images"] for b in two_epochs[0]])
    b = torch.stack([b["images"] for b in other])
    assert not torch.equal(a, b)


def test_real_only_spec(spec):
    real_only = dataclasses.replace(spec, synthetic_urls=(), n_real=8, n_syn=0)
    (batches,) = run_epochs(real_only, 1, num_workers=0)
    assert [b["step"] for b in batches] == list(range(STEPS))
    for batch in batches:
        check_batch(batch, 8, 0)


def test_synthetic_only_spec(spec):
    syn_only = dataclasses.replace(spec, real_urls=(), n_real=0, n_syn=5)
    (batches,) = run_epochs(syn_only, 1, num_workers=0)
    assert len(batches) == STEPS
    for batch in batches:
        check_batch(batch, 0, 5)


def test_missing_sources_refused(spec):
    with pytest.raises(ValueError, match="synthetic"):
        MixedBatches(dataclasses.replace(spec, synthetic_urls=()), SharedEpoch())
    with pytest.raises(ValueError, match="real"):
        MixedBatches(dataclasses.replace(spec, real_urls=()), SharedEpoch())


def test_crop_padding_in_stream(spec):
    padded = dataclasses.replace(spec, crop_padding=2)
    (batches,) = run_epochs(padded, 1, num_workers=0)
    zero_border = 0
    for batch in batches:
        images = batch["images"]
        # each image is a constant c with a zero border band from the padding
        for image in images[:, 0]:
            c = int(image.max())
            assert set(torch.unique(image).tolist()) <= {0, c}
        zero_border += int((images == 0).any(dim=(1, 2, 3)).sum())
    assert zero_border > 0


# --- random_crop_flip --------------------------------------------------------------------


def random_images(n=32, c=2, h=5, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, c, h, w), generator=g, dtype=torch.int64).to(torch.uint8)


def test_crop_identity_without_padding():
    images = random_images()
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=0, hflip=False)
    assert torch.equal(out, images)


def crop_offsets(image, out, padding):
    """Every (dy, dx) in [0, 2p]^2 at which ``out`` is the crop of the zero-padded ``image``."""
    c, h, w = image.shape
    padded = torch.zeros((c, h + 2 * padding, w + 2 * padding), dtype=image.dtype)
    padded[:, padding : padding + h, padding : padding + w] = image
    return [
        (dy, dx)
        for dy in range(2 * padding + 1)
        for dx in range(2 * padding + 1)
        if torch.equal(padded[:, dy : dy + h, dx : dx + w], out)
    ]


@pytest.mark.parametrize("padding", [1, 2, 3])
def test_crop_is_a_padded_crop(padding):
    images = random_images()
    out = random_crop_flip(images, torch.Generator().manual_seed(1), padding=padding, hflip=False)
    assert out.shape == images.shape
    assert out.dtype == images.dtype
    used = set()
    for image, crop in zip(images, out, strict=True):
        offsets = crop_offsets(image, crop, padding)
        # pixels are never 0, so the offset is unique
        assert len(offsets) == 1
        used.add(offsets[0])
    # offsets are random over the whole range, not fixed
    assert len(used) > 3
    assert {dy for dy, _ in used} == set(range(2 * padding + 1))


def test_crop_picks_what_the_indexing_formula_picks():
    """The gather over flattened images takes, draw for draw, the pixels that
    padded[i, :, dy_i + r, dx_i + c] takes (the advanced-indexing formula it replaced)."""
    images = random_images(n=16, c=3, h=7, w=9, seed=2)
    out = random_crop_flip(images, torch.Generator().manual_seed(8), padding=3, hflip=True)
    generator = torch.Generator().manual_seed(8)
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (3, 3, 3, 3))
    dy = torch.randint(0, 7, (n,), generator=generator)
    dx = torch.randint(0, 7, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    expected = padded[
        torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols
    ]
    flip = torch.rand(n, generator=generator) < 0.5
    expected = torch.where(flip[:, None, None, None], expected.flip(-1), expected)
    assert torch.equal(out, expected)


def test_crop_seeded():
    images = random_images()
    a = random_crop_flip(images, torch.Generator().manual_seed(3), padding=2, hflip=True)
    b = random_crop_flip(images, torch.Generator().manual_seed(3), padding=2, hflip=True)
    c = random_crop_flip(images, torch.Generator().manual_seed(4), padding=2, hflip=True)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_hflip_flips_about_half():
    images = random_images(n=64)
    out = random_crop_flip(images, torch.Generator().manual_seed(5), padding=0, hflip=True)
    flipped = 0
    for image, result in zip(images, out, strict=True):
        if torch.equal(result, image.flip(-1)):
            flipped += 1
        else:
            assert torch.equal(result, image)
    assert 10 < flipped < 54


def test_crop_then_flip():
    images = random_images()
    out = random_crop_flip(images, torch.Generator().manual_seed(6), padding=1, hflip=True)
    kinds = set()
    for image, result in zip(images, out, strict=True):
        plain = crop_offsets(image, result, 1)
        mirrored = crop_offsets(image, result.flip(-1), 1)
        assert len(plain) + len(mirrored) == 1
        kinds.add(bool(mirrored))
    assert kinds == {True, False}


def test_crop_empty_batch():
    empty = torch.zeros((0, 1, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(empty, torch.Generator().manual_seed(0), padding=2, hflip=True)
    assert out.shape == (0, 1, 8, 8)


def test_corrupt_member_is_named_through_workers(spec, tmp_path):
    import webdataset as wds

    from sio.shardset import ShardError

    bad = tmp_path / "bad-000000.tar"
    with wds.TarWriter(str(bad), encoder=False, mtime=0) as tar:
        for i in range(4):
            png = b"not a png" if i == 2 else _png_bytes(SYN_BASE + i)
            tar.write({"__key__": f"syn-{i:04d}", "png": png, "cls": b"0", "json": b"{}"})
    # a lone tar without a manifest: its count and encoding given, its sha256 unchecked
    broken = dataclasses.replace(
        spec,
        synthetic_urls=(str(bad),),
        shuffle_window=1,
        expected=((str(bad), 4),),
        encodings=(("synthetic", "png"),),
    )
    with pytest.raises(ShardError, match=r"bad-000000\.tar.*syn-0002"):
        run_epochs(broken, 1)


def _png_bytes(value):
    from sio.shardset import encode_png

    return encode_png(np.full((8, 8), value, np.uint8))


@pytest.fixture(scope="module")
def noise_urls(tmp_path_factory):
    """Sets of random 8 x 8 images (a crop or a flip shows in every one), 37 real, 23 synthetic."""
    root, rng = tmp_path_factory.mktemp("noise"), np.random.default_rng(11)
    urls = []
    for kind, count in (("real", 37), ("synthetic", 23)):
        with grey_writer(root / kind, kind, ("0", "1", "2"), 7) as writer:
            for i in range(count):
                image = rng.integers(0, 256, (8, 8), dtype=np.uint8)
                writer.write(f"{kind}-{i:04d}", image, i % 3, {})
        urls.append(tuple(shard_urls(root / kind)))
    return urls


@pytest.mark.parametrize("augment", [(2, True, 0), (0, True, 0), (3, False, 0), (0, True, 6)])
@pytest.mark.parametrize(
    ("shares_real", "shares_syn", "rank"),
    [((5,), (3,), 0), ((3, 4), (1, 2), 1), ((2, 0, 3), (0, 1, 1), 2)],
)
def test_a_composed_batch_is_its_parts_augmented_then_composed(
    noise_urls, augment, shares_real, shares_syn, rank
):
    """The stream augments the composed batch with the draws joined and permuted: image for
    image (bitwise) what augmenting each part with its own draws and composing after gives,
    for crops, flips, resized crops, ranks with empty parts, seeds and steps across passes."""
    padding, hflip, resized_crop = augment
    for seed in (0, 3, 8):
        spec = MixSpec(
            real_urls=noise_urls[0],
            synthetic_urls=noise_urls[1],
            n_real=shares_real[rank],
            n_syn=shares_syn[rank],
            channels=1,
            image_size=(8, 8),
            steps_per_epoch=11,
            seed=seed,
            rank=rank,
            shares=(("real", shares_real), ("synthetic", shares_syn)),
            shuffle_window=9,
            crop_padding=padding,
            hflip=hflip,
            resized_crop=resized_crop,
        )
        stream = MixedBatches(spec, SharedEpoch(0))
        readers, sources = stream.readers(), stream.streams
        for step in range(11):
            augmented = []
            for name in ("real", "synthetic"):
                source = sources[name]
                start = slice_start(step, source.shares, rank)
                images = readers[name].take(start, source.shares[rank])[0]
                augmented.append(augment_part(spec, source, images, step))
            order = compose_order(spec, sources["real"], sources["synthetic"], step)
            expected = torch.cat(augmented)[order]
            assert torch.equal(stream.batch(step)["images"], expected), (seed, step)


def batch_of_kinds(step: int) -> dict:
    """A batch with every kind of value a worker sends (sizes vary with ``step``)."""
    count = 7 + step % 3
    return {
        "labels": torch.arange(count) + step,
        "is_synthetic": torch.arange(count) % 2 == 0,
        "step": step,
        "ids": {"real": ["a", "b"], "synthetic": [f"c{step}"]},
        "images": torch.randint(0, 256, (count, 3, 5, 5), dtype=torch.uint8),
        "empty": torch.zeros(0, 3, dtype=torch.float16),
        "mix": torch.rand(step + 1, dtype=torch.float64),
        "transposed": torch.ones(2, 3).t(),
        "faults": [],
    }


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_batches_sent_through_a_slot_arrive_as_the_same_dicts(steps):
    """A worker sends an item of one or several steps' batches through a slot of its ring
    (their tensors in one shared slot); what arrives is the same dicts in order: keys in order,
    each tensor of its dtype, shape, strides and bytes, the rest as it was (a non-contiguous
    tensor travels on its own)."""
    sent = [batch_of_kinds(step) for step in range(steps)]
    arrived = pickle.loads(pickle.dumps(SlotRing().pack(sent)))
    assert len(arrived) == steps
    for batch, back in zip(sent, arrived, strict=True):
        assert list(back) == list(batch)
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                got = back[key]
                assert (got.dtype, got.shape) == (value.dtype, value.shape), key
                assert got.stride() == value.stride(), key
                assert torch.equal(got, value), key
            else:
                assert back[key] == value, key
