"""Time the eleven activation-based detectors on CIFAR-scale activations, sio side by side with
pytorch-ood (and OpenOOD v1.5's postprocessors with --openood DIR), in one run, alternating.

The activations are random but structured, from a seeded generator: 10 classes, 512-d
non-negative features (as after a ReLU), 50,000 train / 1,000 val / 9,000 test, and six OOD
sets of 10,000 (two near: mixtures of two classes, weaker class signal; four far: other
directions, other scales; their AUROCs, in the JSON, show that no score is degenerate and that
the peers agree). Each round times every detector once in sio and once in each peer, the order
alternating from round to round; the table gives the median over rounds of fit + score (each
peer gets the same float32 features and computes its logits itself, in torch). sio's "whole
evaluation" is ``evaluate_bank`` on all eleven (fits, scores and metrics: what
``sio evaluate --activations`` does after loading the file).

Peers: pytorch-ood from PyPI, when importable here (it is not one of sio's dependencies: it lives
in the peers' environment, ``peers_python``, where benchmarks/evaluate_scale.py runs it on the
same features in processes of its own); OpenOOD v1.5 is not on PyPI: give a
checkout with ``--openood DIR`` (``git clone https://github.com/Jingkang50/OpenOOD``; not
vendored), else it is skipped with a message. GradNorm has no feature-level API in pytorch-ood
(it backpropagates through the model per sample), so it has no peer there.
Prints a Markdown table and writes benchmarks/results/evaluate.json (``--out``), rewritten
after every timed run ("complete": false until the end), so a stopped run keeps its numbers.
Usage: python benchmarks/evaluate.py [--rounds 3] [--openood DIR [--openood-rounds 1]]
[--scale 0.1] [--detectors vim,msp] [--out NAME.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.metrics import roc_auc_score

from sio.core.environment import describe_machine
from sio.core.files import write_json_atomic
from sio.evaluate import ActivationBank, evaluate_bank
from sio.evaluate.config import ALL_DETECTORS, EvaluateConfig, KnnSettings
from sio.evaluate.detectors import fit_detector
from sio.evaluate.detectors.base import finite_scores

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


def make_bank(scale: float = 1.0) -> ActivationBank:
    """The activations; ``scale`` < 1 shrinks every set (``--scale``, for slow peers)."""
    global SIZES, OOD_SIZE
    SIZES = {split: max(100, int(n * scale)) for split, n in SIZES.items()}
    OOD_SIZE = max(100, int(OOD_SIZE * scale))
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


DETECTORS = [m for m in ALL_DETECTORS if m != "odin"]


def near_far_auroc(id_scores, ood: dict) -> dict:
    """Mean AUROC (percent, ID positive) per group; peers' outlier scores are negated first."""
    out = {}
    for group, sets in ood.items():
        values = []
        for scores in sets.values():
            labels = np.r_[np.ones(len(id_scores)), np.zeros(len(scores))]
            values.append(100 * roc_auc_score(labels, np.r_[id_scores, scores]))
        out[group] = float(np.mean(values))
    return out


def time_sio(method: str, bank: ActivationBank, config: EvaluateConfig) -> dict:
    start = time.perf_counter()
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
    scored = time.perf_counter()
    return {
        "fit_s": fitted - start,
        "score_s": scored - fitted,
        "auroc": near_far_auroc(id_scores, ood),
        "info": detector.info(),
    }


class PytorchOod:
    """pytorch-ood 0.4.0's detectors on the same features: fit_features / predict_features, or
    fit_logits / predict_logits on logits computed in torch (float32) from the features."""

    def __init__(self, bank: ActivationBank):
        import pytorch_ood.detector as peers

        self.peers = peers
        self.w = torch.from_numpy(bank.fc_weight)
        self.b = torch.from_numpy(bank.fc_bias)

    def logits(self, features):
        return torch.from_numpy(features) @ self.w.T + self.b

    def build(self, method: str, bank: ActivationBank):
        """(detector, fit(detector) -> None, predict(detector, features) -> outlier scores)."""
        p = self.peers
        train, val = bank.id_features["train"], bank.id_features["val"]
        y_train = torch.from_numpy(bank.id_labels["train"])
        y_val = torch.from_numpy(bank.id_labels["val"])

        def on_logits(detector, fit_split=None):
            fit = None
            if fit_split is not None:
                feats, labels = fit_split

                def fit(d):
                    d.fit_logits(self.logits(feats), labels)

            return detector, fit, lambda d, x: d.predict_logits(self.logits(x))

        def on_features(detector, feats, labels):
            def fit(d):
                d.fit_features(torch.from_numpy(feats), labels)

            return detector, fit, lambda d, x: d.predict_features(torch.from_numpy(x))

        if method == "msp":
            return on_logits(p.MaxSoftmax(None))
        if method == "mls":
            return on_logits(p.MaxLogit(None))
        if method == "ebo":
            return on_logits(p.EnergyBased(None))
        if method == "tempscale":
            return on_logits(p.TemperatureScaling(None), (val, y_val))
        if method == "klm":
            return on_logits(p.KLMatching(None), (val, y_val))
        if method == "openmax":
            return on_logits(p.OpenMax(None, tailsize=20, alpha=3, euclid_weight=1.0),
                             (train, y_train))  # fmt: skip
        if method == "vim":
            return on_features(p.ViM(None, d=256, w=self.w, b=self.b), train, y_train)
        if method == "knn":
            return on_features(p.KNN(None, k=50), train, y_train)
        if method == "dice":
            return on_features(p.DICE(None, w=self.w, b=self.b, p=0.9), train, y_train)
        if method == "react":
            head = torch.nn.Linear(self.w.shape[1], self.w.shape[0])
            head.weight.data, head.bias.data = self.w, self.b
            detector = p.ReAct(torch.nn.Identity(), head, percentile=0.9)
            return (
                detector,
                lambda d: d.fit_feature_maps(torch.from_numpy(val), y_val),
                lambda d, x: d.predict_feature_maps(torch.from_numpy(x)),
            )
        return None

    def time(self, method: str, bank: ActivationBank) -> dict | None:
        start = time.perf_counter()
        built = self.build(method, bank)
        if built is None:
            return None
        detector, fit, predict = built
        with torch.no_grad():
            if fit is not None:
                fit(detector)
            fitted = time.perf_counter()
            id_scores = -predict(detector, bank.id_features["test"]).double().numpy()
            ood = {
                group: {name: -predict(detector, f).double().numpy() for name, f in sets.items()}
                for group, sets in bank.ood.items()
            }
        scored = time.perf_counter()
        return {
            "fit_s": fitted - start,
            "score_s": scored - fitted,
            "auroc": near_far_auroc(id_scores, ood),
        }


def sio_config(label: str) -> EvaluateConfig:
    config = EvaluateConfig()
    if label.startswith("knn ("):
        config = dataclasses.replace(config, knn=KnnSettings(backend=label[5:-1]))
    return config


def labels_of_sio() -> list[str]:
    labels = []
    for method in DETECTORS:
        if method == "knn":
            labels.append("knn (torch)")
            if importlib.util.find_spec("faiss") is not None:
                labels.append("knn (faiss)")
        else:
            labels.append(method)
    return labels


def run_rounds(
    bank: ActivationBank,
    rounds: int,
    peers: dict,
    *,
    labels: list[str] | None = None,
    peer_rounds: dict | None = None,
    save=lambda rows, done: None,
) -> dict:
    """{label: {"sio": [runs], peer: [runs]}}, each detector timed once per round in sio and in
    every peer (a peer named in ``peer_rounds`` only in its first that many rounds), the order
    reversed every other round; ``save(rows, done)`` after every run (done: the runs so far)."""
    rows: dict[str, dict[str, list]] = {}
    labels = labels_of_sio() if labels is None else labels
    peer_rounds = peer_rounds or {}
    done = 0
    for r in range(rounds):
        in_round = [p for p in peers if r < peer_rounds.get(p, rounds)]
        for label in labels:
            method = label.split(" ")[0]
            order = ["sio", *in_round] if r % 2 == 0 else [*in_round, "sio"]
            for who in order:
                if who == "sio":
                    run = time_sio(method, bank, sio_config(label))
                elif label == "knn (faiss)":
                    continue  # each peer's KNN is timed once, with the torch row
                else:
                    run = peers[who].time(method, bank)
                if run is None:
                    continue
                rows.setdefault(label, {}).setdefault(who, []).append(run)
                done += 1
                save(rows, done)
                total = run["fit_s"] + run["score_s"]
                print(f"round {r + 1} {label} {who}: {total:.2f} s", flush=True)
        start = time.perf_counter()
        evaluate_bank(bank, DETECTORS)
        rows.setdefault("whole evaluation", {}).setdefault("sio", []).append(
            {"fit_s": time.perf_counter() - start, "score_s": 0.0, "auroc": {}}
        )
        done += 1
        save(rows, done)
        whole = rows["whole evaluation"]["sio"][-1]["fit_s"]
        print(f"round {r + 1} whole sio evaluation: {whole:.1f} s", flush=True)
    return rows


def median_seconds(runs: list[dict]) -> float:
    return statistics.median(run["fit_s"] + run["score_s"] for run in runs)


def summary(rows: dict, peers: list[str]) -> dict:
    table = {}
    for label, by in rows.items():
        table[label] = {
            who: {
                "median_s": median_seconds(runs),
                "runs_s": [run["fit_s"] + run["score_s"] for run in runs],
                "median_fit_s": statistics.median(run["fit_s"] for run in runs),
                "auroc": runs[0]["auroc"],
            }
            for who, runs in by.items()
        }
    return table


def totals(table: dict, peers: list[str]) -> dict:
    """Per peer: the sum of the medians over the detectors it has, and sio's on the same ones."""
    out = {}
    for peer in peers:
        shared = [x for x, by in table.items() if peer in by and x != "whole evaluation"]
        out[peer] = {
            "detectors": shared,
            "peer_s": sum(table[x][peer]["median_s"] for x in shared),
            "sio_s": sum(table[x]["sio"]["median_s"] for x in shared),
        }
    return out


def markdown(table: dict, peers: list[str], sums: dict) -> str:
    head = "| detector | sio s | " + " | ".join(f"{p} s" for p in peers)
    head += " | near AUROC sio / " + " / ".join(peers) + " |"
    lines = [head, "|---" * (3 + len(peers)) + "|"]
    for label, by in table.items():
        cells = [f"{by['sio']['median_s']:.2f}"]
        cells += [f"{by[p]['median_s']:.2f}" if p in by else "—" for p in peers]
        aurocs = [by[w]["auroc"].get("near") for w in ["sio", *peers] if w in by]
        auroc = " / ".join(f"{a:.3f}" for a in aurocs if a is not None)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {auroc} |")
    for peer, row in sums.items():
        lines.append(
            f"| **sum over the {len(row['detectors'])} detectors {peer} has** | "
            f"**{row['sio_s']:.1f}** | "
            + " | ".join(f"**{row['peer_s']:.1f}**" if p == peer else "" for p in peers)
            + " | |"
        )
    return "\n".join(lines)


PYTORCH_OOD = "pytorch-ood==0.4.0"


def peers_python() -> Path:
    """The peers' virtual environment's python (made by ``loader.peer_python`` if it is not
    there yet; never sio's own environment), with pytorch-ood installed in it once from PyPI
    (``PYTORCH_OOD``)."""
    import subprocess

    folder = Path(os.environ.get("SIO_BENCH_PEERS") or Path.home() / ".cache/sio-bench/peers")
    python = folder / "bin" / "python"
    if not python.is_file():
        from loader import peer_python  # benchmarks/loader.py (imports sio.train)

        python = peer_python()
    marker = python.parent.parent / ".sio-bench-evaluate"
    if not (marker.is_file() and marker.read_text() == PYTORCH_OOD):
        subprocess.run([python, "-m", "pip", "install", "--quiet", PYTORCH_OOD], check=True)
        marker.write_text(PYTORCH_OOD)
    return python


def machine() -> dict:
    """describe_machine() plus the libraries this benchmark's numbers depend on."""
    faiss = importlib.util.find_spec("faiss") is not None
    peer = importlib.util.find_spec("pytorch_ood") is not None
    return {
        **describe_machine(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "torch": torch.__version__,
        "faiss": __import__("faiss").__version__ if faiss else None,
        "pytorch-ood": __import__("importlib.metadata").metadata.version("pytorch-ood")
        if peer
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--openood", default=None, help="an OpenOOD v1.5 checkout")
    parser.add_argument(
        "--openood-rounds",
        type=int,
        default=None,
        help="time OpenOOD only in the first N rounds (its per-sample loops take most of a "
        "full-scale run); default: every round",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="shrink every set (OpenOOD's loops are slow)"
    )
    parser.add_argument(
        "--detectors", default=None, help="comma-separated sio labels (default: all), e.g. vim,msp"
    )
    parser.add_argument("--out", default="evaluate.json", help="file name in benchmarks/results")
    args = parser.parse_args()
    labels = labels_of_sio()
    if args.detectors:
        wanted = args.detectors.split(",")
        unknown = sorted(set(wanted) - {label.split(" ")[0] for label in labels})
        if unknown:
            raise SystemExit(f"--detectors: unknown {', '.join(unknown)}; known: {labels}")
        labels = [label for label in labels if label.split(" ")[0] in wanted]
    load_before = os.getloadavg()
    started = time.time()
    start = time.perf_counter()
    bank = make_bank(args.scale)
    build_s = time.perf_counter() - start
    print(f"built the activations in {build_s:.1f} s", flush=True)
    peers = {}
    if importlib.util.find_spec("pytorch_ood") is not None:
        peers["pytorch-ood"] = PytorchOod(bank)
    else:
        print(
            "pytorch-ood is not importable here (it lives in the peers' environment: "
            "benchmarks/evaluate_scale.py times it there): skipped",
            flush=True,
        )
    if args.openood:
        from openood_peer import OpenOod  # benchmarks/openood_peer.py

        peers["openood"] = OpenOod(bank, Path(args.openood))
    else:
        print("OpenOOD: skipped (not on PyPI; give a checkout with --openood DIR)", flush=True)
    peer_rounds = {} if args.openood_rounds is None else {"openood": args.openood_rounds}
    results_dir = Path(__file__).parent / "results"
    results_dir.mkdir(exist_ok=True)
    out = results_dir / args.out
    expected_runs = sum(
        1 + sum(1 for p in peers if r < peer_rounds.get(p, args.rounds))
        for r in range(args.rounds)
        for _ in labels
    )  # an upper bound: rows a peer lacks are not run

    machine_info = machine()

    def record(rows: dict, done: int, complete: bool) -> dict:
        table = summary(rows, list(peers))
        result = {
            "complete": complete,
            "runs_done": done,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "elapsed_s": time.time() - started,
            "shape": {**SIZES, "ood_sets": 6, "ood_size": OOD_SIZE, "width": WIDTH},
            "classes": CLASSES,
            "seed": SEED,
            "rounds": args.rounds,
            "peer_rounds": peer_rounds,
            "scale": args.scale,
            "build_s": build_s,
            "detectors": table,
            "totals_s": totals(table, list(peers)),
            "peers": {name: getattr(peer, "source", "PyPI") for name, peer in peers.items()},
            "machine": machine_info,
            # 1-, 5- and 15-minute load averages: above ~0.5 another job shared the two cores
            "load_average": {"before": load_before, "now": os.getloadavg()},
        }
        write_json_atomic(out, result)  # after every run: a stopped run keeps what it measured
        return result

    print(f"writing {out} after each of up to {expected_runs} timed runs", flush=True)
    rows = run_rounds(
        bank,
        args.rounds,
        peers,
        labels=labels,
        peer_rounds=peer_rounds,
        save=lambda rows, done: record(rows, done, complete=False),
    )
    result = record(rows, sum(len(v) for by in rows.values() for v in by.values()), True)
    print(markdown(result["detectors"], list(peers), result["totals_s"]))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
