"""A failing detector never costs the others (skipped, or --strict), per-sample scores and their
histograms, the notebook path (README's example, run as written), any model checked first."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sio.cli import get_cli
from sio.evaluate import DETECTORS, Detector
from sio.shards import read_benchmark
from sio.shardset import read_manifest
from sio.train import build_classifier

from .tiny_run import write_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster
README = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"  # the notebook page


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The two-class digits benchmark (classes '0' and '1'), and a randomly initialised
    small_cnn whose bias makes it answer '0' for every image: OpenMax finds no correctly
    classified sample of class '1' and cannot be fitted."""
    root = write_tiny_run(tmp_path_factory.mktemp("robust"), shard_size=512)
    torch.manual_seed(5)
    model = build_classifier("small_cnn", in_channels=1, num_classes=2, mean=[0.0], std=[1.0])
    state = model.state_dict()
    state["fc.bias"] = torch.tensor([50.0, -50.0])
    torch.save(state, root / "w.pt")
    return root


def evaluate(tiny, out, *extra):
    args = ["evaluate", "--model", "sio:small_cnn", "--weights", str(tiny / "w.pt"),
            "--benchmark", str(tiny / "bench"), "--out", str(out), *extra]  # fmt: skip
    return CliRunner().invoke(get_cli(), args)


@pytest.fixture(scope="module")
def evaluated(tiny):
    """`sio evaluate --model ... --save-scores` with OpenMax among the detectors."""
    out = tiny / "eval"
    result = evaluate(tiny, out, "--detectors", "msp,ebo,knn,openmax", "--save-scores")
    return out, result


def no_nan(text: str) -> dict:
    def refuse(constant):
        raise AssertionError(f"{constant} in results.json")

    return json.loads(text, parse_constant=refuse)


def test_an_unfittable_detector_is_skipped_by_class_name_and_the_others_written(evaluated):
    out, result = evaluated
    assert result.exit_code == 0, result.output
    results = no_nan((out / "results.json").read_text())
    assert set(results["metrics"]) == {"msp", "ebo", "knn"}
    assert set(results["detectors"]) == {"msp", "ebo", "knn"}
    reason = results["skipped"]["openmax"]
    assert re.search(r"openmax on id\.train: class '1' has 0 correctly classified", reason)
    for method in ("msp", "ebo", "knn"):
        assert 0 <= results["metrics"][method]["far"]["mean"]["auroc"] <= 100
    assert f"Skipped openmax: {reason}." in (out / "results.md").read_text()
    summary = [line for line in result.output.splitlines() if line.startswith("evaluate: ID acc")]
    assert (
        len(summary) == 1
        and f"; 3 detectors scored, 1 skipped (openmax: {reason}); " in (summary[0])
    )
    assert (out / "activations.npz").is_file() and (out / "activations.json").is_file()


def test_strict_exits_non_zero_naming_the_detector_and_reuses_the_activations(
    tiny, evaluated, monkeypatch
):
    out, _ = evaluated
    before = (out / "activations.npz").stat()

    def no_extraction(*args, **kwargs):
        raise AssertionError("the activations were extracted again")

    monkeypatch.setattr("sio.evaluate.models.model_activations", no_extraction)
    result = evaluate(tiny, out, "--detectors", "msp,openmax", "--strict")
    assert result.exit_code != 0
    named = [line for line in result.output.splitlines() if "openmax" in line]
    assert len(named) == 1 and named[0].startswith("Error: detector openmax on id.train: class '1'")
    after = (out / "activations.npz").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # evaluate.strict: true in the config is the same switch
    config = tiny / "strict.yaml"
    config.write_text("evaluate:\n  strict: true\n")
    result = evaluate(tiny, out, "--detectors", "openmax", "--config", str(config))
    assert result.exit_code != 0 and "detector openmax on id.train" in result.output


def test_in_python_a_strict_failure_keeps_the_extracted_activations(tiny, monkeypatch):
    from sio.evaluate import DetectorError, Evaluator
    from sio.evaluate.config import EvaluateConfig

    model = build_classifier("small_cnn", in_channels=1, num_classes=2, mean=[0.0], std=[1.0])
    model.load_state_dict(torch.load(tiny / "w.pt"))
    config = EvaluateConfig(detectors=("msp", "openmax"), strict=True)
    evaluator = Evaluator(model, benchmark=tiny / "bench", config=config)
    assert evaluator.model.mean is None  # sio's classifiers normalise themselves
    with pytest.raises(DetectorError, match=r"^detector openmax on id\.train: class '1' has 0"):
        evaluator.evaluate()
    monkeypatch.setattr("sio.evaluate.models.model_activations", None)  # no second extraction
    bank = evaluator.activations()
    test = read_benchmark(tiny / "bench").id_splits["test"]
    assert len(bank.id_features["test"]) == read_manifest(test).num_samples


@pytest.fixture
def nan_detector():
    """A test-only detector whose scores are NaN for every other row, registered for one test."""

    @DETECTORS.register("nan_for_test")
    class NanScores(Detector):
        """NaN on every other row (test only)."""

        def score_features(self, features):
            scores = features.astype(np.float64).sum(axis=1)
            scores[::2] = np.nan
            return scores

    yield "nan_for_test"
    DETECTORS._entries.pop("nan_for_test", None)


def test_a_detector_scoring_nan_is_skipped_and_no_nan_is_written(
    tiny, evaluated, nan_detector, tmp_path
):
    out, _ = evaluated
    args = ["evaluate", "--activations", str(out / "activations.npz"),
            "--benchmark", str(tiny / "bench"), "--detectors", f"{nan_detector},mls",
            "--out", str(tmp_path / "o"), "--save-scores"]  # fmt: skip
    result = CliRunner().invoke(get_cli(), args)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "o" / "results.json").read_text()
    results = no_nan(text)
    assert "NaN" not in text and "Infinity" not in text
    assert list(results["metrics"]) == ["mls"]
    assert re.search(
        r"nan_for_test gave \d+ non-finite scores on id\.test", results["skipped"][nan_detector]
    )
    with np.load(tmp_path / "o" / "scores.npz") as scores:
        assert all(key.startswith("mls/") for key in scores.files)
    result = CliRunner().invoke(get_cli(), [*args, "--strict"])
    assert result.exit_code != 0 and "Error: detector nan_for_test gave" in result.output


def test_saved_scores_hold_every_sample_and_give_the_results_auroc(tiny, evaluated):
    from sklearn.metrics import roc_auc_score

    out, _ = evaluated
    results = json.loads((out / "results.json").read_text())
    bench = read_benchmark(tiny / "bench")
    sets = {"id.test": bench.id_splits["test"]}
    sets |= {f"ood.near.{n}": p for n, p in bench.near.items()}
    sets |= {f"ood.far.{n}": p for n, p in bench.far.items()}
    with np.load(out / "scores.npz") as data:
        scores = {key: data[key] for key in data.files}
    assert {key.split("/")[0] for key in scores} == {"msp", "ebo", "knn"}  # openmax skipped
    for method in ("msp", "ebo", "knn"):
        for split, folder in sets.items():
            values = scores[f"{method}/{split}"]
            assert values.dtype == np.float64 and np.isfinite(values).all()
            assert len(values) == read_manifest(folder).num_samples
        id_scores = scores[f"{method}/id.test"]
        for group, entry in results["metrics"][method].items():
            for name, metrics in entry["datasets"].items():
                ood = scores[f"{method}/ood.{group}.{name}"]
                labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood))]
                expected = 100 * roc_auc_score(labels, np.r_[id_scores, ood])
                assert metrics["auroc"] == pytest.approx(expected, abs=1e-6)  # rounded


def test_plot_scores_writes_one_png_per_detector(evaluated):
    from PIL import Image

    out, _ = evaluated
    result = CliRunner().invoke(get_cli(), ["plot-scores", str(out)])
    assert result.exit_code == 0, result.output
    pngs = sorted((out / "score-plots").glob("*.png"))
    assert [p.stem for p in pngs] == ["ebo", "knn", "msp"]
    for png in pngs:
        assert f"plot-scores: {png}" in result.output
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size[0] > 100
            image.verify()
    assert not list((out / "score-plots").glob("*.tmp*"))
    missing = CliRunner().invoke(get_cli(), ["plot-scores", str(out / "score-plots")])
    assert missing.exit_code != 0 and "scores.npz: no such file" in missing.output


# --- the notebook path: README's example, run as written -----------------------------------


class TinyNet(nn.Module):
    """A tiny classifier: conv, pooled to 2 x 2, final linear layer ``fc``."""

    def __init__(self, classes=2):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        )
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.trunk(x).flatten(1))


def readme_example() -> str:
    text = README.read_text()
    marker = "<!-- docs-test: fixture=notebook (tests/test_evaluate_robust.py also checks"
    assert marker in text, "docs/python-api.md lost the notebook example"
    block = text.split(marker, 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_notebook_example_runs_as_written():
    from torch.utils.data import DataLoader, TensorDataset

    from sio.evaluate import ActivationBank
    from sio.evaluate.detectors import fit_detector
    from sio.evaluate.detectors.odin import ODIN

    torch.manual_seed(0)
    model = TinyNet().eval()
    train_images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    train_labels = torch.arange(40) % 2
    loader = DataLoader(TensorDataset(train_images, train_labels), batch_size=16)
    images = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8)
    names = {"model": model, "id_train_loader": loader, "images": images}
    exec(compile(readme_example(), str(README), "exec"), names)
    scores, odin_scores = names["scores"], names["odin_scores"]
    assert isinstance(scores, torch.Tensor) and scores.shape == (7,)
    # the same as fitting KNN (k = 5) on the features computed here by hand
    with torch.no_grad():
        h_train = model.trunk(train_images.float() / 255).flatten(1).numpy()
        h_test = model.trunk(images.float() / 255).flatten(1).numpy()
    feats = {"train": h_train, "val": h_train[:0], "test": h_train}
    labels = {"train": train_labels.numpy(), "val": np.zeros(0, int), "test": train_labels.numpy()}
    bank = ActivationBank(
        model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy(), feats, labels, {}
    )
    from sio.evaluate.config import EvaluateConfig, KnnSettings

    knn = fit_detector("knn", bank, EvaluateConfig(knn=KnnSettings(k=5)))
    np.testing.assert_allclose(scores.numpy(), knn.score(h_test), rtol=1e-5, atol=1e-6)
    # ODIN through the same call: ODIN's own score on the model's [0, 1] pixels
    expected = ODIN().score_batch(model, images)
    np.testing.assert_allclose(odin_scores.numpy(), expected, rtol=1e-6)
    # a DataLoader of images scores every batch; fit(bank) scores features
    det = names["det"]
    batches = DataLoader(TensorDataset(images, torch.zeros(7)), batch_size=3)
    np.testing.assert_allclose(det.score(batches).numpy(), scores.numpy(), rtol=1e-5)
    from sio.evaluate import detector

    on_bank = detector("knn", k=5).fit(bank)
    np.testing.assert_allclose(on_bank(h_test).numpy(), knn.score(h_test))
    with pytest.raises(ValueError, match="detector msp has no settings"):
        detector("msp", k=3)
    with pytest.raises(ValueError, match="knn on id.train: k = 50 exceeds the 40"):
        detector("knn").fit(model, loader)


def test_report_leaves_out_a_detector_some_run_skipped_and_says_why(tmp_path):
    import dataclasses

    from sio.evaluate import evaluate_bank, write_results
    from sio.evaluate.report import report

    from .test_evaluate_results import structured_bank

    bank = structured_bank()
    wrong = dataclasses.replace(bank, fc_bias=np.array([50.0, 0, 0, 0], np.float32))
    folders = []
    for seed, run_bank in enumerate((bank, wrong)):
        results = evaluate_bank(run_bank, ["msp", "openmax"], class_names=["a", "b", "c", "d"])
        folder = tmp_path / f"run{seed}"
        write_results(results, folder)
        (folder / "run.json").write_text(json.dumps({"alpha": 1.0, "seed": seed}))
        folders.append(folder)
    assert "openmax" in json.loads((folders[0] / "results.json").read_text())["metrics"]
    skipped = json.loads((folders[1] / "results.json").read_text())["skipped"]["openmax"]
    assert "class 'b' has 0 correctly classified" in skipped
    text = report(folders)
    assert f"- left out openmax: skipped in {folders[1]} ({skipped})" in text
    assert "| msp |" in text and "| openmax |" not in text


# --- any model, checked against the benchmark before any image is read ---------------------


@pytest.fixture(scope="module")
def resnet(tiny):
    """torchvision's resnet18 (weights=None: random) for the grey two-class benchmark, and one
    with a five-class head."""
    import torchvision

    torch.manual_seed(6)
    net = torchvision.models.resnet18(weights=None, num_classes=2).eval()
    torch.save(net.state_dict(), tiny / "resnet2.pt")
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), tiny / "resnet5.pt")
    return net


def test_a_grey_benchmark_on_an_rgb_stem_is_repeated_said_in_one_line_and_as_evaluator(
    tiny, resnet, capsys
):
    from sio.core.numbers import rounded
    from sio.evaluate import Evaluator

    out = tiny / "eval-resnet"
    args = ["evaluate", "--model", "torchvision:resnet18", "--weights", str(tiny / "resnet2.pt"),
            "--benchmark", str(tiny / "bench"), "--out", str(out),
            "--detectors", "msp,ebo,odin"]  # fmt: skip
    result = CliRunner().invoke(get_cli(), args)
    assert result.exit_code == 0, result.output
    note = "evaluate: benchmark digits is grey: its channel is repeated 3 times for model "
    notes = [line for line in result.output.splitlines() if "grey" in line]
    assert notes == [note + "torchvision:resnet18's layer conv1"]
    results = json.loads((out / "results.json").read_text())
    assert set(results["metrics"]) == {"msp", "ebo", "odin"} and not results["skipped"]
    # Evaluator: the same checks and the same default normalisation (ID train statistics)
    evaluator = Evaluator(resnet, benchmark=tiny / "bench", detectors=["msp", "ebo", "odin"])
    assert capsys.readouterr().err.splitlines() == [note + "ResNet's layer conv1"]
    assert rounded(evaluator.evaluate()["metrics"]) == results["metrics"]  # as written


def test_a_model_that_does_not_fit_the_benchmark_is_one_line_naming_model_layer_benchmark(
    tiny, resnet
):
    import torchvision

    from sio.evaluate import Evaluator, ModelError

    args = ["evaluate", "--model", "torchvision:resnet18", "--weights", str(tiny / "resnet5.pt"),
            "--benchmark", str(tiny / "bench"), "--out", str(tiny / "eval5")]  # fmt: skip
    result = CliRunner().invoke(get_cli(), args)
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert errors == [
        f"Error: model torchvision:resnet18: layer fc has 5 outputs in {tiny / 'resnet5.pt'}, "
        "but benchmark digits has 2 classes"
    ]
    assert not (tiny / "eval5" / "activations.npz").exists()
    with pytest.raises(ModelError, match=r"^model ResNet: layer fc has 5 outputs, but benchmark "):
        Evaluator(torchvision.models.resnet18(num_classes=5), benchmark=tiny / "bench")
    with pytest.raises(
        ModelError, match=r"^model ResNet: layer conv1 fails on benchmark digits's "
    ):
        Evaluator(resnet, benchmark=tiny / "bench", channels=2)  # forced: 2 channels for conv1

    class Fixed(nn.Module):  # a head that takes 16 x 16 images only
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 16 * 16, 2)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(
        ModelError, match=r"^model Fixed: layer fc fails on benchmark digits's 1x8x8"
    ):
        Evaluator(Fixed(), benchmark=tiny / "bench")
    with pytest.raises(ModelError, match=r"normalisation has 2 values per channel.* 1 channels"):
        Evaluator(TinyNet(), benchmark=tiny / "bench", mean=[0.5, 0.5], std=[0.2, 0.2])
