"""The runs ``sio report`` reads, checked and averaged over seeds: one arm per alpha.

Every value is the mean and the population standard deviation (``np.std``, as OpenOOD) over
*all* seeds of the arm. The SIO reference code averages the wrong runs (run 1 twice, run 2
never); this averages each seed once. Arms must share a benchmark, an FPR@95 convention, a
layout (detectors and sets) and, unless ``--allow-mixed``, a training recipe.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from sio.core.definition import differences
from sio.evaluate.config import ALL_DETECTORS


def load_run(folder: str | Path) -> dict:
    folder = Path(folder)
    for name in ("results.json", "run.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name}: missing; `sio evaluate --run RUN --out {folder}` writes "
                "results.json and run.json (alpha and seed from the checkpoint); with "
                "--activations or --model, add --alpha A --seed S"
            )
    run = json.loads((folder / "run.json").read_text())
    return {**run, "folder": str(folder), "results": read_results(folder / "results.json")}


def read_results(path: str | Path) -> dict:
    """A results.json as ``sio evaluate`` writes it now: one written before issue 29, whose
    per-detector metrics are under ``methods``, is read with them under ``metrics``."""
    results = json.loads(Path(path).read_text())
    if isinstance(results, dict) and "methods" in results and "metrics" not in results:
        results["metrics"] = results.pop("methods")
    return results


def benchmark_of(run: dict):
    record = run.get("benchmark") or run["results"].get("benchmark")
    return None if record is None else (record["name"], record["sha256"])


def check_same_benchmark(runs: list[dict]) -> None:
    """Refuse to average runs evaluated on different benchmarks (name and benchmark.json
    sha256, recorded in run.json and results.json), or runs with and without that record."""
    found = {}
    for run in runs:
        found.setdefault(benchmark_of(run), run["folder"])
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


def drop_skipped_detectors(runs: list[dict]) -> list[str]:
    """Leave out of every run a detector that some run skipped (results.json's ``skipped``: it
    could not be fitted, or scored NaN or inf there) and so cannot be averaged; one line per
    detector left out, naming a run that skipped it and why. A detector missing from a run
    without being skipped there stays (and the layout check names it)."""
    notes, dropped = [], set()
    for run in runs:
        for detector, reason in run["results"].get("skipped", {}).items():
            scored = any(detector in other["results"]["metrics"] for other in runs)
            if scored and detector not in dropped:
                dropped.add(detector)
                notes.append(f"- left out {detector}: skipped in {run['folder']} ({reason})")
    for run in runs:
        metrics = run["results"]["metrics"]
        run["results"]["metrics"] = {d: v for d, v in metrics.items() if d not in dropped}
    return notes


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


def mean_std_cell(stat: dict, digits: int = 2) -> str:
    """The one "mean ± std" cell of every report table: a single run (n = 1) has no spread,
    so it shows its value alone."""
    if stat.get("n", 2) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def check_same_recipe(runs: list[dict], allow_mixed: bool = False) -> list[str]:
    """Refuse runs trained with different recipes (run.json's ``recipe``, from each
    checkpoint: the training config, backbone and real set; only alpha and the synthetic set
    may differ between arms), naming the field, both values and both folders; with
    ``allow_mixed``, one marked line per difference instead. Runs that record no recipe
    (``--activations``, ``--model``) are not compared."""
    recorded = [run for run in runs if run.get("recipe")]
    notes = []
    for run in recorded[1:]:
        first = recorded[0]
        for field in differences(first["recipe"], run["recipe"]):
            old, new = first["recipe"].get(field), run["recipe"].get(field)
            said = f"{field} = {old!r} in {first['folder']}, {new!r} in {run['folder']}"
            if not allow_mixed:
                raise ValueError(
                    f"the runs were trained with different recipes ({said}); only alpha and "
                    "the synthetic set may differ between arms: retrain, or report them "
                    "marked with --allow-mixed"
                )
            notes.append(f"- **mixed recipes** (--allow-mixed): {said}")
    return notes


def paper_order(detectors) -> list[str]:
    """SIO's Table 1 order (openmax, msp, tempscale, ...), then any other detector by name."""
    rank = {name: i for i, name in enumerate(ALL_DETECTORS)}
    return sorted(detectors, key=lambda d: (rank.get(d, len(rank)), d))


def aggregate(runs: list[dict]) -> dict:
    """{alpha: {"seeds": [...], "id_acc": {mean, std, n}, "metrics": {detector: {group: {"mean":
    {metric: {mean, std, n}}, "datasets": {name: {metric: {...}}}}}}}}, keyed by alpha as text
    (``metrics`` as in results.json)."""
    drop_skipped_detectors(runs)  # a detector some run skipped cannot be averaged
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
            for detector, groups in run["results"]["metrics"].items():
                for group, entry in groups.items():
                    for metric, value in entry["mean"].items():
                        values[(detector, group, "mean", metric)].append(value)
                    for name, metrics in entry["datasets"].items():
                        for metric, value in metrics.items():
                            values[(detector, group, name, metric)].append(value)
        by_detector: dict = {}
        for (detector, group, name, metric), vals in values.items():
            if len(vals) != len(group_runs):
                raise ValueError(
                    f"alpha {alpha}: {detector}/{group}/{name} is missing in some runs"
                )
            node = by_detector.setdefault(detector, {}).setdefault(
                group, {"mean": {}, "datasets": {}}
            )
            target = node["mean"] if name == "mean" else node["datasets"].setdefault(name, {})
            target[metric] = mean_std(vals)
        arms[f"{alpha:g}"] = {
            "alpha": alpha,
            "seeds": seeds,
            "id_acc": mean_std([r["results"]["id_acc"] for r in group_runs]),
            "metrics": by_detector,
        }
    return arms


def check_same_layout(arms: dict) -> None:
    """Every arm must have the same detectors and OOD sets, or the tables would not line up."""
    layouts = {
        alpha: sorted(
            (detector, group, name)
            for detector, groups in arm["metrics"].items()
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
