"""Every fit streams over ID train in row blocks: the memory a detector's fit needs (the rise
of the process's peak RSS while it fits) grows with ID train by row-length vectors only, so
fitting every detector on ImageNet-sized features needs about the bank's memory twice at most.
KNN's index is a normalised copy of ID train by nature (as faiss's and OpenOOD's)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sio.evaluate import ActivationBank
from sio.evaluate.config import EvaluateConfig, KnnSettings
from sio.evaluate.detectors import DETECTORS, fit_detector, needs_images

ROWS, WIDTH, CLASSES = 60_000, 64, 40
# what a fit may allocate per added ID train row, as a fraction of the row's bytes: row-length
# vectors (labels, predictions, distances) only; a fit's blocks have a fixed size
SHARE = 0.3
INDEX_SHARE = 1.3  # KNN: its normalised reference rows are the index


def bank_of(rows: int) -> ActivationBank:
    rng = np.random.default_rng(0)
    means = np.abs(rng.normal(0, 1, (CLASSES, WIDTH))).astype(np.float32) * 2
    labels = np.arange(rows) % CLASSES
    noise = rng.standard_normal((rows, WIDTH), dtype=np.float32) * 0.5
    train = np.abs(means[labels] + noise, out=noise)
    small = np.abs(means[np.arange(2_000) % CLASSES] + rng.normal(0, 0.5, (2_000, WIDTH)))
    small = small.astype(np.float32)
    weight = means + rng.normal(0, 0.05, means.shape).astype(np.float32)
    bias = (-0.5 * (means**2).sum(axis=1)).astype(np.float32)
    return ActivationBank(
        weight,
        bias,
        {"train": train, "val": small, "test": small[:500]},
        {"train": labels, "val": np.arange(2_000) % CLASSES, "test": np.arange(500) % CLASSES},
        {"near": {"ood": small[500:900]}},
    )


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def fit_peak(name: str, bank: ActivationBank, config: EvaluateConfig) -> int:
    """Bytes the fit raised this process's peak RSS by (NumPy's, torch's and faiss's memory
    alike): the peak is reset to the current RSS first (Linux ``clear_refs`` 5)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = status_kb("VmRSS")
    detector = fit_detector(name, bank, config)
    peak = status_kb("VmHWM")
    del detector
    return 1024 * (peak - before)


def growths() -> dict[str, float]:
    """{detector: peak growth / train bytes added}, each fit measured twice over (ROWS, then
    2 ROWS of ID train). Run in a process of its own (``main``), where glibc is told to give
    every freed block of 128 KiB or more back at once, so that one fit's freed memory does
    not hide the next one's peak."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, fixed (no dynamic raise)
    libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    config = EvaluateConfig(knn=KnnSettings(backend="torch"))
    small, large = bank_of(ROWS), bank_of(2 * ROWS)
    added = large.id_features["train"].nbytes - small.id_features["train"].nbytes
    out = {}
    for name in NAMES:
        fit_peak(name, small, config)  # once first: what is loaded on first use, loaded
        out[name] = (fit_peak(name, large, config) - fit_peak(name, small, config)) / added
    return out


NAMES = [n for n in DETECTORS.names() if not needs_images(n) and n != "relation"]


@pytest.fixture(scope="module")
def measured():
    done = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("name", NAMES)
def test_a_fits_memory_grows_by_a_fraction_of_the_rows_added(measured, name):
    """Twice the ID train rows: the fit's peak grows by row-length vectors, never by another
    N x D (or N x K) array. Relation keeps ID train itself (no copy) and its softmax, N x K
    (here 0.6x a row), for its edges: left out."""
    share = INDEX_SHARE if name == "knn" else SHARE
    assert measured[name] <= share, f"{name}: {measured[name]:.2f}x the train bytes added"


if __name__ == "__main__":
    print(json.dumps(growths()))
