"""Every activation detector's AUROC in sio with ``evaluate.parity: openood`` and in OpenOOD
v1.5's own code, on the same activations: the per-detector difference in percentage points.

The activations are benchmarks/evaluate.py's (random but structured, 10 classes, 512-d; one
tenth of every set by default, ``--scale``) or any activations file (``--activations``).
sio scores them in this process; OpenOOD's postprocessors score them in the peers' environment
(``evaluate.peers_python``: never sio's; its OpenMax needs libmr built there, see
BENCHMARKS.md) through benchmarks/openood_peer.py, with 256-row loader batches (the train
batch of NNGuide's bank in parity). Both sides use OpenOOD's defaults (configs/postprocessors),
except where a default cannot run on the features: Residual's dim 512 leaves no residual for
D <= 512 (OpenOOD: every score 0), so both sides get ``--residual-dim`` (default 256, VIM's).
Each detector's AUROC (ID positive, scikit-learn) is taken per OOD set; the table gives the
near and far means of each side and the largest per-set |difference|; sio's default (parity
off) is shown beside it. ODIN and G-ODIN need images (not activations) and are not compared.

Writes benchmarks/results/parity.json (``--out``).
Usage: python benchmarks/parity.py --openood DIR [--scale 0.1 | --activations FILE]
[--detectors msp,gen] [--residual-dim 256] [--out parity.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from sio.core.files import write_json_atomic
from sio.evaluate.activations import load_activations
from sio.evaluate.config import EvaluateConfig, ResidualSettings
from sio.evaluate.detectors import DETECTORS, fit_detector, needs_images
from sio.evaluate.detectors.base import finite_scores

HERE = Path(__file__).parent
TOLERANCE_PP = 0.01


def activation_detectors() -> list[str]:
    """Every registered detector that scores activations (not ODIN, not G-ODIN)."""
    return [name for name in DETECTORS.names() if not needs_images(name)]


def sio_scores(method: str, bank, config: EvaluateConfig) -> dict[str, np.ndarray]:
    """sio's scores of ID test and every OOD set, keyed as scores.npz."""
    detector = fit_detector(method, bank, config)
    scores = {f"{method}/id.test": finite_scores(detector, bank, bank.id_features["test"], "id")}
    for group, sets in bank.ood.items():
        for name, features in sets.items():
            key = f"{method}/ood.{group}.{name}"
            scores[key] = finite_scores(detector, bank, features, key)
    return scores


def aurocs(method: str, scores: dict, bank) -> dict[str, float]:
    """AUROC in percent (ID positive) of every OOD set, keyed group.name."""
    id_scores = scores[f"{method}/id.test"]
    out = {}
    for group, sets in bank.ood.items():
        for name in sets:
            ood = scores[f"{method}/ood.{group}.{name}"]
            labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood))]
            out[f"{group}.{name}"] = 100 * roc_auc_score(labels, np.r_[id_scores, ood])
    return out


def group_means(per_set: dict[str, float]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for key, value in per_set.items():
        groups.setdefault(key.split(".")[0], []).append(value)
    return {group: float(np.mean(values)) for group, values in groups.items()}


def run_openood(root: str, bank_file: Path, detectors: list[str], settings: dict, out: Path):
    """OpenOOD's scores of ``detectors``, from openood_peer.py in the peers' environment."""
    from evaluate import peers_python  # benchmarks/evaluate.py

    command = [
        str(peers_python()),
        str(HERE / "openood_peer.py"),
        *("--openood", root, "--bank", str(bank_file), "--detectors", ",".join(detectors)),
        *("--settings", json.dumps(settings), "--batch", "256", "--out", str(out)),
    ]
    subprocess.run(command, check=True)
    with np.load(out, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def compare(method: str, bank, sio: dict, default: dict | str, openood: dict | None) -> dict:
    row = {"sio_parity": aurocs(method, sio, bank)}
    row["default"] = default if isinstance(default, str) else aurocs(method, default, bank)
    if openood is None or f"{method}/id.test" not in openood:
        row["openood"] = None
        return row
    row["openood"] = aurocs(method, openood, bank)
    diffs = [row["sio_parity"][k] - row["openood"][k] for k in row["openood"]]
    row["max_abs_diff_pp"] = float(np.max(np.abs(diffs)))
    row["within_tolerance"] = row["max_abs_diff_pp"] <= TOLERANCE_PP
    return row


def markdown(rows: dict) -> str:
    lines = [
        "| detector | near AUROC sio (parity) / OpenOOD | far AUROC sio (parity) / OpenOOD "
        "| max per-set diff, pp | sio default near / far |",
        "|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        sio = group_means(row["sio_parity"])
        openood = group_means(row["openood"]) if row["openood"] else None
        near = f"{sio['near']:.4f} / " + (f"{openood['near']:.4f}" if openood else "—")
        far = f"{sio['far']:.4f} / " + (f"{openood['far']:.4f}" if openood else "—")
        diff = f"{row['max_abs_diff_pp']:.5f}" if openood else "—"
        if isinstance(row["default"], str):
            default = row["default"]
        else:
            means = group_means(row["default"])
            default = f"{means['near']:.4f} / {means['far']:.4f}"
        lines.append(f"| {method} | {near} | {far} | {diff} | {default} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openood", required=True, help="an OpenOOD v1.5 checkout")
    parser.add_argument("--activations", default=None, help="an activations .npz (sio's format)")
    parser.add_argument("--scale", type=float, default=0.1, help="of benchmarks/evaluate.py's bank")
    parser.add_argument("--detectors", default=None, help="comma-separated (default: all)")
    parser.add_argument("--residual-dim", type=int, default=256)
    parser.add_argument("--out", default="parity.json", help="file name in benchmarks/results")
    args = parser.parse_args()
    from evaluate import machine, make_bank  # benchmarks/evaluate.py

    detectors = args.detectors.split(",") if args.detectors else activation_detectors()
    load_before, started = os.getloadavg(), time.time()
    bank = load_activations(args.activations) if args.activations else make_bank(args.scale)
    config = EvaluateConfig(parity="openood", residual=ResidualSettings(dim=args.residual_dim))
    default_config = dataclasses.replace(config, parity="off")
    with tempfile.TemporaryDirectory() as folder:
        bank_file = Path(folder) / "bank.npz"
        np.savez(bank_file, **bank.to_npz_dict())
        settings = {"residual": {"dim": args.residual_dim}}
        openood = run_openood(args.openood, bank_file, detectors, settings, Path(folder) / "o.npz")
    rows = {}
    for method in detectors:
        sio = sio_scores(method, bank, config)
        try:
            default = sio_scores(method, bank, default_config)
        except ValueError as err:  # DetectorError: sio's default refuses what OpenOOD allows
            default = f"skipped: {err}"
        rows[method] = compare(method, bank, sio, default, openood)
        print(f"{method}: {rows[method].get('max_abs_diff_pp', 'no OpenOOD peer')}", flush=True)
    shape = {
        **{f"id.{s}": len(bank.id_features[s]) for s in ("train", "val", "test")},
        **{f"ood.{g}.{n}": len(f) for g, sets in bank.ood.items() for n, f in sets.items()},
        "width": int(bank.fc_weight.shape[1]),
        "classes": int(bank.fc_weight.shape[0]),
    }
    result = {
        "command": " ".join(sys.argv),
        "activations": args.activations or f"benchmarks/evaluate.py make_bank({args.scale})",
        "shape": shape,
        "openood_commit": str(openood["commit"]),
        "openood_seconds": json.loads(str(openood["seconds"])),
        "settings_both_sides": settings,
        "tolerance_pp": TOLERANCE_PP,
        "detectors": rows,
        "all_within_tolerance": all(r.get("within_tolerance", False) for r in rows.values()),
        "machine": machine(),
        "elapsed_s": time.time() - started,
        "load_average": {"before": load_before, "now": os.getloadavg()},
    }
    (HERE / "results").mkdir(exist_ok=True)
    write_json_atomic(HERE / "results" / args.out, result)
    print(markdown(rows))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
