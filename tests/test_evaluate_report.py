"""sio report: detectors in the paper's order, and the Average row's spread over seeds."""

from __future__ import annotations

import json

from sio.evaluate.report import report


def metrics(auroc: float) -> dict:
    return {"fpr95": 100 - auroc, "auroc": auroc, "aupr_in": auroc, "aupr_out": auroc}


def write_run(folder, seed, near_auroc: dict):
    per_detector = {
        method: {
            "near": {"datasets": {"n": metrics(value)}, "mean": metrics(value)},
            "far": {"datasets": {"f": metrics(value)}, "mean": metrics(value)},
        }
        for method, value in near_auroc.items()
    }
    folder.mkdir()
    results = {"id_acc": 90.0, "fpr_convention": "id", "metrics": per_detector, "skipped": {}}
    (folder / "results.json").write_text(json.dumps(results, sort_keys=True))
    (folder / "run.json").write_text(json.dumps({"alpha": 1.0, "seed": seed}))
    return folder


def summary_rows(text: str) -> dict:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| detector | near"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_rows_follow_the_paper_and_average_spreads_per_seed_averages(tmp_path):
    # results.json keys are sorted (dice, knn, msp, openmax), the table is in Table 1's order.
    # near AUROC per seed: msp 1, 3; knn 3, 1; openmax 2, 2; dice 6, 6. Per-seed averages over
    # the four: (1 + 3 + 2 + 6) / 4 = 3 and (3 + 1 + 2 + 6) / 4 = 3 -> Average 3.00 ± 0.00
    # (the mean of the four stds, 0.5, would overstate it). Best is dice, 6 ± 0.
    seeds = [
        {"msp": 1.0, "knn": 3.0, "openmax": 2.0, "dice": 6.0},
        {"msp": 3.0, "knn": 1.0, "openmax": 2.0, "dice": 6.0},
    ]
    folders = [write_run(tmp_path / f"s{i}", i, values) for i, values in enumerate(seeds)]
    rows = summary_rows(report(folders))
    assert list(rows) == ["openmax", "msp", "knn", "dice", "Average", "Best"]
    assert rows["msp"][0] == "2.00 ± 1.00"
    assert rows["Average"][0] == "3.00 ± 0.00"
    assert rows["Best"][0] == "6.00 ± 0.00 (dice)"  # the Best row names its detector
    text = report(folders)
    per_set = [
        line.split("|")[1:3] for line in text.splitlines() if ": n |" in line or ": f |" in line
    ]
    # near before far within each detector, although results.json sorts "far" first
    assert [(m.strip(), s.strip()) for m, s in per_set[:2]] == [
        ("openmax", "near: n"),
        ("openmax", "far: f"),
    ]
    assert [m.strip() for m, _ in per_set[::2]] == ["openmax", "msp", "knn", "dice"]
