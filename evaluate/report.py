"""``sio report``: aggregate evaluated runs over seeds, baseline (alpha = 1) against +SIO.

Each run folder holds ``results.json`` and ``run.json`` (alpha, seed, the training recipe).
Runs are grouped by alpha (aggregate.py: mean and population std over every seed once); the
markdown tables are report_tables.py's, the CSV and LaTeX files report_files.py's. Numbers in
report.json are rounded as in every results file (``sio.core.numbers``).
"""

from __future__ import annotations

import json
from pathlib import Path

from sio.core.files import write_text_atomic
from sio.core.lock import hold_folder
from sio.core.numbers import rounded
from sio.evaluate.arms import (  # noqa: F401 - the names callers import from here
    aggregate,
    benchmark_of,
    check_same_benchmark,
    check_same_layout,
    check_same_recipe,
    drop_skipped_detectors,
    load_run,
    mean_std,
    mean_std_cell,
)
from sio.evaluate.report_files import (  # noqa: F401
    OPENOOD_CSV_HEADER,
    report_csv,
    report_latex,
    report_openood_csv,
)
from sio.evaluate.report_tables import (  # noqa: F401
    arm_label,
    dataset_table,
    id_accuracy_line,
    paired_delta,
    summary_table,
)

FORMATS = ("markdown", "openood-csv")


def report(
    run_folders: list[str | Path],
    out: str | Path | None = None,
    fmt: str = "markdown",
    allow_mixed: bool = False,
) -> str:
    """Aggregate run folders; writes report.json, report.md, report.csv (every number, long
    form), report.tex (the AUROC and FPR@95 tables for a paper, booktabs) and openood.csv
    (OpenOOD's result CSV, ``report_openood_csv``) to ``out`` when given (which another job
    writing it refuses: ``FolderBusy``). Runs trained with different recipes are refused, or
    with ``allow_mixed`` reported with the differences marked. Returns the report in ``fmt``:
    the markdown text or openood.csv's text."""
    if fmt not in FORMATS:
        raise ValueError(f"report format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if out is None:
        return _formatted(_report(run_folders, allow_mixed), fmt)
    out = Path(out)
    with hold_folder(out):  # one job writes a folder
        made = _report(run_folders, allow_mixed)
        text, arms = made[:2]
        write_text_atomic(out / "report.json", json.dumps(rounded(arms), indent=2) + "\n")
        write_text_atomic(out / "report.md", text)
        write_text_atomic(out / "report.csv", report_csv(arms))
        write_text_atomic(out / "report.tex", report_latex(arms))
        write_text_atomic(out / "openood.csv", _formatted(made, "openood-csv"))
    return _formatted(made, fmt)


def _formatted(made: tuple[str, dict, str, str], fmt: str) -> str:
    text, arms, benchmark, convention = made
    return text if fmt == "markdown" else report_openood_csv(arms, benchmark, convention)


def _report(run_folders: list[str | Path], allow_mixed: bool) -> tuple[str, dict, str, str]:
    """(the report's text, its figures per arm, the benchmark's name or "", the FPR@95
    convention) of the run folders."""
    if not run_folders:
        raise ValueError("no run folders to report on")
    runs = [load_run(folder) for folder in run_folders]
    check_same_benchmark(runs)
    mixed = check_same_recipe(runs, allow_mixed)
    conventions = {r["results"]["fpr_convention"] for r in runs}
    if len(conventions) > 1:
        raise ValueError(
            f"the runs mix FPR@95 conventions {sorted(conventions)}; re-evaluate "
            "them with one --fpr-convention"
        )
    left_out = drop_skipped_detectors(runs)
    arms = aggregate(runs)
    check_same_layout(arms)
    seeds = sorted({r["seed"] for r in runs})
    benchmark = {benchmark_of(r) for r in runs}.pop()
    convention = conventions.pop()
    arm_sizes = ", ".join(f"{arm_label(a)} n = {len(arm['seeds'])}" for a, arm in arms.items())
    detectors = len(next(iter(arms.values()))["metrics"])
    text = "\n".join(
        [
            "# sio report: baseline vs +SIO" + (" (mixed recipes)" if mixed else ""),
            "",
            *mixed,
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
