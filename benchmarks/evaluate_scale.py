"""Time and peak memory of every activation detector's fit and scoring at two sizes, sio side by
side with pytorch-ood (the detectors it has), each measurement in a fresh process.

Sizes (random but structured features, as benchmarks/evaluate.py's: sparse non-negative class
directions plus noise, after a ReLU; OOD: mixtures of two classes):
- ``cifar``: 50,000 x 512 train, 10 classes, 1,000 val, 9,000 test, 10,000 OOD;
- ``imagenet``: 200,000 x 2,048 train, 1,000 classes, 5,000 val, 10,000 test, 10,000 OOD (a
  stand-in for ImageNet-1K's 1.28M x 2,048: the same width and classes, a sixth of the rows).
The features are written once as .npy files under ``--cache`` (default
~/.cache/sio-bench/evaluate-scale/<size>/). One measurement = one fresh process that imports its
library, loads the arrays (``np.load``, in memory), resets its peak RSS and notes it (the
baseline; Linux ``VmHWM`` after ``clear_refs``, see ``max_rss_mb``), fits the one detector on ID
train/val and scores ID test and the OOD set, then notes the peak again:
the table gives the seconds (fit + score) and the peak RSS above the baseline, and (bank +
that) as a multiple of the bank's bytes (train + val + test + OOD features): what fitting and
scoring need beside the bank, the bank included. sio runs in this environment;
pytorch-ood (0.4.0, from PyPI) in the peers' environment (``evaluate.peers_python``, never
sio's), on the same .npy files. Each round runs every (tool, detector), the tools' order
alternating from round to round; medians over rounds. pytorch-ood's settings are sio's
(OpenOOD's) where it has them: ASH-B at 90, SCALE at 85, VRA at 10/90 (its thresholds are per
feature, OpenOOD's global), GEN gamma 0.1 M 100, k 50, ViM d 256, DICE 90, ReAct 90, OpenMax
tail 20 alpha 3, NNGuide k 100 (its bank is all of ID train; sio's 1% of it, OpenOOD's).

Usage: python benchmarks/evaluate_scale.py [--sizes cifar,imagenet] [--rounds 3]
[--detectors knn,mds] [--timeout 600] [--out evaluate_scale.json]
(``measure`` is the child process: python evaluate_scale.py measure TOOL DETECTOR FOLDER)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SIZES = {
    "cifar": {"train": 50_000, "val": 1_000, "test": 9_000, "ood": 10_000, "width": 512,
              "classes": 10},
    "imagenet": {"train": 200_000, "val": 5_000, "test": 10_000, "ood": 10_000, "width": 2048,
                 "classes": 1000},
}  # fmt: skip
ARRAYS = ("train", "val", "test", "ood")
BLOCK = 20_000  # rows generated at a time


# --- the features, written once -----------------------------------------------------------------


def write_features(folder: Path, size: dict, seed: int = 0) -> None:
    """The .npy files of one size (skipped when ``done`` says they are there)."""
    if (folder / "done").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes, width = size["classes"], size["width"]
    active = max(8, width // 8)
    means = np.full((classes, width), 0.3, np.float32)
    for k in range(classes):
        units = rng.choice(width, active, replace=False)
        means[k, units] += rng.uniform(0.15, 0.45, active).astype(np.float32)
    weight = (means - means.mean(axis=0)) / 8 + rng.normal(0, 0.01, means.shape)
    np.save(folder / "fc_weight.npy", weight.astype(np.float32))
    np.save(folder / "fc_bias.npy", rng.normal(0, 0.1, classes).astype(np.float32))
    for name in ARRAYS:
        rows = size[name]
        out = np.lib.format.open_memmap(folder / f"{name}.npy", "w+", np.float32, (rows, width))
        labels = rng.integers(0, classes, rows)
        for start in range(0, rows, BLOCK):
            part = slice(start, min(start + BLOCK, rows))
            centres = means[labels[part]]
            if name == "ood":  # a mixture of two classes
                centres = 0.5 * (centres + means[rng.integers(0, classes, len(centres))])
            noise = rng.standard_normal(centres.shape, dtype=np.float32) * 0.6
            out[part] = np.maximum(centres + noise, 0.0)
        out.flush()
        del out
        if name != "ood":
            np.save(folder / f"{name}_labels.npy", labels.astype(np.int64))
    (folder / "done").write_text("ok")


def load(folder: Path) -> dict:
    arrays = {name: np.load(folder / f"{name}.npy") for name in ARRAYS}
    arrays.update({f"{n}_labels": np.load(folder / f"{n}_labels.npy") for n in ARRAYS[:3]})
    arrays["fc_weight"], arrays["fc_bias"] = (
        np.load(folder / "fc_weight.npy"),
        np.load(folder / "fc_bias.npy"),
    )
    return arrays


def max_rss_mb() -> float:
    """This process's peak RSS in MB: ``VmHWM`` of /proc/self/status where there is one (the
    peak of this program's own memory: ``ru_maxrss`` carries the parent's peak across the
    fork and exec that started it, here the driver's ~1 GB), else ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def reset_peak() -> None:
    """Start the peak RSS again from the current RSS (Linux: ``clear_refs`` 5), so that the
    loading's own transient peak does not hide the fit's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


# --- sio (this environment) ---------------------------------------------------------------------


def sio_detectors() -> list[str]:
    from sio.evaluate.detectors import DETECTORS, needs_images

    return [name for name in DETECTORS.names() if not needs_images(name)]


def measure_sio(detector: str, arrays: dict) -> tuple:
    from sio.evaluate import ActivationBank
    from sio.evaluate.detectors import fit_detector

    bank = ActivationBank(
        arrays["fc_weight"],
        arrays["fc_bias"],
        {s: arrays[s] for s in ARRAYS[:3]},
        {s: arrays[f"{s}_labels"] for s in ARRAYS[:3]},
        {"near": {"mixture": arrays["ood"]}},
    )
    reset_peak()
    baseline = max_rss_mb()
    start = time.perf_counter()
    fitted = fit_detector(detector, bank)
    fit_s = time.perf_counter() - start
    id_scores, ood_scores = fitted.score(arrays["test"]), fitted.score(arrays["ood"])
    return baseline, fit_s, time.perf_counter() - start - fit_s, id_scores, ood_scores


# --- pytorch-ood (the peers' environment) --------------------------------------------------------


def pytorch_ood_detector(name: str, weight, bias):
    """(detector, fit(detector, arrays), predict(detector, features) -> outlier scores) of
    pytorch-ood's ``name``, or None when it has none."""
    import torch
    from pytorch_ood import detector as p

    linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
    linear.weight.data, linear.bias.data = weight, bias
    flat = torch.nn.Sequential(torch.nn.Flatten(), linear)  # the "feature maps" are N x D x 1 x 1
    ident = torch.nn.Identity()

    def logits(x):
        return torch.nn.functional.linear(x, weight, bias)

    def on_logits(det, split=None):
        def fit(d, a):
            if split is not None:
                d.fit_logits(logits(a[split]), a[f"{split}_labels"])

        return det, fit, lambda d, x: d.predict_logits(logits(x))

    def on_features(det, split="train", labelled=True):
        def fit(d, a):
            d.fit_features(a[split], a[f"{split}_labels"]) if labelled else d.fit_features(a[split])

        return det, fit, lambda d, x: d.predict_features(x)

    def on_maps(det, split=None):
        def fit(d, a):
            if split is not None:
                d.fit_feature_maps(a[split][:, :, None, None], a[f"{split}_labels"])

        return det, fit, lambda d, x: d.predict_feature_maps(x[:, :, None, None])

    table = {
        "msp": lambda: on_logits(p.MaxSoftmax(None)),
        "mls": lambda: on_logits(p.MaxLogit(None)),
        "ebo": lambda: on_logits(p.EnergyBased(None)),
        "gen": lambda: on_logits(p.GEN(None, gamma=0.1, M=100)),
        "tempscale": lambda: on_logits(p.TemperatureScaling(None), "val"),
        "klm": lambda: on_logits(p.KLMatching(None), "val"),
        "openmax": lambda: on_logits(
            p.OpenMax(None, tailsize=20, alpha=3, euclid_weight=1.0), "train"
        ),  # fmt: skip
        "vim": lambda: on_features(p.ViM(None, d=256, w=weight, b=bias)),
        "knn": lambda: on_features(p.KNN(None, k=50)),
        "dice": lambda: on_features(p.DICE(None, w=weight, b=bias, p=0.9)),
        "mds": lambda: on_features(p.Mahalanobis(None)),
        "rmds": lambda: on_features(p.RMD(None)),
        "she": lambda: on_features(p.SHE(ident, linear)),
        "nnguide": lambda: on_features(p.NNGuide(ident, linear, k=100)),
        "nci": lambda: on_features(p.NCI(ident, linear, alpha=1e-4), labelled=False),
        "fdbd": lambda: on_features(p.fDBD(ident, linear), labelled=False),
        "react": lambda: on_maps(p.ReAct(ident, flat, percentile=0.9), "val"),
        "vra": lambda: on_maps(
            p.VRA(ident, flat, lower_percentile=0.1, upper_percentile=0.9), "val"
        ),  # fmt: skip
        "ash": lambda: on_maps(p.ASH(ident, flat, variant="ash-b", percentile=0.9)),
        "scale": lambda: on_maps(p.SCALE(ident, flat, percentile=0.85)),
    }
    return table[name]() if name in table else None


def measure_pytorch_ood(detector: str, arrays: dict) -> tuple:
    import torch

    tensors = {key: torch.from_numpy(value) for key, value in arrays.items()}
    built = pytorch_ood_detector(detector, tensors["fc_weight"], tensors["fc_bias"])
    if built is None:
        return None
    det, fit, predict = built
    reset_peak()
    baseline = max_rss_mb()
    with torch.no_grad():
        start = time.perf_counter()
        fit(det, tensors)
        fit_s = time.perf_counter() - start
        id_scores = -predict(det, tensors["test"]).double().numpy()
        ood_scores = -predict(det, tensors["ood"]).double().numpy()
    return baseline, fit_s, time.perf_counter() - start - fit_s, id_scores, ood_scores


def measure(tool: str, detector: str, folder: Path) -> dict | None:
    """One measurement in this (fresh) process."""
    before_load = max_rss_mb()
    arrays = load(folder)
    bank_mb = sum(arrays[n].nbytes for n in ARRAYS) / 2**20
    run = (measure_sio if tool == "sio" else measure_pytorch_ood)(detector, arrays)
    if run is None:
        return None
    baseline, fit_s, score_s, id_scores, ood_scores = run
    peak = max_rss_mb()
    labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    from sklearn.metrics import roc_auc_score

    return {
        "fit_s": fit_s,
        "score_s": score_s,
        "seconds": fit_s + score_s,
        "rss_before_load_mb": before_load,
        "rss_baseline_mb": baseline,
        "rss_peak_mb": peak,
        "extra_mb": peak - baseline,
        "bank_mb": bank_mb,
        "auroc": 100 * roc_auc_score(labels, np.r_[id_scores, ood_scores]),
    }


# --- the driver ----------------------------------------------------------------------------------


def child(python: Path, tool: str, detector: str, folder: Path, timeout: float) -> dict | None:
    command = [str(python), str(Path(__file__).resolve()), "measure", tool, detector, str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timeout_s": timeout}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    answer = done.stdout.strip().splitlines()[-1]
    return None if answer == "null" else json.loads(answer)


def median_row(runs: list[dict]) -> dict:
    good = [r for r in runs if "seconds" in r]
    if not good:
        return runs[-1]
    return {
        "n": len(good),
        "median_s": statistics.median(r["seconds"] for r in good),
        "median_fit_s": statistics.median(r["fit_s"] for r in good),
        "median_extra_mb": statistics.median(r["extra_mb"] for r in good),
        "max_extra_mb": max(r["extra_mb"] for r in good),
        # the bank and the most the fit and scoring added above it, as a multiple of the bank
        "peak_over_bank": (max(r["extra_mb"] for r in good) + good[0]["bank_mb"])
        / good[0]["bank_mb"],
        "bank_mb": good[0]["bank_mb"],
        "auroc": good[0]["auroc"],
        "runs_s": [r["seconds"] for r in good],
    }


def cell(row: dict | None, what: str) -> str:
    if row is None:
        return "—"
    if "timeout_s" in row:
        return f"> {row['timeout_s']:.0f} s"
    if "error" in row:
        return "error"
    if what == "s":
        return f"{row['median_s']:.2f}"
    return f"{row['max_extra_mb']:.0f} ({row['peak_over_bank']:.2f}×)"


def markdown(table: dict) -> str:
    lines = []
    for size, rows in table.items():
        lines += [
            f"\n{size}: {SIZES[size]}\n",
            "| detector | sio s | pytorch-ood s | sio extra MB (peak / bank) | "
            "pytorch-ood extra MB (peak / bank) | AUROC sio / pytorch-ood |",
            "|---|---|---|---|---|---|",
        ]
        for detector, by in rows.items():
            sio, peer = by.get("sio"), by.get("pytorch-ood")
            aurocs = " / ".join(
                f"{r['auroc']:.2f}" for r in (sio, peer) if r is not None and "auroc" in r
            )
            lines.append(
                f"| {detector} | {cell(sio, 's')} | {cell(peer, 's')} | {cell(sio, 'mb')} | "
                f"{cell(peer, 'mb')} | {aurocs} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="cifar,imagenet")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--detectors", default=None, help="comma-separated (default: all)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")
    parser.add_argument("--cache", default=str(Path.home() / ".cache/sio-bench/evaluate-scale"))
    parser.add_argument("--out", default="evaluate_scale.json", help="file in benchmarks/results")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from evaluate import machine, peers_python  # benchmarks/evaluate.py
    from sio.core.files import write_json_atomic

    pythons = {"sio": Path(sys.executable), "pytorch-ood": peers_python()}
    detectors = args.detectors.split(",") if args.detectors else sio_detectors()
    load_before, started = os.getloadavg(), time.time()
    runs: dict = {}
    loads = []
    out = HERE / "results" / args.out
    for size in args.sizes.split(","):
        folder = Path(args.cache) / size
        write_features(folder, SIZES[size])
        for r in range(args.rounds):
            tools = list(pythons) if r % 2 == 0 else list(pythons)[::-1]
            for detector in detectors:
                for tool in tools:
                    run = child(pythons[tool], tool, detector, folder, args.timeout)
                    if run is None:
                        continue
                    runs.setdefault(size, {}).setdefault(detector, {}).setdefault(tool, [])
                    runs[size][detector][tool].append(run)
                    loads.append(os.getloadavg()[0])
                    print(f"{size} round {r + 1} {detector} {tool}: {run}", flush=True)
                    table = {
                        s: {d: {t: median_row(v) for t, v in by.items()} for d, by in rows.items()}
                        for s, rows in runs.items()
                    }
                    write_json_atomic(
                        out,
                        {
                            "command": " ".join(sys.argv),
                            "sizes": {s: SIZES[s] for s in args.sizes.split(",")},
                            "rounds": args.rounds,
                            "table": table,
                            "runs": runs,
                            "machine": machine(),
                            "pytorch_ood_python": str(pythons["pytorch-ood"]),
                            "load_average": {
                                "before": load_before,
                                "now": os.getloadavg(),
                                "one_minute_during_median": statistics.median(loads),
                                "one_minute_during_max": max(loads),
                            },
                            "elapsed_s": time.time() - started,
                        },
                    )
    print(markdown(table))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "measure":
        tool, detector, folder = sys.argv[2], sys.argv[3], Path(sys.argv[4])
        print(json.dumps(measure(tool, detector, folder)), flush=True)
    else:
        main()
