"""``sio report``: aggregate evaluated runs over seeds, baseline (alpha = 1) against +SIO.

Each run folder holds ``results.json`` and ``run.json`` (alpha, seed). Runs are grouped by
alpha; every value is the mean and the population standard deviation (``np.std``, as OpenOOD)
over *all* seeds of the group. The SIO reference code averages the wrong runs (run 1 twice,
run 2 never); this averages each seed once.

The summary table lists detectors in the paper's Table 1 order. Its Average row is, per arm and
column, the mean ± std over seeds of each seed's average over the detectors (not the mean of
the detectors' stds); Best is the detector with the highest mean, with its own std.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from sio.core.files import write_text_atomic
from sio.evaluate.config import ALL_DETECTORS


def load_run(folder: str | Path) -> dict:
    folder = Path(folder)
    for name in ("results.json", "run.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name}: missing; `sio evaluate --out {folder}` "
                "writes results.json and run.json"
            )
    run = json.loads((folder / "run.json").read_text())
    return {
        **run,
        "folder": str(folder),
        "results": json.loads((folder / "results.json").read_text()),
    }


def _benchmark_of(run: dict):
    record = run.get("benchmark") or run["results"].get("benchmark")
    return None if record is None else (record["name"], record["sha256"])


def check_same_benchmark(runs: list[dict]) -> None:
    """Refuse to average runs evaluated on different benchmarks (name and benchmark.json
    sha256, recorded in run.json and results.json), or runs with and without that record."""
    found = {}
    for run in runs:
        found.setdefault(_benchmark_of(run), run["folder"])
    if len(found) > 1:
        described = "; ".join(
            f"{folder}: "
            + (
                "no benchmark recorded"
                if key is None
                else f"{key[0]} (benchmark.json {key[1][:12]})"
            )
            for key, folder in found.items()
        )
        raise ValueError(
            "the runs were evaluated on different benchmarks, which cannot be averaged: "
            f"{described}; evaluate them all on one benchmark"
        )


def mean_std(values: list[float]) -> dict:
    """Mean, population std and n; ``values`` (one per seed, in seed order) stay for the
    Average row, whose spread is that of the per-seed averages."""
    values = [float(v) for v in values]
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "n": len(values),
        "values": values,
    }


def _paper_order(methods) -> list[str]:
    """SIO's Table 1 order (openmax, msp, tempscale, ...), then any other detector by name."""
    rank = {name: i for i, name in enumerate(ALL_DETECTORS)}
    return sorted(methods, key=lambda m: (rank.get(m, len(rank)), m))


def aggregate(runs: list[dict]) -> dict:
    """{alpha: {"seeds": [...], "id_acc": {mean, std, n}, "methods": {m: {group: {"mean": {metric:
    {mean, std, n}}, "datasets": {name: {metric: {...}}}}}}}}, keyed by alpha as text."""
    by_alpha: dict[float, list[dict]] = defaultdict(list)
    for run in runs:
        by_alpha[float(run["alpha"])].append(run)
    arms = {}
    for alpha in sorted(by_alpha, reverse=True):
        group_runs = sorted(by_alpha[alpha], key=lambda r: r["seed"])
        seeds = [r["seed"] for r in group_runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"alpha {alpha}: seed listed twice in {seeds}")
        values: dict[tuple, list[float]] = defaultdict(list)
        for run in group_runs:
            for method, groups in run["results"]["methods"].items():
                for group, entry in groups.items():
                    for metric, value in entry["mean"].items():
                        values[(method, group, "mean", metric)].append(value)
                    for name, metrics in entry["datasets"].items():
                        for metric, value in metrics.items():
                            values[(method, group, name, metric)].append(value)
        methods: dict = {}
        for (method, group, name, metric), vals in values.items():
            if len(vals) != len(group_runs):
                raise ValueError(f"alpha {alpha}: {method}/{group}/{name} is missing in some runs")
            node = methods.setdefault(method, {}).setdefault(group, {"mean": {}, "datasets": {}})
            target = node["mean"] if name == "mean" else node["datasets"].setdefault(name, {})
            target[metric] = mean_std(vals)
        arms[f"{alpha:g}"] = {
            "alpha": alpha,
            "seeds": seeds,
            "id_acc": mean_std([r["results"]["id_acc"] for r in group_runs]),
            "methods": methods,
        }
    return arms


def _arm_label(alpha: str) -> str:
    return "baseline" if float(alpha) == 1.0 else f"+SIO α={alpha}"


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def summary_table(arms: dict) -> str:
    """The paper's Table 1 layout: per detector, near/far AUROC and ID accuracy per arm."""
    labels = [_arm_label(a) for a in arms]
    columns = [
        f"{what} {label}" for what in ("near AUROC", "far AUROC", "ID acc") for label in labels
    ]
    lines = ["| detector | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    methods = _paper_order(next(iter(arms.values()))["methods"])
    rows: dict[str, list[dict]] = {}
    for method in methods:
        row = []
        for group in ("near", "far"):
            row += [arms[a]["methods"][method][group]["mean"]["auroc"] for a in arms]
        row += [arms[a]["id_acc"] for a in arms]
        rows[method] = row
    for method, row in rows.items():
        lines.append(f"| {method} | " + " | ".join(_cell(s) for s in row) + " |")
    columns_stats = list(zip(*rows.values(), strict=True))
    # per seed, the average over detectors; then mean and std of those averages over seeds
    average = [mean_std(np.mean([s["values"] for s in col], axis=0)) for col in columns_stats]
    best = [max(col, key=lambda s: s["mean"]) for col in columns_stats]
    lines.append("| Average | " + " | ".join(_cell(s) for s in average) + " |")
    lines.append("| Best | " + " | ".join(_cell(s) for s in best) + " |")
    return "\n".join(lines)


def dataset_table(arms: dict) -> str:
    """AUROC and FPR@95 per detector and OOD set, per arm."""
    labels = [_arm_label(a) for a in arms]
    columns = [f"{m} {label}" for m in ("AUROC", "FPR@95") for label in labels]
    lines = [
        "| detector | set | " + " | ".join(columns) + " |",
        "|---|---" + "|---" * len(columns) + "|",
    ]
    first = next(iter(arms.values()))
    for method in _paper_order(first["methods"]):
        groups = first["methods"][method]
        for group in sorted(groups, key=lambda g: g != "near"):  # near sets first
            for name in groups[group]["datasets"]:
                stats = [
                    arms[a]["methods"][method][group]["datasets"][name][metric]
                    for metric in ("auroc", "fpr95")
                    for a in arms
                ]
                cells = " | ".join(_cell(s) for s in stats)
                lines.append(f"| {method} | {group}: {name} | {cells} |")
    return "\n".join(lines)


def _check_same_layout(arms: dict) -> None:
    """Every arm must have the same detectors and OOD sets, or the tables would not line up."""
    layouts = {
        alpha: sorted(
            (method, group, name)
            for method, groups in arm["methods"].items()
            for group, entry in groups.items()
            for name in entry["datasets"]
        )
        for alpha, arm in arms.items()
    }
    first_alpha, first = next(iter(layouts.items()))
    for alpha, layout in layouts.items():
        if layout != first:
            only = sorted(set(first) ^ set(layout))
            raise ValueError(
                f"arms alpha={first_alpha} and alpha={alpha} differ in "
                f"(detector, group, set): {only}"
            )


def report(run_folders: list[str | Path], out: str | Path | None = None) -> str:
    """Aggregate run folders; writes report.json and report.md to ``out`` when given."""
    if not run_folders:
        raise ValueError("no run folders to report on")
    runs = [load_run(folder) for folder in run_folders]
    check_same_benchmark(runs)
    conventions = {r["results"]["fpr_convention"] for r in runs}
    if len(conventions) > 1:
        raise ValueError(
            f"the runs mix FPR@95 conventions {sorted(conventions)}; re-evaluate "
            "them with one --fpr-convention"
        )
    arms = aggregate(runs)
    _check_same_layout(arms)
    seeds = sorted({r["seed"] for r in runs})
    text = "\n".join(
        [
            f"Mean ± population std over seeds {seeds} (each arm n = "
            f"{', '.join(str(len(a['seeds'])) for a in arms.values())}); values in percent; "
            f"FPR@95 with {conventions.pop()} as positive.",
            "",
            summary_table(arms),
            "",
            dataset_table(arms),
            "",
        ]
    )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "report.json", json.dumps(arms, indent=2) + "\n")
        write_text_atomic(out / "report.md", text)
    return text
