"""sio.evaluate.report: aggregation over seeds (every seed once) and the report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sio.core.numbers import rounded
from sio.evaluate.metrics import METRICS
from sio.evaluate.report import aggregate, load_run, report

SEEDS = (0, 1, 2)
# near-mean AUROC of msp per seed: baseline 1, 2, 6 -> mean 3, population std sqrt(14/3)
# (deviations -2, -1, 3: (4 + 1 + 9) / 3). +SIO: 10, 20, 60 -> mean 30, std 10 * sqrt(14/3).
NEAR_AUROC = {1.0: [1.0, 2.0, 6.0], 0.8: [10.0, 20.0, 60.0]}
ID_ACC = {1.0: [90.0, 92.0, 94.0], 0.8: [91.0, 91.0, 94.0]}


def metric_values(base: float) -> dict:
    return {"fpr95": 100 - base, "auroc": base, "aupr_in": base / 2, "aupr_out": base / 4}


def results_for(alpha: float, i: int) -> dict:
    """evaluate_bank's shape: two detectors (ebo's AUROC is msp's + 5), near and far groups."""
    near = NEAR_AUROC[alpha][i]
    per_detector = {}
    for method, offset in (("msp", 0.0), ("ebo", 5.0)):
        near_sets = {"n1": metric_values(near + offset), "n2": metric_values(near + offset)}
        far_sets = {"f1": metric_values(2 * near + offset)}
        per_detector[method] = {
            "near": {"datasets": near_sets, "mean": metric_values(near + offset)},
            "far": {"datasets": far_sets, "mean": metric_values(2 * near + offset)},
        }
    return {"id_acc": ID_ACC[alpha][i], "fpr_convention": "id", "metrics": per_detector}


def write_run(folder, alpha, seed, results):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "run.json").write_text(json.dumps({"alpha": alpha, "seed": seed, "checkpoint": "x"}))
    return folder


@pytest.fixture
def run_folders(tmp_path):
    folders = []
    # written in a shuffled order, so no result may depend on the order of the folders
    for alpha, i in [(0.8, 2), (1.0, 1), (0.8, 0), (1.0, 0), (1.0, 2), (0.8, 1)]:
        name = "baseline" if alpha == 1.0 else "sio"
        folders.append(write_run(tmp_path / f"{name}-{i}", alpha, SEEDS[i], results_for(alpha, i)))
    return folders


def test_mean_and_std_over_all_seeds(run_folders):
    arms = aggregate([load_run(f) for f in run_folders])
    assert list(arms) == ["1", "0.8"]  # baseline first
    base = arms["1"]["metrics"]["msp"]["near"]["mean"]["auroc"]
    assert base["mean"] == pytest.approx(3.0)
    assert base["std"] == pytest.approx(math.sqrt(14 / 3))
    assert base["n"] == 3
    # SIO's reference code averages (m0 + 2 * m1) / 3 = (1 + 4) / 3 = 5/3: not that.
    assert base["mean"] != pytest.approx(5 / 3)
    sio = arms["0.8"]["metrics"]["msp"]["near"]["mean"]["auroc"]
    assert sio["mean"] == pytest.approx(30.0)
    assert sio["std"] == pytest.approx(10 * math.sqrt(14 / 3))
    assert arms["1"]["seeds"] == [0, 1, 2] and arms["0.8"]["seeds"] == [0, 1, 2]
    assert arms["1"]["alpha"] == 1.0 and arms["0.8"]["alpha"] == 0.8
    # id_acc: 90, 92, 94 -> 92 ± sqrt(8/3); 91, 91, 94 -> 92 ± sqrt(2)
    assert arms["1"]["id_acc"]["mean"] == pytest.approx(92.0)
    assert arms["1"]["id_acc"]["std"] == pytest.approx(math.sqrt(8 / 3))
    assert arms["0.8"]["id_acc"]["mean"] == pytest.approx(92.0)
    assert arms["0.8"]["id_acc"]["std"] == pytest.approx(math.sqrt(2))


def test_every_metric_and_dataset_aggregated(run_folders):
    arms = aggregate([load_run(f) for f in run_folders])
    for alpha_key, alpha in (("1", 1.0), ("0.8", 0.8)):
        for method, offset in (("msp", 0.0), ("ebo", 5.0)):
            node = arms[alpha_key]["metrics"][method]
            assert set(node) == {"near", "far"}
            assert set(node["near"]["datasets"]) == {"n1", "n2"}
            assert set(node["far"]["datasets"]) == {"f1"}
            for metric in METRICS:
                near = [metric_values(v + offset)[metric] for v in NEAR_AUROC[alpha]]
                far = [metric_values(2 * v + offset)[metric] for v in NEAR_AUROC[alpha]]
                for stats, values in (
                    (node["near"]["mean"][metric], near),
                    (node["near"]["datasets"]["n2"][metric], near),
                    (node["far"]["datasets"]["f1"][metric], far),
                ):
                    assert stats["mean"] == pytest.approx(np.mean(values))
                    assert stats["std"] == pytest.approx(np.std(values))


def test_duplicated_seed_raises(tmp_path):
    runs = [
        load_run(write_run(tmp_path / f"r{i}", 1.0, seed, results_for(1.0, i)))
        for i, seed in enumerate([0, 1, 1])
    ]
    with pytest.raises(ValueError, match=r"seed listed twice in \[0, 1, 1\]"):
        aggregate(runs)


def test_same_seed_in_two_arms_is_fine(tmp_path):
    runs = [
        load_run(write_run(tmp_path / "a", 1.0, 0, results_for(1.0, 0))),
        load_run(write_run(tmp_path / "b", 0.8, 0, results_for(0.8, 0))),
    ]
    assert list(aggregate(runs)) == ["1", "0.8"]


def test_run_missing_a_dataset_raises(tmp_path):
    partial = results_for(1.0, 1)
    del partial["metrics"]["msp"]["near"]["datasets"]["n2"]
    runs = [
        load_run(write_run(tmp_path / "a", 1.0, 0, results_for(1.0, 0))),
        load_run(write_run(tmp_path / "b", 1.0, 1, partial)),
    ]
    with pytest.raises(ValueError, match="msp/near/n2 is missing"):
        aggregate(runs)


@pytest.mark.parametrize("missing", ["results.json", "run.json"])
def test_missing_file_named(tmp_path, run_folders, missing):
    (run_folders[0] / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing) as err:
        report(run_folders)
    assert str(run_folders[0] / missing) in str(err.value)


def test_no_runs_raises():
    with pytest.raises(ValueError, match="no run folders"):
        report([])


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def summary(lines: list[str], title: str) -> dict[str, list[str]]:
    start = lines.index(title) + 2
    end = lines.index("", start)
    header = cells(lines[start])
    rows = {cells(line)[0]: cells(line)[1:] for line in lines[start + 2 : end]}
    return {"header": header[1:], **rows}


def test_report_text_and_files(tmp_path, run_folders):
    out = tmp_path / "report"
    text = report(run_folders, out)
    lines = text.splitlines()
    assert lines[0] == "# sio report: baseline vs +SIO"
    assert "- runs: 6 (baseline n = 3, +SIO α=0.8 n = 3); seeds [0, 1, 2]" in lines
    # ID accuracy once per arm, not once per detector
    id_line = next(line for line in lines if line.startswith("ID accuracy"))
    assert f"baseline 92.00 ± {math.sqrt(8 / 3):.2f} (n = 3)" in id_line
    auroc = summary(lines, "## AUROC (higher is better)")
    assert auroc["header"] == [
        "near AUROC baseline (n = 3)",
        "near AUROC +SIO α=0.8 (n = 3)",
        "far AUROC baseline (n = 3)",
        "far AUROC +SIO α=0.8 (n = 3)",
        "Δ near AUROC +SIO α=0.8",
        "Δ far AUROC +SIO α=0.8",
    ]
    assert [k for k in auroc if k != "header"] == ["msp", "ebo", "Average", "Best"]
    s = math.sqrt(14 / 3)
    # msp near AUROC: baseline 3 ± s, SIO 30 ± 10 s; far is twice the near values
    expected = [(3, s), (30, 10 * s), (6, 2 * s), (60, 20 * s)]
    assert auroc["msp"][:4] == [f"{m:.2f} ± {sd:.2f}" for m, sd in expected]
    # ebo is msp + 5 with the same spread: Average is msp + 2.5, Best is ebo, named
    assert auroc["Average"][0] == f"{5.5:.2f} ± {s:.2f}"
    assert auroc["Best"][0] == f"{8:.2f} ± {s:.2f} (ebo)"
    assert auroc["Best"][3] == f"{65:.2f} ± {20 * s:.2f} (ebo)"
    # FPR@95 (100 - AUROC here): lower is better, so Best is ebo's lower FPR
    fpr = summary(lines, "## FPR@95 (lower is better)")
    assert fpr["msp"][0] == f"{97:.2f} ± {s:.2f}" and fpr["Best"][0] == f"{92:.2f} ± {s:.2f} (ebo)"
    # the per-dataset table has one row per method and set
    assert "| msp | near: n1 |" in text and "| ebo | far: f1 |" in text
    assert (out / "report.md").read_text() == text
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(rounded(aggregate([load_run(f) for f in run_folders]))))
    assert saved["1"]["metrics"]["msp"]["near"]["mean"]["auroc"]["mean"] == pytest.approx(3.0)


def test_delta_is_paired_by_seed_with_a_t_interval():
    """Δ pairs each seed's +SIO value with the same seed's baseline: msp near AUROC differences
    9, 18, 54 (mean 27); the CI and p follow from Student's t with 2 degrees of freedom."""
    from scipy import stats

    from sio.evaluate.report import paired_delta

    base = {"values": [1.0, 2.0, 6.0]}
    treated = {"values": [10.0, 20.0, 60.0]}
    delta = paired_delta(treated, base, [0, 1, 2], [0, 1, 2])
    diffs = np.array([9.0, 18.0, 54.0])
    sem = diffs.std(ddof=1) / math.sqrt(3)
    assert delta["mean"] == pytest.approx(27.0) and delta["n"] == 3
    assert delta["high"] - 27.0 == pytest.approx(stats.t.ppf(0.975, 2) * sem)
    assert delta["p"] == pytest.approx(2 * stats.t.sf(27.0 / sem, 2))
    # pairing, not pooling: the same values with seeds reordered pair differently
    swapped = paired_delta(treated, {"values": [6.0, 2.0, 1.0]}, [0, 1, 2], [2, 1, 0])
    assert swapped == delta
    # only seeds both arms ran are paired; one pair has no spread and no test
    single = paired_delta({"values": [10.0]}, base, [1], [0, 1, 2])
    assert single == {"mean": 8.0, "n": 1, "low": None, "high": None, "p": None}


def test_single_seed_cells_show_no_fake_spread(tmp_path):
    folders = [
        write_run(tmp_path / "b", 1.0, 0, results_for(1.0, 0)),
        write_run(tmp_path / "s", 0.8, 0, results_for(0.8, 0)),
    ]
    lines = report(folders).splitlines()
    auroc = summary(lines, "## AUROC (higher is better)")
    assert auroc["header"][0] == "near AUROC baseline (n = 1)"
    assert auroc["msp"][:2] == ["1.00", "10.00"] and "±" not in " ".join(auroc["msp"])
    assert auroc["msp"][4] == "+9.00 (n = 1, no test)"


def test_csv_and_latex_exports(tmp_path, run_folders):
    import csv

    out = tmp_path / "report"
    report(run_folders, out)
    rows = list(csv.DictReader((out / "report.csv").open()))
    arms = aggregate([load_run(f) for f in run_folders])
    # every aggregated number: id_acc plus 2 detectors x (near: mean + 2 sets, far: mean + 1)
    # x 4 metrics, per arm
    assert len(rows) == 2 * (1 + 2 * (3 + 2) * 4)
    row = next(
        r
        for r in rows
        if (r["alpha"], r["detector"], r["group"], r["set"], r["metric"])
        == ("0.8", "msp", "near", "n1", "auroc")
    )
    stat = arms["0.8"]["metrics"]["msp"]["near"]["datasets"]["n1"]["auroc"]
    assert float(row["mean"]) == stat["mean"] and float(row["std"]) == stat["std"]
    assert row["values"] == "10.0;20.0;60.0" and row["seeds"] == "0;1;2" and row["n"] == "3"
    tex = (out / "report.tex").read_text()
    assert tex.startswith("% sio report: needs \\usepackage{booktabs}")
    assert tex.count("\\begin{tabular}{lrrrr}") == 2 and tex.count("\\end{tabular}") == 2
    s = math.sqrt(14 / 3)
    assert f"MSP & ${3:.2f} \\pm {s:.2f}$ & ${30:.2f} \\pm {10 * s:.2f}$" in tex


def test_report_without_out_writes_nothing(tmp_path, run_folders):
    before = sorted(p.name for p in tmp_path.iterdir())
    text = report(run_folders)
    assert "baseline" in text and "+SIO α=0.8" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_mixed_fpr_conventions_are_refused(tmp_path):
    folders = []
    for seed, convention in enumerate(["id", "ood"]):
        folder = tmp_path / f"run{seed}"
        folder.mkdir()
        results = {"id_acc": 90.0, "fpr_convention": convention, "metrics": {}}
        (folder / "results.json").write_text(json.dumps(results))
        (folder / "run.json").write_text(json.dumps({"alpha": 1.0, "seed": seed}))
        folders.append(folder)
    with pytest.raises(ValueError, match="conventions"):
        report(folders)


def test_arms_with_different_detectors_are_named(tmp_path):
    folders = [write_run(tmp_path / f"b{i}", 1.0, i, results_for(1.0, i)) for i in range(3)]
    for i in range(3):
        results = results_for(0.8, i)
        del results["metrics"]["ebo"]
        folders.append(write_run(tmp_path / f"s{i}", 0.8, i, results))
    with pytest.raises(ValueError, match=r"alpha=1 and alpha=0\.8 differ.*ebo"):
        report(folders)


def test_one_arm_without_a_baseline_has_no_delta(tmp_path):
    folders = [write_run(tmp_path / f"s{i}", 0.8, i, results_for(0.8, i)) for i in range(3)]
    auroc = summary(report(folders).splitlines(), "## AUROC (higher is better)")
    assert auroc["header"] == ["near AUROC +SIO α=0.8 (n = 3)", "far AUROC +SIO α=0.8 (n = 3)"]
    assert auroc["msp"][0] == f"{30:.2f} ± {10 * math.sqrt(14 / 3):.2f}"
