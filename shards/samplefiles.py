"""Tiny datasets written in their real on-disk formats, for the tests and benchmarks/shard.py.

Each writer produces exactly what the readers expect from the real downloads: CIFAR python pickle
batches (bytes keys, as Python 2 pickles load with ``encoding="bytes"``), idx ubyte files (raw or
gzipped), SVHN ``.mat`` files (X 32x32x3xN, y Nx1 with 10 for the digit 0) and image files.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _pickle(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=2))


def _rows(images: np.ndarray) -> np.ndarray:
    """N x 32 x 32 x 3 to CIFAR's N x 3072 rows (all red, then green, then blue)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def write_cifar10(folder, train, test, class_names) -> Path:
    """``cifar-10-batches-py``: train (images, labels) spread over data_batch_1..5."""
    folder = Path(folder)
    for number, index in enumerate(np.array_split(np.arange(len(train[0])), 5), 1):
        batch = {
            b"batch_label": f"training batch {number} of 5".encode(),
            b"labels": [int(v) for v in train[1][index]],
            b"data": _rows(train[0][index]),
            b"filenames": [f"img_{i}.png".encode() for i in index],
        }
        _pickle(folder / f"data_batch_{number}", batch)
    _pickle(
        folder / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": [int(v) for v in test[1]],
            b"data": _rows(test[0]),
        },
    )
    meta = {b"label_names": [n.encode() for n in class_names], b"num_vis": 3072}
    _pickle(folder / "batches.meta", meta)
    return folder


def write_cifar100(folder, train, test, class_names) -> Path:
    """``cifar-100-python``: train, test (fine and coarse labels) and meta."""
    folder = Path(folder)
    for name, (images, labels) in (("train", train), ("test", test)):
        batch = {
            b"batch_label": name.encode(),
            b"fine_labels": [int(v) for v in labels],
            b"coarse_labels": [int(v) // 5 for v in labels],
            b"data": _rows(images),
        }
        _pickle(folder / name, batch)
    meta = {b"fine_label_names": [n.encode() for n in class_names], b"coarse_label_names": []}
    _pickle(folder / "meta", meta)
    return folder


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_mnist(folder, train, test, gz: bool = True) -> Path:
    """The four idx files (``.gz`` if ``gz``) for train and test (images, labels)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in (("train", train), ("t10k", test)):
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(np.asarray(array, np.uint8))
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (folder / name).write_bytes(data)
    return folder


def write_svhn(path, images: np.ndarray, labels: np.ndarray) -> Path:
    """``{part}_32x32.mat``: X 32x32x3xN uint8, y Nx1 with the digit 0 stored as 10."""
    import scipy.io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    y = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": y})
    return path


def write_image(path, image: np.ndarray, **save) -> Path:
    """One image file; the format follows the suffix (.png lossless, .jpg lossy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **save)
    return path


def natural_images(n: int, size: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Images that compress like photos: smooth colour fields plus mild noise (uint8)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size)
    fields = rng.uniform(0, 255, (n, 1, 1, channels)) * ramp[None, :, None, None]
    fields = fields + rng.uniform(0, 255, (n, 1, 1, channels)) * ramp[None, None, :, None] / 2
    noise = rng.normal(0, 12, (n, size, size, channels))
    images = np.clip(fields / 1.5 + noise, 0, 255).astype(np.uint8)
    return images[..., 0] if channels == 1 else images
