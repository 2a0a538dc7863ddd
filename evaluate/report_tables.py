"""The markdown tables of ``sio report``: the paper's Table 1 layout (per detector, near- and
far-OOD AUROC or FPR@95 per arm, the paired Δ with its CI and p, Average and Best rows), the ID
accuracy line and the per-set table.

The Average row is, per arm and column, the mean ± std over seeds of each seed's average over
the detectors (not the mean of the detectors' stds); Best is the detector with the best mean,
with its own std.
"""

from __future__ import annotations

import numpy as np

from sio.evaluate.arms import mean_std, paper_order
from sio.evaluate.arms import mean_std_cell as cell


def arm_label(alpha: str) -> str:
    return "baseline" if float(alpha) == 1.0 else f"+SIO α={alpha}"


def paired_delta(treated: dict, baseline: dict, treated_seeds, baseline_seeds) -> dict:
    """Δ = treated − baseline over the seeds both arms ran (paired by seed): the mean Δ, its
    95% confidence interval from Student's t over the paired differences and the two-sided
    paired t-test's p (None below two pairs, or when every difference is equal)."""
    from scipy import stats

    base = dict(zip(baseline_seeds, baseline["values"], strict=True))
    pairs = [
        (v, base[s]) for s, v in zip(treated_seeds, treated["values"], strict=True) if s in base
    ]
    diffs = np.array([t - b for t, b in pairs], dtype=np.float64)
    delta = {"mean": float(diffs.mean()) if len(diffs) else float("nan"), "n": len(diffs)}
    delta |= {"low": None, "high": None, "p": None}
    if len(diffs) >= 2 and float(diffs.std(ddof=1)) > 0:
        sem = float(diffs.std(ddof=1)) / np.sqrt(len(diffs))
        half = float(stats.t.ppf(0.975, len(diffs) - 1)) * sem
        delta |= {"low": delta["mean"] - half, "high": delta["mean"] + half}
        delta["p"] = float(stats.ttest_rel([t for t, _ in pairs], [b for _, b in pairs]).pvalue)
    return delta


def delta_cell(delta: dict) -> str:
    if delta["p"] is None:
        return f"{delta['mean']:+.2f} (n = {delta['n']}, no test)"
    return f"{delta['mean']:+.2f} [{delta['low']:+.2f}, {delta['high']:+.2f}] p = {delta['p']:.2g}"


def baseline_alpha(arms: dict) -> str | None:
    return next((a for a in arms if float(a) == 1.0), None)


def summary_rows(arms: dict, metric: str) -> tuple[list[str], dict[str, list[dict]]]:
    """Column labels and, per detector, the per-arm stats of near then far ``metric``."""
    labels = [f"{arm_label(a)} (n = {len(arms[a]['seeds'])})" for a in arms]
    rows = {}
    for detector in paper_order(next(iter(arms.values()))["metrics"]):
        rows[detector] = [
            arms[a]["metrics"][detector][group]["mean"][metric]
            for group in ("near", "far")
            for a in arms
        ]
    return labels, rows


def average_and_best(rows: dict[str, list[dict]], metric: str) -> tuple[list, list]:
    """Per column of ``rows`` (``summary_rows``): the Average (mean ± std over seeds of each
    seed's average over the detectors) and the Best (detector, stats): the best mean, highest
    for AUROC, lowest for FPR@95."""
    columns = list(zip(*rows.values(), strict=True))
    average = [mean_std(np.mean([s["values"] for s in col], axis=0)) for col in columns]
    better = max if metric == "auroc" else min
    best = [
        better(zip(rows, col, strict=True), key=lambda item: item[1]["mean"]) for col in columns
    ]
    return average, best


def summary_table(arms: dict, metric: str = "auroc") -> str:
    """The paper's Table 1 layout: per detector, near- and far-OOD ``metric`` (auroc or fpr95)
    per arm, then Δ (each +SIO arm − the baseline, paired by seed, with its 95% CI and the
    paired t-test's p). Average: mean ± std over seeds of each seed's average over detectors;
    Best: the detector with the best mean (highest AUROC, lowest FPR@95), named."""
    name = {"auroc": "AUROC", "fpr95": "FPR@95"}[metric]
    labels, rows = summary_rows(arms, metric)
    base = baseline_alpha(arms)
    others = [a for a in arms if a != base] if base is not None else []
    columns = [f"{group} {name} {label}" for group in ("near", "far") for label in labels]
    columns += [f"Δ {group} {name} {arm_label(a)}" for group in ("near", "far") for a in others]
    lines = ["| detector | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    order = list(arms)

    def deltas(row: list[dict]) -> list[str]:
        cells = []
        if base is None:  # no baseline among the runs: nothing to compare with
            return cells
        for g in range(2):  # near, far
            baseline = row[g * len(order) + order.index(base)]
            for a in others:
                treated = row[g * len(order) + order.index(a)]
                delta = paired_delta(treated, baseline, arms[a]["seeds"], arms[base]["seeds"])
                cells.append(delta_cell(delta))
        return cells

    for detector, row in rows.items():
        lines.append(f"| {detector} | " + " | ".join([*map(cell, row), *deltas(row)]) + " |")
    average, winners = average_and_best(rows, metric)
    best = [f"{cell(stat)} ({detector})" for detector, stat in winners]
    lines.append("| Average | " + " | ".join([*map(cell, average), *deltas(average)]) + " |")
    lines.append("| Best | " + " | ".join(best) + " |" + " — |" * (len(columns) - len(best)))
    return "\n".join(lines)


def id_accuracy_line(arms: dict) -> str:
    """ID accuracy once per arm (it does not depend on the detector)."""
    parts = [
        f"{arm_label(a)} {cell(arm['id_acc'])} (n = {len(arm['seeds'])})" for a, arm in arms.items()
    ]
    return "ID accuracy (%): " + "; ".join(parts) + "."


def dataset_table(arms: dict) -> str:
    """AUROC and FPR@95 per detector and OOD set, per arm."""
    labels = [arm_label(a) for a in arms]
    columns = [f"{m} {label}" for m in ("AUROC", "FPR@95") for label in labels]
    lines = [
        "| detector | set | " + " | ".join(columns) + " |",
        "|---|---" + "|---" * len(columns) + "|",
    ]
    first = next(iter(arms.values()))
    for detector in paper_order(first["metrics"]):
        groups = first["metrics"][detector]
        for group in sorted(groups, key=lambda g: g != "near"):  # near sets first
            for name in groups[group]["datasets"]:
                stats = [
                    arms[a]["metrics"][detector][group]["datasets"][name][metric]
                    for metric in ("auroc", "fpr95")
                    for a in arms
                ]
                cells = " | ".join(cell(s) for s in stats)
                lines.append(f"| {detector} | {group}: {name} | {cells} |")
    return "\n".join(lines)
