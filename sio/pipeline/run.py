"""``sio run``: every stage from one ``pipeline.yaml``, baseline (alpha = 1) against +SIO.

Order: shard the benchmark; train the baseline classifiers (one per seed); per generator of the
study (study.py): train it on the real ID training set (built-in DDPMs; once per distinct
training definition), generate its largest synthetic count once (label agreement judged by the
first baseline classifier), measure its Fréchet distance to the real set, and cut its smaller
counts as prefix subsets; train the +SIO classifiers of every study point and seed; evaluate
every classifier; report. Stages meet only in folders under ``output_dir``; each is skipped
when it is complete for the same config and inputs (see sio/core/stages.py); runner.py runs
each one.
"""

from __future__ import annotations

import time
from pathlib import Path

from sio.core.config import to_dict
from sio.core.environment import default_device
from sio.core.files import write_json_atomic
from sio.core.lock import hold_folder
from sio.generate import agreement_warning, warning_banner
from sio.pipeline.config import PipelineConfig
from sio.pipeline.runner import PipelineRun, baseline_name
from sio.pipeline.study import (
    STUDY_FILE,
    GeneratorFigures,
    Point,
    StudyRecord,
    StudyRun,
    expand_study,
)
from sio.shardset import MANIFEST, read_manifest

__all__ = ["PipelineRun", "run_pipeline"]


def run_pipeline(
    config: PipelineConfig,
    *,
    force: bool = False,
    device: str | None = None,
    dry_run: bool = False,
) -> str:
    """Every stage of ``config`` (each skipped when done with the same definition), then the
    report. ``pipeline.resolved.json`` is written once every stage has been accepted (done
    before with the same definition, or run now), so a refused run leaves the record of the
    config that made the folder as it was. Another job writing ``output_dir`` is refused
    (``FolderBusy``). With ``dry_run`` nothing is run or written: the plan of stages (what
    would run, what is skipped, and why) is returned."""
    out = Path(config.output_dir)
    if dry_run:
        return _run_stages(config, out, force, device or default_device(), dry=True)
    with hold_folder(out):  # one sio run writes a folder; each stage locks its own sub-folder
        return _run_stages(config, out, force, device or default_device())


def _run_stages(config: PipelineConfig, out: Path, force: bool, device: str, dry=False) -> str:
    from sio.pipeline.study_report import study_report

    start = time.perf_counter()
    if not dry:
        print(f"sio run -> {out} (device {device})", flush=True)
    run = PipelineRun(config, out, device, force, dry)
    run.shard()
    study = expand_study(config)
    planned = [(baseline_name(seed), None, 0, 1.0, seed) for seed in config.seeds]
    checkpoints = {name: run.train(name, 1.0, seed, None) for name, *_, seed in planned}
    judge = checkpoints[baseline_name(config.seeds[0])]
    synthetic, generators = _synthetic_sets(run, study, judge)
    for point in study.points:
        for seed in config.seeds:
            name = f"{point.name}-seed{seed}"
            planned.append((name, point.generator, point.num_synthetic, point.alpha, seed))
            checkpoints[name] = run.train(
                name, point.alpha, seed, synthetic[(point.generator, point.num_synthetic)]
            )
    runs = []
    for name, generator, count, alpha, seed in planned:
        folder = run.evaluate(name, checkpoints[name])
        runs.append(StudyRun(name, generator, count, alpha, seed, str(folder.relative_to(out))))
    if dry:
        return plan_text(out, run.plan) + "\n" + run.estimate.text()
    base = Point(config.generator.key, config.generate.num_images, config.sio_alpha)
    StudyRecord(base=base, generators=generators, runs=tuple(runs)).write(out / STUDY_FILE)
    write_json_atomic(out / "pipeline.resolved.json", to_dict(config))
    table = study_report(out)
    run.timings["total"] = time.perf_counter() - start
    write_json_atomic(out / "timings.json", run.timings)
    return _summary(generators, table, run.timings)


def plan_text(out: Path, plan: list[tuple[str, str, str]]) -> str:
    """``sio run --dry-run``'s answer: every stage, whether it runs and why, the trainings."""
    width = max(len(label) for label, _, _ in plan)
    lines = [f"sio run --dry-run: the plan for {out} (nothing is run or written)", ""]
    lines += [f"  {action:8} {label:{width}}  {why}" for label, action, why in plan]
    counts = {a: sum(1 for _, action, _ in plan if action == a) for a in ("run", "skip", "refused")}
    trainings = [(label, a) for label, a, _ in plan if label.startswith("train ")]
    generators = [a for label, a in trainings if label.startswith("train generator ")]
    classifiers = [a for label, a in trainings if not label.startswith("train generator ")]
    lines += [
        "",
        f"{len(plan)} stages: {counts['run']} to run, {counts['skip']} skipped, "
        f"{counts['refused']} refused",
        f"trainings: {len(classifiers)} classifiers ({classifiers.count('run')} to run), "
        f"{len(generators)} generators ({generators.count('run')} to run)",
    ]
    if counts["refused"]:
        lines.append("a run stops at the first refused stage: --force replaces it")
    return "\n".join(lines)


def _summary(generators: dict[str, GeneratorFigures], table: str, timings: dict) -> str:
    """What ``sio run`` prints: each synthetic set's figures, the report, the stage times."""
    lines = [""]
    for key, info in generators.items():
        agreement = info.label_agreement
        judged = "" if agreement is None else f", label agreement {100 * agreement:.1f}%"
        quality = info.quality
        lines.append(
            f"synthetic set {key}: {info.num_images} images{judged}, "
            f"{quality['metric']} {quality['value']:.3f}"
        )
    stage_times = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    return "\n".join([*lines, "", table, "stage times (s): " + stage_times])


def generator_warning(
    key: str, figures: GeneratorFigures, num_classes: int, thresholds=None
) -> str | None:
    """The label-agreement warning of ``sio generate`` (sio.generate.agreement_warning) for a
    generator of the study: its "+SIO" runs train on noise or off-manifold images."""
    per_class = figures.label_agreement_per_class
    return agreement_warning(key, figures.label_agreement, num_classes, per_class, thresholds)


def _per_class(audit: dict | None) -> dict:
    """GeneratorFigures' per-class fields from an audit record (generate/audit.py)."""
    fields = ("label_agreement_per_class", "confidence_per_class", "fd_classifier_per_class")
    return {name: (audit or {}).get(name) for name in fields}


def _label_agreement(synthetic: Path) -> float | None:
    quality = read_manifest(synthetic).provenance.get("quality")
    return quality.get("label_agreement") if isinstance(quality, dict) else None


def _synthetic_sets(run: PipelineRun, study, judge: Path):
    """{(generator key, count): shard set} and, per generator, its set's figures."""
    by_key = {g.key: g for g in run.config.generators}
    sets, figures = {}, {}
    for key in study.generators:
        counts = study.counts(key)
        full = run.generate(by_key[key], counts[-1], judge)
        agreement = None if run.pending(full / MANIFEST) else _label_agreement(full)
        distance = run.quality(key, full, judge)
        audit = run.audit(key, full, judge)
        if distance is not None:  # None: a dry run before the set exists
            figures[key] = GeneratorFigures(
                str(full.relative_to(run.out)), counts[-1], agreement, distance, **_per_class(audit)
            )
            warning = generator_warning(
                key, figures[key], len(run.benchmark.class_names), run.config.audit
            )
            if warning:
                print(warning_banner(warning), flush=True)
        sets[(key, counts[-1])] = full
        for count in counts[:-1]:
            sets[(key, count)] = run.subset(key, full, count)
    return sets, figures
