"""Sweeps: expansion into study points, shared stages, and the report with its plots."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from sio.cli import get_cli
from sio.core.config import ConfigError, parse_dataclass
from sio.pipeline.config import PipelineConfig, load_pipeline
from sio.pipeline.run import run_pipeline
from sio.pipeline.study import Point, expand_study

from .test_pipeline import TINY


def config(**sweep) -> PipelineConfig:
    data = {"sio_alpha": 0.8, "generate": {"num_images": 6000, "shard_size": 1000}}
    return parse_dataclass(PipelineConfig, {**data, "sweep": sweep}, "")


GENERATORS = [{"label": "b", "train": {"steps": 5}}, {"label": "c", "sampler": {"steps": 2}}]


@pytest.mark.parametrize("grid", [False, True])
@pytest.mark.parametrize("alphas", [(), (0.5,), (0.5, 0.8, 1.0, 0.9)])
@pytest.mark.parametrize("counts", [(), (1000,), (3000, 12000)])
@pytest.mark.parametrize("generators", [0, 1, 2])
def test_expansion_invariants(grid, alphas, counts, generators):
    cfg = config(
        grid=grid,
        alphas=list(alphas),
        num_synthetic=list(counts),
        generators=GENERATORS[:generators],
    )
    study = expand_study(cfg)
    gens = ["ddpm", *"bc"[:generators]]
    all_counts = list(dict.fromkeys((6000, *counts)))
    all_alphas = [a for a in dict.fromkeys((0.8, *alphas)) if a < 1]
    assert study.points[0] == Point("ddpm", 6000, 0.8)  # the base point comes first
    assert len(set(study.points)) == len(study.points)
    assert all(p.alpha < 1 for p in study.points)  # alpha 1 is the baseline, never a point
    if grid:
        expected = set(itertools.product(gens, all_counts, all_alphas))
    else:  # every point differs from the base point in at most one axis
        expected = {("ddpm", 6000, 0.8)}
        expected |= {(g, 6000, 0.8) for g in gens}
        expected |= {("ddpm", n, 0.8) for n in all_counts}
        expected |= {("ddpm", 6000, a) for a in all_alphas}
    assert {(p.generator, p.num_synthetic, p.alpha) for p in study.points} == expected
    assert study.generators == gens
    for g in gens:  # each generator is sampled once, at the largest count a point asks of it
        assert study.counts(g) == sorted(
            {p.num_synthetic for p in study.points if p.generator == g}
        )


def test_a_pipeline_without_sweep_is_the_baseline_and_one_point():
    study = expand_study(PipelineConfig())
    assert study.points == (Point("ddpm", 6000, 0.8),)
    assert expand_study(parse_dataclass(PipelineConfig, {"sio_alpha": 1.0}, "")).points == ()


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"num_synthetic": [1500]}, r"sweep\.num_synthetic\[0\]: 1500 .* multiple of"),
        ({"alphas": [0.5, 1.2]}, r"sweep\.alphas\[1\]: must be in \[0, 1\]"),
        ({"generators": [{"label": "ddpm"}]}, r"sweep\.generators\[0\]\.label: 'ddpm' names two"),
        ({"generators": [{"label": "a/b"}]}, r"sweep\.generators\[0\]\.label: 'a/b': a folder"),
        ({"generators": [{"lable": "x"}]}, r"sweep\.generators\[0\]\.lable: unknown key"),
        ({"counts": [1]}, r"sweep\.counts: unknown key"),
        ({"generators": [{"label": ".."}]}, r"sweep\.generators\[0\]\.label: '\.\.': a folder"),
        ({"alphas": [0.5, 0.5000001]}, r"sweep\.alphas\[1\]: .* share the run folder name"),
        ({"alphas": [0.5], "sio_alpha": 1.0}, r"sio_alpha: the sweep varies around the base"),
    ],
)
def test_sweep_errors_name_the_field(tmp_path, sweep, message):
    path = tmp_path / "study.yaml"
    top = {k: v for k, v in sweep.items() if k == "sio_alpha"}  # a top-level key
    sweep = {k: v for k, v in sweep.items() if k != "sio_alpha"}
    path.write_text(yaml.safe_dump({**top, "sweep": sweep}))
    with pytest.raises(ConfigError, match=f"study.yaml: {message}"):
        load_pipeline(path)


STUDY = {
    **TINY,
    "seeds": [0, 1],
    "generator": {**TINY["generator"], "label": "g1"},
    "sweep": {
        "alphas": [0.5],
        "num_synthetic": [32, 64],
        # the same training as g1 (shared), sampled in one step: a different generator
        "generators": [{**TINY["generator"], "label": "g2", "sampler": {"steps": 1}}],
    },
}


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("study")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(tmp_path / "out")}))
    text = run_pipeline(load_pipeline(path), device="cpu")
    return tmp_path / "out", path, text


def test_study_shares_stages(study_run):
    out, _, _ = study_run
    # g1 and g2 have the same training definition: one generator training, two generated sets
    assert sorted(p.name for p in (out / "generator").iterdir()) == ["g1"]
    assert sorted(p.name for p in (out / "synthetic").iterdir()) == ["g1", "g1-n32", "g1-n64", "g2"]
    full = json.loads((out / "synthetic" / "g1" / "manifest.json").read_text())
    assert full["num_samples"] == 96  # sampled once, at the largest count
    subset = json.loads((out / "synthetic" / "g1-n32" / "manifest.json").read_text())
    assert subset["shards"] == full["shards"][:1]
    assert "fd_classifier" not in full["provenance"]["quality"]  # a published manifest stays
    assert json.loads((out / "quality" / "g1" / "fid.json").read_text())["value"] > 0
    trained = sorted(p.name for p in (out / "train").iterdir())
    points = ["alpha1", "g1-n96-alpha0.75", "g2-n96-alpha0.75", "g1-n32-alpha0.75"]
    points += ["g1-n64-alpha0.75", "g1-n96-alpha0.5"]
    assert trained == sorted(f"{p}-seed{s}" for p in points for s in (0, 1))


def test_study_report_plots_and_numbers(study_run):
    out, _, text = study_run
    report = (out / "report.md").read_text()
    for name in (
        "fid_vs_auroc",
        "auroc_vs_alpha",
        "auroc_vs_num_synthetic",
        "near_auroc_vs_id_acc",
        "far_delta_vs_worst_class",  # g1 and g2: each audited, class by class
    ):
        assert f"]({name}.png)" in report
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and image.width > 300
    data = json.loads((out / "study_results.json").read_text())
    point = next(p for p in data["points"] if p["generator"] == "g1" and p["alpha"] == 0.5)
    per_seed = []
    for seed in (0, 1):
        results = json.loads(
            (out / "evaluate" / f"g1-n96-alpha0.5-seed{seed}" / "results.json").read_text()
        )
        per_seed.append(np.mean([m["near"]["mean"]["auroc"] for m in results["metrics"].values()]))
    assert point["near"]["mean"] == pytest.approx(np.mean(per_seed))
    assert point["near"]["std"] == pytest.approx(np.std(per_seed))
    assert f"{point['near']['mean']:.2f} ± {point['near']['std']:.2f}" in text
    fd = json.loads((out / "quality" / "g2" / "fid.json").read_text())
    assert f"{fd['value']:.3f} (fd_classifier)" in report
    assert "Fréchet distance of classifier features (not FID)" not in report  # only in the plot


def test_report_command_rebuilds_the_study_report(study_run):
    out, path, _ = study_run
    (out / "auroc_vs_alpha.png").unlink()
    result = CliRunner().invoke(get_cli(), ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "auroc_vs_alpha.png").is_file()
    assert "AUROC vs α" in result.output


def test_rerunning_the_study_skips_every_stage(study_run):
    out, path, _ = study_run
    run_pipeline(load_pipeline(path), device="cpu")
    timings = json.loads((out / "timings.json").read_text())
    assert all(seconds == 0.0 for stage, seconds in timings.items() if stage != "total")


def test_a_renamed_generator_reuses_its_training(study_run):
    from sio.pipeline.run import PipelineRun

    out, path, _ = study_run
    data = yaml.safe_load(path.read_text())
    data["generator"]["label"] = "renamed"
    config = parse_dataclass(PipelineConfig, data, "")
    run = PipelineRun(config, out, "cpu", force=False)
    run.shard()
    assert run.generator_weights(config.generator) == out / "generator" / "g1" / "weights"
    assert not (out / "generator" / "renamed").exists()


def test_a_larger_count_extends_the_generated_set(study_run, tmp_path):
    """Adding a larger synthetic count generates only the new shards: the earlier largest set
    becomes a prefix subset with the same shards, so its classifiers are not trained again."""
    import shutil

    out, path, _ = study_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    data = yaml.safe_load(path.read_text())
    data["output_dir"] = str(copy)
    data["sweep"] = {**data["sweep"], "num_synthetic": [32, 64, 128]}
    run_pipeline(parse_dataclass(PipelineConfig, data, ""), device="cpu")
    timings = json.loads((copy / "timings.json").read_text())
    assert timings["generate g1"] > 0 and timings["train g1-n96-alpha0.75-seed0"] == 0.0
    assert timings["train g1-n128-alpha0.75-seed0"] > 0
    full = json.loads((copy / "synthetic" / "g1" / "manifest.json").read_text())
    before = json.loads((out / "synthetic" / "g1" / "manifest.json").read_text())
    assert full["num_samples"] == 128 and full["shards"][:3] == before["shards"]
    cut = json.loads((copy / "synthetic" / "g1-n96" / "manifest.json").read_text())
    assert cut["shards"] == before["shards"]


def test_study_record_round_trips_and_names_a_bad_file(tmp_path):
    from sio.pipeline.study import GeneratorFigures, StudyRecord, StudyRun

    record = StudyRecord(
        base=Point("ddpm", 6000, 0.8),
        generators={"ddpm": GeneratorFigures("synthetic/ddpm", 6000, 0.93, {"metric": "fid"})},
        runs=(
            StudyRun("alpha1-seed0", None, 0, 1.0, 0, "evaluate/alpha1-seed0"),
            StudyRun("ddpm-n6000-alpha0.8-seed0", "ddpm", 6000, 0.8, 0, "evaluate/x"),
            StudyRun("ddpm-n3000-alpha0.8-seed0", "ddpm", 3000, 0.8, 0, "evaluate/y"),
        ),
    )
    record.write(tmp_path / "study.json")
    again = StudyRecord.read(tmp_path / "study.json")
    assert again == record
    assert [r.name for r in again.base_runs()] == [
        "alpha1-seed0",
        "ddpm-n6000-alpha0.8-seed0",
    ]
    data = json.loads((tmp_path / "study.json").read_text())
    del data["runs"][1]["seed"]
    (tmp_path / "study.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"study\.json: not a study record .*seed"):
        StudyRecord.read(tmp_path / "study.json")


def test_error_bars_stop_at_100_percent():
    from sio.pipeline.study_report import _capped

    assert _capped([99.5, 80.0], [2.0, 3.0]) == [[2.0, 3.0], [0.5, 3.0]]


@pytest.mark.parametrize(("agreement", "warned"), [(0.167, True), (0.949, True), (0.95, False)])
def test_a_useless_generator_is_flagged_loudly(agreement, warned):
    from sio.pipeline.run import generator_warning
    from sio.pipeline.study import GeneratorFigures, StudyRecord
    from sio.pipeline.study_report import generators_section

    figures = GeneratorFigures(
        "synthetic/ddpm", 96, agreement, {"metric": "fd_classifier", "value": 3.5}
    )
    warning = generator_warning("ddpm", figures, 6)
    assert (warning is not None) == warned
    record = StudyRecord(Point("ddpm", 96, 0.8), {"ddpm": figures}, ())
    section = generators_section(record, 6)
    assert (
        f"| ddpm | synthetic/ddpm | 96 | 3.500 (fd_classifier) | {100 * agreement:.1f}% |"
        in section
    )
    if warned:
        assert "chance 16.7%" in warning and f"**{warning}**" in section


def test_the_audit_reaches_study_json_and_the_report(study_run):
    out, _, _ = study_run
    audit = json.loads((out / "quality" / "g1" / "audit" / "audit.json").read_text())
    figures = json.loads((out / "study.json").read_text())["generators"]["g1"]
    assert figures["label_agreement_per_class"] == audit["label_agreement_per_class"]
    assert figures["fd_classifier_per_class"] == audit["fd_classifier_per_class"]
    worst = min(audit["label_agreement_per_class"].items(), key=lambda item: item[1])
    report = (out / "report.md").read_text()
    assert "### Per-class audit: g1" in report
    assert f"| {worst[0]} | {100 * worst[1]:.1f}% |" in report
    points = json.loads((out / "study_results.json").read_text())["points"]
    base = next(p for p in points if p["generator"] == "g1" and p["alpha"] == 0.75)
    assert base["worst_class"][0] == worst[0]
    assert base["worst_class"][1] == pytest.approx(worst[1], abs=1e-4)


def test_one_bad_class_is_flagged_in_the_report_with_the_run_thresholds():
    from sio.generate.config import AuditConfig
    from sio.pipeline.study import GeneratorFigures, StudyRecord
    from sio.pipeline.study_report import generators_section

    figures = GeneratorFigures(
        "synthetic/ddpm",
        96,
        0.97,
        {"metric": "fd_classifier", "value": 3.5},
        label_agreement_per_class={"0": 1.0, "1": 0.7, "2": 0.95},
        confidence_per_class={"0": 0.99, "1": 0.6, "2": 0.9},
        fd_classifier_per_class={"0": 0.1, "1": 5.0, "2": None},
    )
    record = StudyRecord(Point("ddpm", 96, 0.8), {"ddpm": figures}, ())
    section = generators_section(record, 3)
    assert "| 3.500 (fd_classifier) | 97.0% | '1' 70.0% |" in section
    assert "**WARNING: generator ddpm: SIO is likely to hurt far-OOD: class '1' agrees 70.0%" in (
        section
    )
    rows = [line for line in section.splitlines() if line.startswith("| 1 |")]
    assert rows == ["| 1 | 70.0% | 0.600 | 5.000 |"]
    assert "| 2 | 95.0% | 0.900 | — |" in section  # worst first, a missing distance as —
    assert section.index("| 1 | 70.0%") < section.index("| 2 | 95.0%") < section.index("| 0 |")
    relaxed = generators_section(record, 3, AuditConfig(min_class_agreement=0.5))
    assert "WARNING" not in relaxed
