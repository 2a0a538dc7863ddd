"""Reports and figures ready for a paper: report.tex (AUROC and FPR@95, Average and Best rows,
display names, the best in bold, booktabs stated), one mean ± std cell, arms trained with
different recipes refused (or marked), figures as PNG, PDF and SVG, class names on the rows of
``sio shards show``, and TensorBoard's sample grids and hyperparameters."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from sio.cli import get_cli
from sio.evaluate import mean_std_cell
from sio.evaluate.names import DISPLAY_NAMES, display_name
from sio.evaluate.report import report
from sio.train.config import TrainConfig

from .test_report import results_for, write_run
from .tiny_run import write_tiny_run


@pytest.fixture
def run_folders(tmp_path):
    return [
        write_run(tmp_path / f"{name}{i}", alpha, i, results_for(alpha, i))
        for alpha, name in ((1.0, "base"), (0.8, "sio"))
        for i in range(3)
    ]


def latex_rows(tex: str, caption: str) -> dict[str, list[str]]:
    """The rows (first cell -> the other cells) of the table whose comment is ``caption``."""
    table = tex.split(f"% {caption}", 1)[1].split("\\end{tabular}", 1)[0]
    rows = [line.removesuffix(" \\\\").split(" & ") for line in table.splitlines() if " & " in line]
    return {row[0]: row[1:] for row in rows}


def test_report_tex_has_both_metrics_average_best_bold_and_display_names(tmp_path, run_folders):
    report(run_folders, tmp_path / "out")
    tex = (tmp_path / "out" / "report.tex").read_text()
    assert tex.startswith("% sio report: needs \\usepackage{booktabs}")
    assert tex.count("\\toprule\n") == 2 and tex.count("\\bottomrule\n") == 2
    s = math.sqrt(14 / 3)
    auroc = latex_rows(tex, "AUROC (\\%, higher is better)")
    assert list(auroc) == ["Detector", "MSP", "EBO", "Average", "Best"]  # paper order, names
    # EBO (msp + 5) is best in every AUROC column: bold there, plain for MSP
    assert auroc["EBO"][0] == f"$\\mathbf{{{8:.2f} \\pm {s:.2f}}}$"
    assert auroc["MSP"][0] == f"${3:.2f} \\pm {s:.2f}$"
    assert all(cell.startswith("$\\mathbf{") for cell in auroc["EBO"])
    assert auroc["Average"][0] == f"${5.5:.2f} \\pm {s:.2f}$"
    assert auroc["Best"][0] == f"${8:.2f} \\pm {s:.2f}$ (EBO)"
    fpr = latex_rows(tex, "FPR@95 (\\%, lower is better)")
    assert fpr["EBO"][0] == f"$\\mathbf{{{92:.2f} \\pm {s:.2f}}}$"  # lowest FPR is the best
    assert fpr["Best"][0] == f"${92:.2f} \\pm {s:.2f}$ (EBO)"
    assert "near baseline (n = 3)" in auroc["Detector"][0]
    assert "+SIO $\\alpha$=0.8" in auroc["Detector"][1]


def test_one_cell_for_mean_and_std():
    assert mean_std_cell({"mean": 39.800000000000004, "std": 0.0, "n": 1}) == "39.80"
    assert mean_std_cell({"mean": 3.0, "std": 2.16, "n": 3}) == "3.00 ± 2.16"
    assert mean_std_cell({"mean": 3.0, "std": 2.16, "n": 3}, digits=1) == "3.0 ± 2.2"


def test_study_points_table_uses_the_one_cell():
    from sio.pipeline.study_report import points_table

    one = {"mean": 90.0, "std": 0.0, "n": 1}
    point = {"generator": None, "quality": None, "label_agreement": None, "seeds": [0]}
    table = points_table([{**point, "near": one, "far": one, "id_acc": one}])
    assert "| 90.00 | 90.00 | 90.00 |" in table and "±" not in table


def test_display_names_cover_every_detector():
    from sio.evaluate.detectors import DETECTORS

    assert set(DETECTORS.names()) <= set(DISPLAY_NAMES)
    assert display_name("vim") == "ViM" and display_name("custom") == "custom"


@pytest.fixture(scope="module")
def two_recipes(tmp_path_factory):
    """Two real runs on a tiny digits benchmark, trained for 1 and 2 epochs, each evaluated."""
    from sio.evaluate import evaluate_checkpoint
    from sio.evaluate.config import EvaluateConfig
    from sio.train import train_classifier

    root = write_tiny_run(tmp_path_factory.mktemp("recipes"), shard_size=512)
    folders = []
    for seed, epochs in ((0, 1), (1, 2)):
        config = TrainConfig(epochs=epochs, batch_size=64, num_workers=0, crop_padding=0)
        out = root / f"run{seed}"
        train_classifier(
            real=root / "bench" / "id_train", synthetic=None, alpha=1.0, seed=seed,
            config=config, out=out,
        )  # fmt: skip
        evaluate_checkpoint(
            out, root / "bench", root / f"eval{seed}", EvaluateConfig(detectors=("msp",))
        )
        folders.append(root / f"eval{seed}")
    return root, folders


@pytest.mark.slow
def test_report_refuses_runs_trained_with_different_recipes(two_recipes):
    root, folders = two_recipes
    recipe = json.loads((folders[0] / "run.json").read_text())["recipe"]
    assert recipe["epochs"] == 1 and "real" in recipe and "num_workers" not in recipe
    with pytest.raises(ValueError, match=r"different recipes \(epochs = 1 in .*eval0, 2 in "):
        report(folders)
    result = CliRunner().invoke(get_cli(), ["report", *map(str, folders)])
    assert result.exit_code == 1 and "epochs = 1" in result.output
    assert result.output.count("Error") == 1
    text = report(folders, allow_mixed=True)
    assert text.splitlines()[0] == "# sio report: baseline vs +SIO (mixed recipes)"
    assert "- **mixed recipes** (--allow-mixed): epochs = 1 in " in text
    out = root / "report"
    arguments = ["report", "--allow-mixed", *map(str, folders), "--out", str(out)]
    result = CliRunner().invoke(get_cli(), arguments)
    assert result.exit_code == 0 and "(mixed recipes)" in result.stdout
    written = "report.md, report.json, report.csv, report.tex, openood.csv"
    assert result.stderr.splitlines()[-1] == f"report: 2 runs; wrote {written} to {out}"
    assert "(mixed recipes)" in (out / "report.md").read_text()


@pytest.mark.slow
def test_tensorboard_holds_sample_grids_and_hyperparameters(two_recipes):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    root, _ = two_recipes
    events = EventAccumulator(str(root / "run1" / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["samples/real"]
    (image,) = events.Images("samples/real")
    assert image.step == 0 and image.width > 8 and image.height > 8  # a grid of 8x8 digits
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    params = start.session_start_info.hparams
    assert params["epochs"].number_value == 2 and params["alpha"].number_value == 1.0
    assert params["seed"].number_value == 1 and params["method"].string_value == "ce"
    assert [s.step for s in events.Scalars("acc/train")] == [0, 1]  # epochs from 0


def test_plots_are_written_as_png_pdf_and_svg(tmp_path):
    from sio.pipeline.plot import plot_log

    records = [{"epoch": e, "loss": 1.0 / (e + 1), "train_acc": 0.5 + e / 10} for e in range(4)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    png = plot_log(tmp_path)
    assert png == tmp_path / "log.png"
    assert (tmp_path / "log.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "log.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "log.svg").read_bytes()[:2000]
    assert "training curves" in (tmp_path / "log.svg").read_text()  # a title


def test_score_plots_legend_sits_outside_the_data(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from sio.evaluate import score_plots

    drawn = {}
    original = score_plots.save_figure

    def keep(figure, path):
        drawn["figure"] = figure
        return original(figure, path)

    score_plots.save_figure = keep
    try:
        rng = np.random.default_rng(0)
        splits = {"id.test": rng.normal(1, 1, 200), "ood.near.a": rng.normal(0, 1, 200)}
        target = score_plots.plot_detector("vim", splits, tmp_path / "vim.png")
    finally:
        score_plots.save_figure = original
    figure: Figure = drawn["figure"]
    figure.canvas.draw()
    (axes,) = figure.axes
    legend = axes.get_legend().get_window_extent()
    assert not legend.overlaps(axes.get_window_extent())
    assert axes.get_title().startswith("ViM: ")
    assert {p.suffix for p in tmp_path.iterdir()} == {".png", ".pdf", ".svg"} and target.exists()


def test_study_error_bars_stay_within_0_and_100():
    from sio.pipeline.study_report import _capped

    low, high = _capped([1.0, 50.0, 99.0], [3.0, 3.0, 3.0])
    assert low == [1.0, 3.0, 3.0] and high == [3.0, 3.0, 1.0]


def test_shards_show_names_each_row(tmp_path):
    from PIL import Image

    from sio.shards.show import write_grid

    bench = write_tiny_run(tmp_path, shard_size=512) / "bench" / "id_train"
    plain = np.asarray(Image.open(write_grid(bench, tmp_path / "plain.png", 2, 4, labels=False)))
    named = np.asarray(Image.open(write_grid(bench, tmp_path / "named.png", 2, 4)))
    margin = named.shape[1] - plain.shape[1]
    assert margin > 8 and named.shape[0] == plain.shape[0]
    np.testing.assert_array_equal(named[:, margin:], plain)  # the grid itself is unchanged
    row = (plain.shape[0] - 1) // 2
    for index in range(2):  # some text in the margin of each class's row, none between
        band = named[1 + index * row : (index + 1) * row, :margin]
        assert band.max() > 128, index
