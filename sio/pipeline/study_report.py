"""The study report: FID vs AUROC, AUROC vs alpha, AUROC vs synthetic count, AUROC vs ID accuracy.

Reads ``study.json`` (written by ``sio run``: every evaluated run with its generator, synthetic
count, alpha and seed, and each generator's synthetic-set figures) and the runs' results. Each
point is mean ± population std over seeds of the per-seed average over detectors (the Average
row of the paper's Table 1), for near- and far-OOD AUROC and for ID accuracy. The plots are
slices through the base point (first generator, ``generate.num_images``, ``sio_alpha``): the
alpha plot varies alpha at the base generator and count, and so on; the tables list every point.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from sio.core.figures import figure_paths, save_figure
from sio.core.files import write_json_atomic, write_text_atomic
from sio.core.lock import hold_folder
from sio.core.numbers import rounded
from sio.evaluate import aggregate_runs, load_run, mean_std
from sio.evaluate import mean_std_cell as _cell
from sio.pipeline.study import AXIS, STUDY_FILE, StudyRecord, StudyRun

PLOTS = {
    "fid": "fid_vs_auroc.png",
    "worst_class": "far_delta_vs_worst_class.png",
    "alpha": "auroc_vs_alpha.png",
    "num_synthetic": "auroc_vs_num_synthetic.png",
    "id_acc": "near_auroc_vs_id_acc.png",
}
STUDY_RESULTS = "study_results.json"  # every point's figures, beside report.md


def point_stats(runs: list[StudyRun], root: Path) -> dict:
    """{near, far, id_acc}: mean ± std over the seeds of ``runs`` (one study point); their
    folders are relative to ``root``."""
    (arm,) = aggregate_runs([load_run(root / r.evaluate) for r in runs]).values()
    stats = {"id_acc": arm["id_acc"], "seeds": arm["seeds"]}
    for group in ("near", "far"):
        per_detector = [d[group]["mean"]["auroc"]["values"] for d in arm["metrics"].values()]
        stats[group] = mean_std(np.mean(per_detector, axis=0))
    return stats


def study_points(study: StudyRecord, root: Path) -> list[dict]:
    """Every point of the study (the baseline first) with its generator figures and stats."""
    groups: dict[tuple, list[StudyRun]] = {}
    for run in study.runs:
        groups.setdefault(run.axes, []).append(run)
    points = []
    for axes, runs in groups.items():
        point = dict(zip(AXIS, axes, strict=True))
        figures = study.generators.get(point["generator"])
        point |= {
            "quality": figures and figures.quality,
            "label_agreement": figures and figures.label_agreement,
            "worst_class": figures and figures.worst_class,  # (class, agreement) or None
        }
        points.append({**point, **point_stats(runs, root)})
    return points


def _label(point: dict) -> str:
    if point["generator"] is None:
        return "baseline (α = 1)"
    return f"{point['generator']}, n = {point['num_synthetic']}, α = {point['alpha']:g}"


def points_table(points: list[dict]) -> str:
    lines = [
        "| point | Fréchet distance | label agreement | worst class | near AUROC | far AUROC "
        "| ID acc | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        quality, agreement = p["quality"], p["label_agreement"]
        distance = "—" if quality is None else f"{quality['value']:.3f} ({quality['metric']})"
        agreed = "—" if agreement is None else f"{100 * agreement:.1f}%"
        worst = _worst_cell(p.get("worst_class"))
        cells = [distance, agreed, worst, _cell(p["near"]), _cell(p["far"]), _cell(p["id_acc"])]
        lines.append(f"| {_label(p)} | " + " | ".join(cells) + f" | {p['seeds']} |")
    return "\n".join(lines)


def _worst_cell(worst) -> str:
    """The worst class's cell: "'1' 55.0%" (its name and label agreement), or "—"."""
    return "—" if not worst else f"'{worst[0]}' {100 * worst[1]:.1f}%"


def slices(points: list[dict], base: dict) -> dict[str, list[dict]]:
    """The points along each axis through the base point, sorted by that axis."""
    out = {}
    for axis in AXIS:
        others = [k for k in AXIS if k != axis]
        line = [
            p for p in points if p["generator"] is not None and all(p[k] == base[k] for k in others)
        ]
        out[axis] = line if axis == "generator" else sorted(line, key=lambda p: p[axis])
    return out


def _distance_name(points: list[dict]) -> str:
    metrics = {p["quality"]["metric"] for p in points if p["quality"]}
    if metrics == {"fid"}:
        return "FID (Inception)"
    if metrics == {"fd_classifier"}:
        return "Fréchet distance of classifier features (not FID)"
    return "Fréchet distance (mixed extractors)"


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 4), dpi=120)
    return figure, axes


def _save(
    figure,
    axes,
    path: Path,
    xlabel: str,
    ylabel: str = "mean AUROC over detectors (%)",
    title: str = "",
):
    import matplotlib.pyplot as plt

    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    # outside the axes, so that it hides no point
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    save_figure(figure, path)  # and its PDF and SVG
    plt.close(figure)


def _capped(means, stds, floor: float = 0.0, ceiling: float = 100.0) -> list[list[float]]:
    """Asymmetric error bars that stay in [``floor``, ``ceiling``]: a percentage cannot pass
    100 or fall below 0."""
    pairs = list(zip(means, stds, strict=True))
    return [[min(sd, m - floor) for m, sd in pairs], [min(sd, ceiling - m) for m, sd in pairs]]


def _series(axes, xs, points, linestyle="-"):
    for group, color in (("near", "C0"), ("far", "C1")):
        means = [p[group]["mean"] for p in points]
        stds = [p[group]["std"] for p in points]
        axes.errorbar(
            xs,
            means,
            yerr=_capped(means, stds),
            color=color,
            marker="o",
            capsize=3,
            ls=linestyle,
            label=f"{group}-OOD",
        )


def _baseline_lines(axes, baseline: dict) -> None:
    for group, color in (("near", "C0"), ("far", "C1")):
        axes.axhline(baseline[group]["mean"], color=color, ls=":", label=f"baseline {group}")


def plot_fid(line, baseline, path: Path) -> None:
    figure, axes = _figure()
    xs = [p["quality"]["value"] for p in line]
    _series(axes, xs, line, linestyle="none")
    for x, p in zip(xs, line, strict=True):
        axes.annotate(
            p["generator"],
            (x, p["near"]["mean"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    _baseline_lines(axes, baseline)
    distance = _distance_name(line)
    _save(figure, axes, path, distance + " to the real ID train set", title="AUROC vs " + distance)


def plot_worst_class(line, baseline, path: Path) -> None:
    """Δ far-OOD AUROC (+SIO − baseline) against the label agreement of each generator's worst
    class: one off-manifold class is what makes SIO hurt far-OOD (generate/agreement.py)."""
    figure, axes = _figure()
    line = [p for p in line if p.get("worst_class")]
    xs = [100 * p["worst_class"][1] for p in line]
    deltas = [p["far"]["mean"] - baseline["far"]["mean"] for p in line]
    stds = [p["far"]["std"] for p in line]
    axes.errorbar(xs, deltas, yerr=stds, color="C1", marker="o", capsize=3, ls="none",
                  label="far-OOD Δ")  # fmt: skip
    for x, delta, p in zip(xs, deltas, line, strict=True):
        text = f"{p['generator']} ('{p['worst_class'][0]}')"
        axes.annotate(text, (x, delta), fontsize=7, xytext=(4, 4), textcoords="offset points")
    axes.axhline(0.0, color="grey", ls=":", label="baseline")
    _save(
        figure,
        axes,
        path,
        "label agreement of the worst class (%)",
        "Δ far-OOD AUROC vs baseline (points)",
        "far-OOD Δ vs the worst class's label agreement",
    )


def plot_alpha(line, baseline, path: Path) -> None:
    figure, axes = _figure()
    points = [*line, baseline]  # alpha = 1 is the baseline: the right end of the curve
    _series(axes, [p["alpha"] for p in points], points)
    _save(figure, axes, path, "α (real fraction of each batch; 1 = baseline)", title="AUROC vs α")


def plot_count(line, baseline, path: Path) -> None:
    figure, axes = _figure()
    _series(axes, [p["num_synthetic"] for p in line], line)
    _baseline_lines(axes, baseline)
    axes.set_xscale("log")  # counts are swept by factors (1k, 3k, 12k)
    _save(figure, axes, path, "synthetic images (log scale)", title="AUROC vs synthetic set size")


def plot_id_acc(points, path: Path) -> None:
    figure, axes = _figure()
    for i, p in enumerate(points):
        axes.errorbar(
            p["id_acc"]["mean"],
            p["near"]["mean"],
            xerr=_capped([p["id_acc"]["mean"]], [p["id_acc"]["std"]]),
            yerr=_capped([p["near"]["mean"]], [p["near"]["std"]]),
            marker="s" if p["generator"] is None else "o",
            capsize=3,
            color=f"C{i % 10}",
            label=_label(p),
        )
    ylabel = "near-OOD AUROC, mean over detectors (%)"
    _save(figure, axes, path, "ID accuracy (%)", ylabel, "near-OOD AUROC vs ID accuracy")


def _section(title: str, image: str | None, points: list[dict] | None, note="") -> list[str]:
    """A plot (or why there is none) and the table of its points (None: see every point's)."""
    body = [f"![{title}]({image})", ""] if image else [f"_{note}_", ""]
    table = [points_table(points), ""] if points is not None else []
    return [f"### {title}", "", *body, *table]


def study_section(study: StudyRecord, out: Path) -> tuple[str, dict]:
    """The study's Markdown (plots written to ``out``) and its JSON form."""
    points = study_points(study, out)
    baseline = next(p for p in points if p["generator"] is None)
    base = dataclasses.asdict(study.base)
    line = slices(points, base)
    sections = [
        "## Study",
        "",
        "Every point (mean ± std over seeds of the average over detectors, percent; the "
        "Fréchet distance and label agreement are the generator's, over its whole set):",
        "",
        points_table(points),
        "",
    ]
    plots = (
        ("fid", "generator", "Fréchet distance vs AUROC, per generator", plot_fid),
        ("alpha", "alpha", "AUROC vs α", plot_alpha),
        ("num_synthetic", "num_synthetic", "AUROC vs number of synthetic images", plot_count),
    )
    for name, axis, title, draw in plots:
        if len(line[axis]) >= 2:
            draw(line[axis], baseline, out / PLOTS[name])
            sections += _section(title, PLOTS[name], [*line[axis], baseline])
        else:
            sections += _section(title, None, line[axis], f"{axis} is not swept: no plot")
    audited = [p for p in line["generator"] if p.get("worst_class")]
    title = "Δ far-OOD AUROC vs the worst class's label agreement, per generator"
    if len(audited) >= 2:
        plot_worst_class(audited, baseline, out / PLOTS["worst_class"])
        sections += _section(title, PLOTS["worst_class"], [*audited, baseline])
    else:
        sections += _section(title, None, audited, "fewer than two audited generators: no plot")
    plot_id_acc(points, out / PLOTS["id_acc"])
    sections += _section("Near-OOD AUROC vs ID accuracy", PLOTS["id_acc"], None)
    return "\n".join(sections), {"base": base, "points": points}


def generators_section(study: StudyRecord, num_classes: int | None = None, thresholds=None) -> str:
    """Each generator of the study: its set, size, Fréchet distance, label agreement and worst
    class, the audit's worst classes, and the warning (sio.generate.agreement_warning, as
    ``sio generate`` and ``sio run`` print it, with the run's ``audit`` thresholds) where the
    set or a class agrees too little."""
    from sio.generate import agreement_warning

    lines = [
        "## Generators",
        "",
        "| generator | synthetic set | images | Fréchet distance | label agreement | worst class |",
        "|---|---|---|---|---|---|",
    ]
    warnings, audits = [], []
    for key, figures in study.generators.items():
        quality, agreement = figures.quality, figures.label_agreement
        distance = f"{quality['value']:.3f} ({quality['metric']})" if quality else "—"
        agreed = "—" if agreement is None else f"{100 * agreement:.1f}%"
        worst = _worst_cell(figures.worst_class)
        lines.append(
            f"| {key} | {figures.synthetic} | {figures.num_images} | {distance} | {agreed} "
            f"| {worst} |"
        )
        per_class = figures.label_agreement_per_class
        warning = agreement_warning(key, agreement, num_classes, per_class, thresholds)
        if warning:
            warnings.append(f"**{warning}**")
        if per_class:
            audits += audit_table(key, figures)
    return "\n".join([*lines, "", *(f"{w}\n" for w in warnings), *audits])


AUDIT_ROWS = 10  # classes listed per generator, worst first


def audit_table(key: str, figures, rows: int = AUDIT_ROWS) -> list[str]:
    """The per-class audit of generator ``key``, its worst ``rows`` classes first: label
    agreement, mean confidence of the class, Fréchet distance of its classifier features."""
    from sio.generate import worst_classes

    confidence = figures.confidence_per_class or {}
    distance = figures.fd_classifier_per_class or {}
    ranked = worst_classes(figures.label_agreement_per_class)
    lines = [
        f"### Per-class audit: {key}",
        "",
        "| class | label agreement | confidence | Fréchet distance (classifier) |",
        "|---|---|---|---|",
    ]
    for name, agreement in ranked[:rows]:
        conf, fd = confidence.get(name), distance.get(name)
        lines.append(
            f"| {name} | {100 * agreement:.1f}% | {'—' if conf is None else f'{conf:.3f}'} "
            f"| {'—' if fd is None else f'{fd:.3f}'} |"
        )
    if len(ranked) > rows:
        more = len(ranked) - rows
        lines.append(f"\n_{more} more classes, each at {100 * ranked[rows][1]:.1f}% or above_")
    return [*lines, ""]


def study_report(output_dir: str | Path) -> str:
    """report.md/report.json of a ``sio run`` folder: the baseline-vs-+SIO tables at the base
    point, then the study's plots and tables. Another job writing the folder (a ``sio run``
    into it) is refused (``FolderBusy``)."""
    out = Path(output_dir)
    study = StudyRecord.read(out / STUDY_FILE)
    with hold_folder(out):  # one job writes a folder; sio run holds it already
        return _write_study_report(study, out)


def _num_classes(out: Path) -> int | None:
    """The ID class count of the run folder's benchmark (None without one)."""
    from sio.shards import read_benchmark

    if not (out / "benchmark" / "benchmark.json").is_file():
        return None
    return len(read_benchmark(out / "benchmark").class_names)


def _thresholds(out: Path):
    """The ``audit`` thresholds of the run (its ``pipeline.resolved.json``), else the defaults."""
    import json

    from sio.core.config import ConfigError, parse_dataclass
    from sio.generate import AuditConfig

    resolved = out / "pipeline.resolved.json"
    try:
        section = json.loads(resolved.read_text()).get("audit") if resolved.is_file() else None
        return parse_dataclass(AuditConfig, section, "audit")
    except (ValueError, ConfigError, AttributeError) as err:
        print(f"{resolved}: audit thresholds unreadable ({err}); the defaults are used")
        return AuditConfig()


def _write_study_report(study: StudyRecord, out: Path) -> str:
    from sio.evaluate import write_report

    base_runs = [out / r.evaluate for r in study.base_runs()]
    for name in (*PLOTS.values(), STUDY_RESULTS):  # what an earlier, larger study left
        for path in figure_paths(out / name):  # a plot's PDF and SVG too
            path.unlink(missing_ok=True)
    generators = generators_section(study, _num_classes(out), _thresholds(out))
    table = write_report(base_runs, out) + "\n" + generators
    write_text_atomic(out / "report.md", table)
    if len({r.axes for r in study.runs}) <= 2:
        return table  # the baseline and at most one +SIO point: nothing is swept
    section, data = study_section(study, out)
    write_text_atomic(out / "report.md", (out / "report.md").read_text() + "\n" + section)
    write_json_atomic(out / STUDY_RESULTS, rounded(data))
    return table + "\n\n" + section
