"""``sio evaluate``: score ID and OOD activations with each detector; results.json + table.

``results.json``::

    {"id_acc": 95.1, "fpr_convention": "id",
     "methods": {"msp": {"near": {"datasets": {"cifar100": {"fpr95": .., "auroc": ..,
                                                            "aupr_in": .., "aupr_out": ..}},
                                  "mean": {...the same four...}},
                         "far": {...}}}}

All values are percentages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .activations import ActivationBank
from .detectors import finite_scores, fit_detector
from .metrics import METRICS, mean_metrics, ood_metrics


def id_accuracy(bank: ActivationBank) -> float:
    predictions = bank.logits(bank.id_features["test"]).argmax(axis=1)
    return 100 * float(np.mean(predictions == bank.id_labels["test"]))


def evaluate_bank(bank: ActivationBank, methods, fpr_convention: str = "id") -> dict:
    results = {"id_acc": id_accuracy(bank), "fpr_convention": fpr_convention, "methods": {}}
    for method in methods:
        detector = fit_detector(method, bank)
        id_scores = finite_scores(detector, bank, bank.id_features["test"], "id.test")
        entry = {}
        for group, sets in bank.ood.items():
            if not sets:
                continue
            per_dataset = {
                name: ood_metrics(
                    id_scores,
                    finite_scores(detector, bank, feats, f"ood.{group}.{name}"),
                    fpr_convention,
                )
                for name, feats in sets.items()
            }
            entry[group] = {"datasets": per_dataset, "mean": mean_metrics(per_dataset)}
        results["methods"][method] = entry
    return results


def markdown_table(results: dict) -> str:
    """OpenOOD's layout: one table per method, rows near sets, nearood, far sets, farood."""
    header = "| dataset | FPR@95 | AUROC | AUPR_IN | AUPR_OUT | ACC |\n|---|---|---|---|---|---|"
    lines = [f"FPR@95 convention: {results['fpr_convention']}-positive. Values in percent.", ""]
    for method, groups in results["methods"].items():
        lines += [f"### {method}", "", header]
        for group, entry in groups.items():
            rows = [*entry["datasets"].items(), (f"{group}ood", entry["mean"])]
            for name, values in rows:
                cells = " | ".join(f"{values[m]:.2f}" for m in METRICS)
                lines.append(f"| {name} | {cells} | {results['id_acc']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def write_results(results: dict, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out / "results.md").write_text(markdown_table(results) + "\n")
