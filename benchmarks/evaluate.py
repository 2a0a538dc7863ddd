"""Time the eleven activation-based detectors on CIFAR-scale activations (fit + score each).

The activations are random but structured, from a seeded generator: 10 classes, 512-d
non-negative features (as after a ReLU), 50,000 train / 1,000 val / 9,000 test, and six OOD
sets of 10,000 (two near: mixtures of two classes, weaker class signal; four far: other
directions, other scales; their AUROCs, in the JSON, only show that no score is degenerate).
KNN runs with the chunked torch search and, when faiss is importable, with faiss too. Prints a
Markdown table and writes benchmarks/results/evaluate.json.
Usage: python benchmarks/evaluate.py
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import sklearn

from sio.core.environment import describe_machine
from sio.evaluate import ActivationBank
from sio.evaluate.config import ALL_DETECTORS, EvaluateConfig, KnnSettings
from sio.evaluate.detectors import fit_detector
from sio.evaluate.detectors.base import finite_scores
from sio.evaluate.evaluate import metrics_entry

CLASSES, WIDTH, SEED = 10, 512, 0
SIZES = {"train": 50_000, "val": 1_000, "test": 9_000}
OOD_SIZE = 10_000


def class_means(rng) -> np.ndarray:
    """Each class: a sparse non-negative direction (64 active units) plus a shared floor."""
    means = np.full((CLASSES, WIDTH), 0.3, np.float32)
    for k in range(CLASSES):
        active = rng.choice(WIDTH, 64, replace=False)
        means[k, active] += rng.uniform(0.15, 0.45, 64).astype(np.float32)
    return means


def sample(rng, centres: np.ndarray, noise: float) -> np.ndarray:
    values = centres + rng.standard_normal(centres.shape, dtype=np.float32) * noise
    return np.maximum(values, 0.0, out=values)


def make_bank() -> ActivationBank:
    rng = np.random.default_rng(SEED)
    means = class_means(rng)
    weight = (means - means.mean(axis=0)) / 8 + rng.normal(0, 0.01, means.shape)
    bias = rng.normal(0, 0.1, CLASSES)
    features, labels = {}, {}
    for split, n in SIZES.items():
        labels[split] = rng.integers(0, CLASSES, n)
        features[split] = sample(rng, means[labels[split]], 0.6)
    pairs = rng.integers(0, CLASSES, (2, OOD_SIZE))
    other = class_means(rng)
    ood = {
        "near": {
            "mixture": sample(rng, 0.5 * (means[pairs[0]] + means[pairs[1]]), 0.6),
            "faint": sample(rng, 0.3 + 0.5 * (means[pairs[0]] - 0.3), 0.6),
        },
        "far": {
            "other_classes": sample(rng, other[pairs[0]], 0.6),
            "dim": sample(rng, np.full((OOD_SIZE, WIDTH), 0.1, np.float32), 0.3),
            "bright": sample(rng, 3.0 * means[pairs[0]], 0.6),
            "noise": sample(rng, np.zeros((OOD_SIZE, WIDTH), np.float32), 1.0),
        },
    }
    return ActivationBank(weight.astype(np.float32), bias.astype(np.float32), features, labels, ood)


def time_detector(method: str, bank: ActivationBank, config: EvaluateConfig) -> dict:
    """Wall seconds to fit and to score, and the process's CPU seconds for both (all threads:
    about 2x the wall time on an idle 2-core machine, less when another job shares the cores)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    detector = fit_detector(method, bank, config)
    fitted = time.perf_counter()
    id_scores = finite_scores(detector, bank, bank.id_features["test"], "id.test")
    ood = {
        group: {
            name: finite_scores(detector, bank, feats, f"ood.{group}.{name}")
            for name, feats in sets.items()
        }
        for group, sets in bank.ood.items()
    }
    scored, cpu_end = time.perf_counter(), time.process_time()
    entry = metrics_entry(id_scores, ood, "id")
    return {
        "fit_s": fitted - start,
        "score_s": scored - fitted,
        "cpu_s": cpu_end - cpu_start,
        "metrics_s": time.perf_counter() - scored,
        "near_auroc": entry["near"]["mean"]["auroc"],
        "far_auroc": entry["far"]["mean"]["auroc"],
        "info": detector.info(),
    }


def machine() -> dict:
    """describe_machine() plus the libraries this benchmark's numbers depend on."""
    faiss = importlib.util.find_spec("faiss") is not None
    return {
        **describe_machine(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "faiss": __import__("faiss").__version__ if faiss else None,
    }


def run_all(bank: ActivationBank) -> dict:
    rows = {}
    for method in (m for m in ALL_DETECTORS if m != "odin"):
        backends = ("torch", "faiss") if method == "knn" else (None,)
        for backend in backends:
            if backend == "faiss" and importlib.util.find_spec("faiss") is None:
                continue
            config = EvaluateConfig()
            if backend:
                config = dataclasses.replace(config, knn=KnnSettings(backend=backend))
            label = f"knn ({backend})" if backend else method
            rows[label] = time_detector(method, bank, config)
            seconds = rows[label]["fit_s"] + rows[label]["score_s"]
            print(f"{label}: {seconds:.1f} s", flush=True)
    return rows


def totals(rows: dict) -> dict:
    def total(knn_label):
        labels = [r for r in rows if not r.startswith("knn")] + [knn_label]
        return sum(rows[r]["fit_s"] + rows[r]["score_s"] for r in labels)

    return {f"all eleven, {label}": total(label) for label in rows if label.startswith("knn")}


def markdown(rows: dict, sums: dict) -> str:
    lines = [
        "| detector | fit s | score s (7 sets, 69,000 rows) | fit + score s | CPU s |",
        "|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        both = row["fit_s"] + row["score_s"]
        lines.append(
            f"| {label} | {row['fit_s']:.2f} | {row['score_s']:.2f} | {both:.2f} "
            f"| {row['cpu_s']:.1f} |"
        )
    for label, seconds in sums.items():
        lines.append(f"| **{label}** | | | **{seconds:.1f}** | |")
    return "\n".join(lines)


def main() -> None:
    load_before = os.getloadavg()
    start = time.perf_counter()
    bank = make_bank()
    build_s = time.perf_counter() - start
    print(f"built the activations in {build_s:.1f} s", flush=True)
    rows = run_all(bank)
    sums = totals(rows)
    result = {
        "shape": {**SIZES, "ood_sets": 6, "ood_size": OOD_SIZE, "width": WIDTH},
        "classes": CLASSES,
        "seed": SEED,
        "build_s": build_s,
        "detectors": rows,
        "totals_s": sums,
        "machine": machine(),
        # 1-, 5- and 15-minute load averages: above ~0.5 another job shared the two cores
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    results_dir = Path(__file__).parent / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "evaluate.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows, sums))


if __name__ == "__main__":
    main()
