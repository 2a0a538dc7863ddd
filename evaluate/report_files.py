"""The report's files besides report.md: report.csv (every number, long form), OpenOOD's
result CSV and report.tex (the paper's AUROC and FPR@95 tables)."""

from __future__ import annotations

from sio.evaluate.arms import mean_std_cell as cell
from sio.evaluate.arms import paper_order
from sio.evaluate.names import display_name
from sio.evaluate.report_tables import arm_label, average_and_best, summary_rows

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
        head = [arm_label(alpha), alpha, len(arm["seeds"])]

        def row(where: list, metric: str, stat: dict, head=head, seeds=seeds) -> list:
            values = ";".join(map(str, stat["values"]))
            return [*head, *where, metric, stat["mean"], stat["std"], values, seeds]

        writer.writerow(row(["", "id", ""], "id_acc", arm["id_acc"]))
        for detector in paper_order(arm["metrics"]):
            for group, entry in arm["metrics"][detector].items():
                for name, metrics in [("mean", entry["mean"]), *entry["datasets"].items()]:
                    for metric, stat in metrics.items():
                        writer.writerow(row([detector, group, name], metric, stat))
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
        head = [benchmark, arm_label(alpha), alpha, len(arm["seeds"])]
        for detector in paper_order(arm["metrics"]):
            for name, metrics in _openood_rows(arm["metrics"][detector]):
                stats = [metrics[m] for m in ("fpr95", "auroc", "aupr_in", "aupr_out")]
                stats.append(arm["id_acc"])
                means, stds = [s["mean"] for s in stats], [s["std"] for s in stats]
                writer.writerow([*head, detector, name, *means, *stds, convention])
    return buffer.getvalue()


def _openood_rows(groups: dict) -> list[tuple[str, dict]]:
    """(dataset, metrics) in OpenOOD's index order: near sets, nearood, far sets, farood."""
    rows = []
    for group in ("near", "far"):
        if group in groups:
            entry = groups[group]
            rows += [*entry["datasets"].items(), (f"{group}ood", entry["mean"])]
    return rows


LATEX_METRICS = {"auroc": "AUROC (\\%, higher is better)", "fpr95": "FPR@95 (\\%, lower is better)"}


def report_latex(arms: dict) -> str:
    """The paper's tables as LaTeX (booktabs): AUROC, then FPR@95; per detector (display
    names: MSP, ViM, ...) near- and far-OOD mean ± std per arm, the best detector of each
    column in bold, then the Average and Best rows (as ``summary_table``)."""
    tables = [
        "% sio report: needs \\usepackage{booktabs} (\\toprule, \\midrule, \\bottomrule)",
        "% values in percent: mean \\pm population std over seeds (one run: its value);",
        "% bold: the best detector of each column; Average: over detectors, per seed",
    ]
    for metric in LATEX_METRICS:
        tables += ["", latex_table(arms, metric)]
    return "\n".join(tables) + "\n"


def latex_table(arms: dict, metric: str) -> str:
    """One metric's table (``report_latex``), with its caption as a comment."""
    labels, rows = summary_rows(arms, metric)
    average, best = average_and_best(rows, metric)
    winners = [detector for detector, _ in best]
    header = " & ".join(_tex_text(f"{g} {label}") for g in ("near", "far") for label in labels)
    lines = [
        f"% {LATEX_METRICS[metric]}",
        r"\begin{tabular}{l" + "r" * len(winners) + "}",
        r"\toprule",
        f"Detector & {header} \\\\",
        r"\midrule",
    ]
    for detector, row in rows.items():
        cells = [_tex_cell(s, bold=detector == w) for s, w in zip(row, winners, strict=True)]
        lines.append(f"{_tex_text(display_name(detector))} & " + " & ".join(cells) + r" \\")
    best_cells = [f"{_tex_cell(stat)} ({_tex_text(display_name(m))})" for m, stat in best]
    lines += [
        r"\midrule",
        "Average & " + " & ".join(_tex_cell(s) for s in average) + r" \\",
        "Best & " + " & ".join(best_cells) + r" \\",
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines)


def _tex_cell(stat: dict, bold: bool = False) -> str:
    """``$3.00 \\pm 0.12$`` (the one cell, ``cell``, in math), bold for a column's best."""
    text = cell(stat).replace("±", r"\pm")
    return f"$\\mathbf{{{text}}}$" if bold else f"${text}$"


def _tex_text(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("α", r"$\alpha$")
