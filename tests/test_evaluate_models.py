"""Any classifier: Evaluator and ModelAdapter on models that are not sio checkpoints, OpenOOD's
ResNet18_32x32 key layout, `sio evaluate --model`, and detectors registered in Python."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sio.cli import get_cli
from sio.evaluate import ActivationBank, Evaluator, ModelAdapter, ModelError, evaluate_bank
from sio.evaluate.models import build_model, openood_resnet18_32x32_to_sio
from sio.train import build_classifier

from .tiny_run import write_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("models"), shard_size=512)


class Foreign(nn.Module):
    """Not a sio model: its final layer is called ``head`` and its features ``trunk``."""

    def __init__(self, channels=1, classes=2):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        )
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        return self.head(self.trunk(x).flatten(1))


def images_of(folder):
    from sio.shardset import iter_batches

    return torch.cat([batch[0] for batch in iter_batches(folder, 256)])


def test_evaluator_scores_a_foreign_model_with_every_kind_of_detector(tiny, tmp_path):
    from sio.shards import read_benchmark

    torch.manual_seed(0)
    model = Foreign()
    mean, std = [0.4], [0.3]
    evaluator = Evaluator(
        model,
        benchmark=tiny / "bench",
        detectors=["msp", "knn", "vim", "odin"],
        fc_name="head",
        mean=mean,
        std=std,
    )
    results = evaluator.evaluate(tmp_path / "out")
    assert set(results["metrics"]) == {"msp", "knn", "vim", "odin"}
    assert json.loads((tmp_path / "out" / "results.json").read_text())["benchmark"]["name"]
    # the features are the head's input, computed here by hand from the images
    benchmark = read_benchmark(tiny / "bench")
    with torch.no_grad():
        x = (images_of(benchmark.id_splits["test"]).float() / 255 - mean[0]) / std[0]
        expected = model.trunk(x).flatten(1).numpy()
    bank = evaluator.activations()
    np.testing.assert_array_equal(bank.id_features["test"], expected)
    np.testing.assert_array_equal(bank.fc_weight, model.head.weight.detach().numpy())
    # the activation detectors give what evaluate_bank gives on that bank
    again = evaluate_bank(bank, ["msp", "knn", "vim"])
    for method in ("msp", "knn", "vim"):
        assert results["metrics"][method] == again["metrics"][method]
    # a forward hook on a named layer gives the same features
    hooked = ModelAdapter(model, fc_name="head", layer="trunk", mean=mean, std=std)
    with torch.no_grad():
        np.testing.assert_array_equal(
            hooked.features(images_of(benchmark.id_splits["test"])).numpy(), expected
        )


def test_odin_on_a_foreign_model_is_odin_on_its_pixels(tiny):
    from sio.evaluate import DETECTORS
    from sio.shards import read_benchmark

    torch.manual_seed(1)
    model = Foreign()
    adapter = ModelAdapter(model, fc_name="head", mean=[0.5], std=[0.25])
    images = images_of(read_benchmark(tiny / "bench").id_splits["val"])[:16]
    odin = DETECTORS.get("odin")(temperature=10.0, epsilon=0.01)
    scores = odin.score_batch(adapter, images)
    # by hand: gradient of CE(z / T, argmax) w.r.t. pixels in [0, 1], step -eps sign, max softmax
    pixels = (images.float() / 255).requires_grad_(True)
    logits = model((pixels - 0.5) / 0.25) / 10.0
    loss = nn.functional.cross_entropy(logits, logits.argmax(1), reduction="sum")
    (grad,) = torch.autograd.grad(loss, pixels)
    moved = pixels.detach() - 0.01 * torch.where(grad >= 0, 1.0, -1.0)
    with torch.no_grad():
        expected = torch.softmax(model((moved - 0.5) / 0.25).double() / 10.0, 1).max(1).values
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-6)


def test_a_model_that_does_not_fit_is_named(tiny):
    with pytest.raises(ModelError, match=r"no nn.Linear named 'fc'.*\['head'\]"):
        ModelAdapter(Foreign())
    with pytest.raises(ModelError, match=r"head has 3 outputs, but benchmark .* has 2 classes"):
        Evaluator(Foreign(classes=3), benchmark=tiny / "bench", fc_name="head")


def openood_layout(sio_state: dict) -> dict:
    """sio's resnet18_32 state dict renamed, here by hand, into OpenOOD v1.5's ResNet18_32x32
    names (conv1, bn1, layer1.0 ... layer4.1, fc), as a `best.ckpt` of theirs holds them."""
    renamed = {}
    for key, value in sio_state.items():
        if key in ("mean", "std"):
            continue  # sio's normalisation buffers; OpenOOD normalises in its data pipeline
        if key.startswith("backbone.stem.0."):
            key = "conv1." + key.removeprefix("backbone.stem.0.")
        elif key.startswith("backbone.stem.1."):
            key = "bn1." + key.removeprefix("backbone.stem.1.")
        elif key.startswith("backbone.layers."):
            index, rest = key.removeprefix("backbone.layers.").split(".", 1)
            key = f"layer{int(index) // 2 + 1}.{int(index) % 2}.{rest}"
        renamed[key] = value
    return renamed


def test_openood_resnet18_32x32_checkpoint_maps_onto_sio_resnet18_32(tmp_path):
    torch.manual_seed(2)
    reference = build_classifier(
        "resnet18_32", in_channels=3, num_classes=10, mean=[0.0] * 3, std=[1.0] * 3
    ).eval()
    for module in reference.modules():  # non-trivial BN statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = openood_layout(reference.state_dict())
    assert "layer3.0.shortcut.0.weight" in state and "conv1.weight" in state
    assert len(state) == len(reference.state_dict()) - 2
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "best.ckpt")
    adapter = build_model("openood:resnet18_32x32", tmp_path / "best.ckpt", 10)
    loaded = adapter.model.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded[key], value), key
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(adapter(images), reference(images))
        assert torch.equal(adapter.features(images), reference.features(images))
    with pytest.raises(ModelError, match=r"key 'extra.weight' is not part of OpenOOD"):
        openood_resnet18_32x32_to_sio({**state, "extra.weight": torch.zeros(1)})


def test_torchvision_model_features_are_the_fc_input(tmp_path):
    import torchvision

    torch.manual_seed(3)
    net = torchvision.models.resnet18(num_classes=5).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    adapter = build_model(
        "torchvision:resnet18", tmp_path / "w.pt", 5, mean=[0.5] * 3, std=[0.25] * 3
    )
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    x = (images.float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        trunk = nn.Sequential(*list(net.children())[:-1])
        np.testing.assert_allclose(
            adapter.features(images).numpy(), trunk(x).flatten(1).numpy(), rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(adapter(images), net(x))
    with pytest.raises(ModelError, match="state dict does not fit"):
        build_model("torchvision:resnet34", tmp_path / "w.pt", 5)


def test_sio_evaluate_model_cli(tiny, tmp_path):
    torch.manual_seed(4)
    model = build_classifier("small_cnn", in_channels=1, num_classes=2, mean=[0.0], std=[1.0])
    torch.save(model.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        get_cli(),
        [
            "evaluate", "--model", "sio:small_cnn", "--weights", str(tmp_path / "w.pt"),
            "--benchmark", str(tiny / "bench"), "--out", str(out), "--detectors", "msp,ebo,odin",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["metrics"]) == {"msp", "ebo", "odin"}
    result = CliRunner().invoke(
        get_cli(),
        ["evaluate", "--model", "torchvision:resnet18", "--weights", str(tmp_path / "w.pt"),
         "--benchmark", str(tiny / "bench"), "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "does not fit the model" in result.output


def test_detectors_score_features_without_the_bank():
    rng = np.random.default_rng(0)
    d, k = 6, 3
    feats = {
        s: rng.normal(size=(n, d)).astype(np.float32)
        for s, n in (("train", 60), ("val", 20), ("test", 9))
    }
    labels = {s: rng.integers(0, k, len(f)) for s, f in feats.items()}
    bank = ActivationBank(
        rng.normal(size=(k, d)).astype(np.float32),
        np.zeros(k, np.float32),
        feats,
        labels,
        {"near": {"x": feats["test"]}},
    )
    from sio.evaluate.detectors import fit_detector

    for name in ("msp", "ebo", "react", "knn", "vim", "dice", "gradnorm", "klm"):
        detector = fit_detector(name, bank)
        assert detector.name == name
        np.testing.assert_array_equal(
            detector.score(feats["test"]), detector.score(bank, feats["test"])
        )


def test_a_detector_registered_in_python_is_nameable_in_pipeline_yaml(tmp_path, monkeypatch):
    plugin = tmp_path / "plugin_detectors_for_test.py"
    plugin.write_text(
        textwrap.dedent(
            """
            from sio.evaluate import DETECTORS, Detector


            @DETECTORS.register("norm_for_test")
            class Norm(Detector):
                '''Minus the feature norm.'''

                def score_features(self, features):
                    return -(features.astype("float64") ** 2).sum(axis=1)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        check_plugin_detector(tmp_path)
    finally:  # the registry is process-wide: leave it as the other tests expect it
        from sio.evaluate import DETECTORS

        DETECTORS._entries.pop("norm_for_test", None)
        sys.modules.pop("plugin_detectors_for_test", None)


def check_plugin_detector(tmp_path):
    rng = np.random.default_rng(1)
    feats = {s: rng.normal(size=(12, 4)).astype(np.float32) for s in ("train", "val", "test")}
    labels = {s: np.arange(12) % 2 for s in feats}
    far = (3 * rng.normal(size=(7, 4))).astype(np.float32)
    bank = ActivationBank(
        np.eye(2, 4, dtype=np.float32),
        np.zeros(2, np.float32),
        feats,
        labels,
        {"far": {"wide": far}},
    )
    np.savez(tmp_path / "act.npz", **bank.to_npz_dict())
    (tmp_path / "pipeline.yaml").write_text(
        "evaluate:\n  plugins: [plugin_detectors_for_test]\n  detectors: [norm_for_test, msp]\n"
    )
    result = CliRunner().invoke(
        get_cli(),
        ["evaluate", "--activations", str(tmp_path / "act.npz"), "--out", str(tmp_path / "o"),
         "--config", str(tmp_path / "pipeline.yaml")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    from sklearn.metrics import roc_auc_score

    scores = np.r_[
        -(feats["test"].astype(np.float64) ** 2).sum(1), -(far.astype(float) ** 2).sum(1)
    ]
    expected = 100 * roc_auc_score(np.r_[np.ones(12), np.zeros(7)], scores)
    assert results["metrics"]["norm_for_test"]["far"]["mean"]["auroc"] == pytest.approx(expected)
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluate:\n  plugins: [no_such_module_for_test]\n")
    result = CliRunner().invoke(
        get_cli(),
        ["evaluate", "--activations", str(tmp_path / "act.npz"), "--out", str(tmp_path / "o"),
         "--config", str(bad)],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "plugins[0]: cannot import 'no_such_module_for_test'" in result.output
