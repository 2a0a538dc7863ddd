"""5. evaluation: every detector on a CIFAR-scale activations file built from a seeded
generator, written and read back with ``load_activations`` (host CPU: numpy, faiss)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from gpu.harness import CLASSES, Bench
from sio.core.files import atomic_path


def activations(size: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """A structured random activations file's arrays: non-negative features around per-class
    means (a shared floor plus up to 64 raised units), a nearest-mean last layer."""
    rng = np.random.default_rng(seed)
    width = size["width"]
    means = np.full((CLASSES, width), 0.3, np.float32)
    for k in range(CLASSES):
        active = min(64, width // 2)
        means[k, rng.choice(width, active, replace=False)] += rng.uniform(0.15, 0.45, active)

    def sample(centres, noise):
        values = centres + rng.standard_normal(centres.shape, dtype=np.float32) * noise
        return np.maximum(values, 0.0, out=values)

    # the nearest-class-mean classifier as the last layer: z_k = h . m_k - |m_k|^2 / 2
    arrays = {
        "fc.weight": means + rng.normal(0, 0.01, means.shape).astype(np.float32),
        "fc.bias": (-0.5 * (means * means).sum(axis=1)).astype(np.float32),
    }
    for split in ("train", "val", "test"):
        labels = rng.integers(0, CLASSES, size[split])
        arrays[f"id.{split}.features"] = sample(means[labels], 0.6)
        arrays[f"id.{split}.labels"] = labels.astype(np.int64)
    pairs = rng.integers(0, CLASSES, (2, size["ood"]))
    other = np.roll(means, 7, axis=1)
    ood = {
        "near.mixture": sample(0.5 * (means[pairs[0]] + means[pairs[1]]), 0.6),
        "near.faint": sample(0.3 + 0.5 * (means[pairs[0]] - 0.3), 0.6),
        "far.other_classes": sample(other[pairs[0]], 0.6),
        "far.dim": sample(np.full((size["ood"], width), 0.1, np.float32), 0.3),
        "far.bright": sample(3.0 * means[pairs[0]], 0.6),
        "far.noise": sample(np.zeros((size["ood"], width), np.float32), 1.0),
    }
    arrays.update({f"ood.{name}.features": values for name, values in ood.items()})
    return arrays


def evaluation(bench: Bench, root: Path) -> dict:
    from sio.evaluate import evaluate_bank, load_activations
    from sio.evaluate.config import ALL_DETECTORS, EvaluateConfig

    size = bench.size["bank"]
    start = time.perf_counter()
    arrays = activations(size)
    path = root / "activations.npz"
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, **arrays)
    bank = load_activations(path)
    build_s = time.perf_counter() - start
    config = EvaluateConfig()
    detectors, skipped = {}, {}
    for name in ALL_DETECTORS:
        begin = time.perf_counter()
        results = evaluate_bank(bank, [name], config=config)
        seconds = time.perf_counter() - begin
        if name in results["skipped"]:
            skipped[name] = results["skipped"][name]
            continue
        metrics = results["metrics"][name]
        detectors[name] = {
            "seconds": seconds,
            "near_auroc": metrics["near"]["mean"]["auroc"],
            "far_auroc": metrics["far"]["mean"]["auroc"],
        }
    rows = sum(len(v) for k, v in arrays.items() if k.endswith("features") and ".train." not in k)
    return {
        "total_s": sum(d["seconds"] for d in detectors.values()),
        "build_write_read_s": build_s,
        "detectors": detectors,
        "skipped": skipped,
        "sizes": dict(size),
        "scored_rows": rows,
        "file_bytes": path.stat().st_size,
        "runs_on": "host CPU (numpy, faiss): no detector uses the GPU",
    }
