"""``sio plot-scores OUT``: per detector, histograms of its ID test scores against its near- and
far-OOD scores, one PNG each (with its PDF and SVG), from the ``scores.npz`` that
``sio evaluate --save-scores`` writes (keys ``<detector>/id.test`` and
``<detector>/ood.<group>.<name>``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sio.core.figures import save_figure
from sio.evaluate.evaluate import SCORES_FILE
from sio.evaluate.names import display_name

PLOTS_FOLDER = "score-plots"  # beside scores.npz: <detector>.png, .pdf, .svg


def read_scores(out: str | Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """(the scores file, {detector: {"id.test" | "ood.<group>.<name>": scores}}) of ``out``, a
    ``sio evaluate --out`` folder or its scores.npz; errors name the file and the key."""
    out = Path(out)
    path = out / SCORES_FILE if out.is_dir() else out
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (`sio evaluate --save-scores --out FOLDER` writes it)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from None
    by_detector: dict[str, dict[str, np.ndarray]] = {}
    for key, values in arrays.items():
        detector, _, split = key.partition("/")
        if not split or not (split == "id.test" or split.startswith("ood.")):
            raise ValueError(f"{path}: key {key!r} is not <detector>/id.test or /ood.<group>.<set>")
        if values.ndim != 1 or not np.isfinite(values).all():
            raise ValueError(f"{path}: {key} is not a vector of finite scores")
        by_detector.setdefault(detector, {})[split] = values
    for detector, splits in by_detector.items():
        if "id.test" not in splits:
            raise ValueError(f"{path}: {detector} has OOD scores but no {detector}/id.test")
    if not by_detector:
        raise ValueError(f"{path}: holds no scores")
    return path, by_detector


def _groups(splits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ID test, then each OOD group's sets together: the histograms drawn."""
    groups = {"ID test": splits["id.test"]}
    for group in ("near", "far"):
        sets = [v for k, v in splits.items() if k.startswith(f"ood.{group}.")]
        if sets:
            names = ", ".join(k.split(".", 2)[2] for k in splits if k.startswith(f"ood.{group}."))
            groups[f"{group}-OOD ({names})"] = np.concatenate(sets)
    return groups


def plot_detector(detector: str, splits: dict[str, np.ndarray], target: Path) -> Path:
    """One PNG: the detector's score histograms (densities, shared bins), ID against OOD."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    groups = _groups(splits)
    bins = np.histogram_bin_edges(np.concatenate(list(groups.values())), bins=50)
    figure = Figure(figsize=(6, 3.6), dpi=110, layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    for label, values in groups.items():
        axes.hist(values, bins=bins, density=True, histtype="step", linewidth=1.4,
                  label=f"{label}: {len(values)}")  # fmt: skip
    axes.set_title(f"{display_name(detector)}: score (higher = more in-distribution)", fontsize=10)
    axes.set_xlabel("score")
    axes.set_ylabel("density")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return save_figure(figure, target)  # and its PDF and SVG


def plot_scores(out: str | Path, folder: str | Path | None = None) -> list[Path]:
    """One histogram PNG per detector of ``out``'s scores.npz, written (atomically) to
    ``folder`` (default: ``score-plots`` beside scores.npz); returns their paths."""
    path, by_detector = read_scores(out)
    folder = Path(folder) if folder is not None else path.parent / PLOTS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return [
        plot_detector(detector, splits, folder / f"{detector}.png")
        for detector, splits in by_detector.items()
    ]


__all__ = ["plot_scores", "read_scores"]
