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
from sio.core.lock import hold_folder
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


def drop_skipped_detectors(runs: list[dict]) -> list[str]:
    """Leave out of every run a detector that some run skipped (results.json's ``skipped``: it
    could not be fitted, or scored NaN or inf there) and so cannot be averaged; one line per
    detector left out, naming a run that skipped it and why. A detector missing from a run
    without being skipped there stays (and the layout check names it)."""
    notes, dropped = [], set()
    for run in runs:
        for method, reason in run["results"].get("skipped", {}).items():
            scored = any(method in other["results"]["methods"] for other in runs)
            if scored and method not in dropped:
                dropped.add(method)
                notes.append(f"- left out {method}: skipped in {run['folder']} ({reason})")
    for run in runs:
        methods = run["results"]["methods"]
        run["results"]["methods"] = {m: v for m, v in methods.items() if m not in dropped}
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


def _paper_order(methods) -> list[str]:
    """SIO's Table 1 order (openmax, msp, tempscale, ...), then any other detector by name."""
    rank = {name: i for i, name in enumerate(ALL_DETECTORS)}
    return sorted(methods, key=lambda m: (rank.get(m, len(rank)), m))


def aggregate(runs: list[dict]) -> dict:
    """{alpha: {"seeds": [...], "id_acc": {mean, std, n}, "methods": {m: {group: {"mean": {metric:
    {mean, std, n}}, "datasets": {name: {metric: {...}}}}}}}}, keyed by alpha as text."""
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
    """mean ± std; a single run has no spread, so it shows its value alone (n is in the
    column header)."""
    if stat["n"] == 1:
        return f"{stat['mean']:.2f}"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


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


def _delta_cell(delta: dict) -> str:
    if delta["p"] is None:
        return f"{delta['mean']:+.2f} (n = {delta['n']}, no test)"
    return f"{delta['mean']:+.2f} [{delta['low']:+.2f}, {delta['high']:+.2f}] p = {delta['p']:.2g}"


def _baseline_alpha(arms: dict) -> str | None:
    return next((a for a in arms if float(a) == 1.0), None)


def _summary_rows(arms: dict, metric: str) -> tuple[list[str], dict[str, list[dict]]]:
    """Column labels and, per detector, the per-arm stats of near then far ``metric``."""
    labels = [f"{_arm_label(a)} (n = {len(arms[a]['seeds'])})" for a in arms]
    rows = {}
    for method in _paper_order(next(iter(arms.values()))["methods"]):
        rows[method] = [
            arms[a]["methods"][method][group]["mean"][metric]
            for group in ("near", "far")
            for a in arms
        ]
    return labels, rows


def summary_table(arms: dict, metric: str = "auroc") -> str:
    """The paper's Table 1 layout: per detector, near- and far-OOD ``metric`` (auroc or fpr95)
    per arm, then Δ (each +SIO arm − the baseline, paired by seed, with its 95% CI and the
    paired t-test's p). Average: mean ± std over seeds of each seed's average over detectors;
    Best: the detector with the best mean (highest AUROC, lowest FPR@95), named."""
    name = {"auroc": "AUROC", "fpr95": "FPR@95"}[metric]
    labels, rows = _summary_rows(arms, metric)
    base = _baseline_alpha(arms)
    others = [a for a in arms if a != base] if base is not None else []
    columns = [f"{group} {name} {label}" for group in ("near", "far") for label in labels]
    columns += [f"Δ {group} {name} {_arm_label(a)}" for group in ("near", "far") for a in others]
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
                cells.append(_delta_cell(delta))
        return cells

    for method, row in rows.items():
        lines.append(f"| {method} | " + " | ".join([*map(_cell, row), *deltas(row)]) + " |")
    columns_stats = list(zip(*rows.values(), strict=True))
    # per seed, the average over detectors; then mean and std of those averages over seeds
    average = [mean_std(np.mean([s["values"] for s in col], axis=0)) for col in columns_stats]
    better = max if metric == "auroc" else min
    best = []
    for col in columns_stats:
        method, stat = better(zip(rows, col, strict=True), key=lambda item: item[1]["mean"])
        best.append(f"{_cell(stat)} ({method})")
    lines.append("| Average | " + " | ".join([*map(_cell, average), *deltas(average)]) + " |")
    lines.append("| Best | " + " | ".join(best) + " |" + " — |" * (len(columns) - len(best)))
    return "\n".join(lines)


def id_accuracy_line(arms: dict) -> str:
    """ID accuracy once per arm (it does not depend on the detector)."""
    parts = [
        f"{_arm_label(a)} {_cell(arm['id_acc'])} (n = {len(arm['seeds'])})"
        for a, arm in arms.items()
    ]
    return "ID accuracy (%): " + "; ".join(parts) + "."


CSV_COLUMNS = ("arm", "alpha", "n", "detector", "group", "set", "metric", "mean", "std")


def report_csv(arms: dict) -> str:
    """Every aggregated number in long form: arm, alpha, n, detector, group, set, metric, mean,
    std, then the per-seed values (';'-separated, in seed order) and those seeds."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, "values", "seeds"])
    for alpha, arm in arms.items():
        seeds = ";".join(str(s) for s in arm["seeds"])
        head = [_arm_label(alpha), alpha, len(arm["seeds"])]

        def row(where: list, metric: str, stat: dict, head=head, seeds=seeds) -> list:
            values = ";".join(map(str, stat["values"]))
            return [*head, *where, metric, stat["mean"], stat["std"], values, seeds]

        writer.writerow(row(["", "id", ""], "id_acc", arm["id_acc"]))
        for method in _paper_order(arm["methods"]):
            for group, entry in arm["methods"][method].items():
                for name, metrics in [("mean", entry["mean"]), *entry["datasets"].items()]:
                    for metric, stat in metrics.items():
                        writer.writerow(row([method, group, name], metric, stat))
    return buffer.getvalue()


OPENOOD_COLUMNS = ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC")
OPENOOD_CSV_HEADER = (
    *("benchmark", "training", "alpha", "runs", "postprocessor", "dataset"),
    *OPENOOD_COLUMNS,
    *(f"{column} std" for column in OPENOOD_COLUMNS),
    "fpr_positive",
)


def report_openood_csv(arms: dict, benchmark: str, convention: str) -> str:
    """OpenOOD v1.5's result CSV, the file its leaderboard asks for (issue template "Adding
    leaderboard entry": it holds Near/Far-OOD AUROC and ID Accuracy), for every arm and detector.

    ``scripts/eval_ood.py --save-csv`` writes one CSV per postprocessor: one row per OOD set in
    the benchmark's order, then ``nearood`` (the mean over the near sets) after the near sets
    and ``farood`` after the far sets; columns FPR@95, AUROC, AUPR_IN, AUPR_OUT, ACC (percent;
    ACC is the ID test accuracy, the same in every row; on an ``openood-*-fsood`` benchmark
    the ID test holds the covariate-shifted ID sets too, so it is OpenOOD's FSOOD ``csid_acc``),
    each cell "mean ± std" over training runs (``np.std``). Here the rows of every
    postprocessor follow each other, led by ``benchmark`` (benchmark.json's name),
    ``training`` (the arm: ``baseline`` or ``+SIO α=A``), ``alpha``, ``runs`` (seeds averaged),
    ``postprocessor`` (the detector) and ``dataset`` (OpenOOD's index: set names in
    results.json's order, ``nearood``, ``farood``); the five columns hold the unrounded mean
    and five ``... std`` columns the population std, so the numbers parse back exactly.
    Leaderboard columns: Near-OOD AUROC = AUROC of ``nearood``, Far-OOD AUROC = AUROC of
    ``farood``, ID Accuracy = ACC. ``fpr_positive`` is the FPR@95 convention of the runs
    (``ood`` is OpenOOD's since Aug 2023 and its leaderboard's; ``id`` sio's default)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(OPENOOD_CSV_HEADER)
    for alpha, arm in arms.items():
        head = [benchmark, _arm_label(alpha), alpha, len(arm["seeds"])]
        for method in _paper_order(arm["methods"]):
            for name, metrics in _openood_rows(arm["methods"][method]):
                stats = [metrics[m] for m in ("fpr95", "auroc", "aupr_in", "aupr_out")]
                stats.append(arm["id_acc"])
                means, stds = [s["mean"] for s in stats], [s["std"] for s in stats]
                writer.writerow([*head, method, name, *means, *stds, convention])
    return buffer.getvalue()


def _openood_rows(groups: dict) -> list[tuple[str, dict]]:
    """(dataset, metrics) in OpenOOD's index order: near sets, nearood, far sets, farood."""
    rows = []
    for group in ("near", "far"):
        if group in groups:
            entry = groups[group]
            rows += [*entry["datasets"].items(), (f"{group}ood", entry["mean"])]
    return rows


def report_latex(arms: dict) -> str:
    """The AUROC summary (per detector, near/far per arm, mean ± std) as a LaTeX tabular."""
    labels, rows = _summary_rows(arms, "auroc")

    def tex(stat: dict) -> str:
        if stat["n"] == 1:
            return f"{stat['mean']:.2f}"
        return f"${stat['mean']:.2f} \\pm {stat['std']:.2f}$"

    def escape(text: str) -> str:
        return text.replace("_", r"\_").replace("α", r"$\alpha$").replace("+", "+")

    header = " & ".join(escape(f"{g} {label}") for g in ("near", "far") for label in labels)
    lines = [
        r"\begin{tabular}{l" + "r" * (2 * len(labels)) + "}",
        r"\toprule",
        f"detector & {header} \\\\",
        r"\midrule",
    ]
    for method, row in rows.items():
        lines.append(escape(method) + " & " + " & ".join(tex(s) for s in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
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


FORMATS = ("markdown", "openood-csv")


def report(
    run_folders: list[str | Path], out: str | Path | None = None, fmt: str = "markdown"
) -> str:
    """Aggregate run folders; writes report.json, report.md, report.csv (every number, long
    form), report.tex (the AUROC summary as a LaTeX tabular) and openood.csv (OpenOOD's result
    CSV, ``report_openood_csv``) to ``out`` when given (which another job writing it refuses:
    ``FolderBusy``). Returns the report in ``fmt``: the markdown text or openood.csv's text."""
    if fmt not in FORMATS:
        raise ValueError(f"report format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if out is None:
        return _formatted(_report(run_folders), fmt)
    out = Path(out)
    with hold_folder(out):  # one job writes a folder
        made = _report(run_folders)
        text, arms = made[:2]
        write_text_atomic(out / "report.json", json.dumps(arms, indent=2) + "\n")
        write_text_atomic(out / "report.md", text)
        write_text_atomic(out / "report.csv", report_csv(arms))
        write_text_atomic(out / "report.tex", report_latex(arms))
        write_text_atomic(out / "openood.csv", _formatted(made, "openood-csv"))
    return _formatted(made, fmt)


def _formatted(made: tuple[str, dict, str, str], fmt: str) -> str:
    text, arms, benchmark, convention = made
    return text if fmt == "markdown" else report_openood_csv(arms, benchmark, convention)


def _report(run_folders: list[str | Path]) -> tuple[str, dict, str, str]:
    """(the report's text, its figures per arm, the benchmark's name or "", the FPR@95
    convention) of the run folders."""
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
    left_out = drop_skipped_detectors(runs)
    arms = aggregate(runs)
    _check_same_layout(arms)
    seeds = sorted({r["seed"] for r in runs})
    benchmark = {_benchmark_of(r) for r in runs}.pop()
    convention = conventions.pop()
    arm_sizes = ", ".join(f"{_arm_label(a)} n = {len(arm['seeds'])}" for a, arm in arms.items())
    detectors = len(next(iter(arms.values()))["methods"])
    text = "\n".join(
        [
            "# sio report: baseline vs +SIO",
            "",
            f"- runs: {len(runs)} ({arm_sizes}); seeds {seeds}",
            f"- benchmark: {benchmark[0] if benchmark else 'not recorded'}; {detectors} detectors",
            "- values in percent: mean ± population std over seeds (a single run shows its "
            f"value); FPR@95 with {convention} as positive; Δ = +SIO − baseline paired by seed, "
            "with its 95% CI (Student's t) and the paired t-test's p",
            *left_out,
            "",
            id_accuracy_line(arms),
            "",
            "## AUROC (higher is better)",
            "",
            summary_table(arms, "auroc"),
            "",
            "## FPR@95 (lower is better)",
            "",
            summary_table(arms, "fpr95"),
            "",
            "## Per OOD set",
            "",
            dataset_table(arms),
            "",
        ]
    )
    return text, arms, benchmark[0] if benchmark else "", convention
