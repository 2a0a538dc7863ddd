"""sio.shardset.read.decode_png: without a conversion for PNGs already in the wanted mode, the
same pixels as PIL's ``convert`` for every kind of PNG, and undecodable data raises."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sio.shardset.read import decode_png


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pil_pixels(data: bytes, channels: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


@pytest.mark.parametrize("seed", range(6))
def test_every_mode_gives_pils_pixels_in_either_channel_count(seed):
    """Random sizes (odd, primes, 1 x n) and every PNG kind: grey and RGB (no conversion when
    the channel count matches), palette, alpha, 16-bit and 1-bit, asked for as 1 or 3
    channels."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.choice([1, 2, 5, 7, 13, 32, 37], 2))
    grey = rng.integers(0, 256, (height, width), dtype=np.uint8)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    kinds = {
        "L": Image.fromarray(grey),
        "RGB": Image.fromarray(rgb),
        "P": Image.fromarray(rgb).convert("P"),
        "RGBA": Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8)),
        "LA": Image.fromarray(rng.integers(0, 256, (height, width, 2), dtype=np.uint8), "LA"),
        "I;16": Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)),
        "1": Image.fromarray(grey).convert("1"),
    }
    for kind, image in kinds.items():
        data = png(image)
        for channels in (1, 3):
            pixels = decode_png(data, channels)
            expected = pil_pixels(data, channels)
            assert pixels.dtype == np.uint8 and pixels.shape == expected.shape, (kind, channels)
            assert np.array_equal(pixels, expected), (kind, channels)


@pytest.mark.parametrize("cut", [0, 8, 30, 400])  # 400: half-way through the pixel data
def test_cut_or_garbled_data_raises(cut):
    rng = np.random.default_rng(cut)
    data = png(Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
    assert len(data) > 2 * 400
    broken = data[:cut] if cut else b"not a png at all"
    for channels in (1, 3):
        with pytest.raises(OSError):  # PIL's UnidentifiedImageError is an OSError
            decode_png(broken, channels)
