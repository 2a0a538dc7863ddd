"""Tampered inputs to `sio evaluate`, end to end on a tiny benchmark and classifier written here:
a checkpoint whose fc.weight holds a NaN (and a foreign model's state dict, and a model given to
``Evaluator``) is named with its path and parameter before any image is read; a benchmark whose
shard was replaced by another shard with the same number of samples is named by its shard."""

from __future__ import annotations

import shutil

import pytest
import torch
from click.testing import CliRunner

from sio.cli import get_cli
from sio.evaluate import Evaluator, ModelError
from sio.shards import write_benchmark
from sio.shards.config import DigitsConfig, ShardConfig
from sio.shardset import read_manifest

from .failures import one_line_failure
from .tiny_run import write_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_pipeline_yaml(tmp_path, monkeypatch):
    """Run the commands where no ./pipeline.yaml is picked up."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("tampered"), shard_size=512)


def run_cli(args):
    return CliRunner().invoke(get_cli(), args)


def no_images_read(monkeypatch):
    """Make reading any benchmark image fail the test: the check must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("an image was read before the model was checked")

    for target in (
        "sio.evaluate.activations.iter_batches",
        "sio.evaluate.image_scoring.iter_batches",
    ):
        monkeypatch.setattr(target, refuse)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nan_in_the_checkpoints_fc_weight_is_named_before_any_image(
    tiny, tmp_path, monkeypatch, value
):
    state = torch.load(tiny / "run" / "checkpoint.pt", weights_only=True)
    weight = state["model_state"]["fc.weight"].clone()
    weight[1, 3] = value
    state["model_state"]["fc.weight"] = weight
    run = tmp_path / "nan_run"
    run.mkdir()
    torch.save(state, run / "checkpoint.pt")
    no_images_read(monkeypatch)
    out = tmp_path / "out"
    args = ["evaluate", "--run", str(run), "--benchmark", str(tiny / "bench"), "--out", str(out)]
    one_line_failure(
        run_cli([*args, "--detectors", "msp"]), str(run / "checkpoint.pt"), "parameter fc.weight"
    )
    assert not (out / "results.json").exists() and not (out / "activations.npz").exists()


def test_a_nan_in_a_state_dict_for_model_is_named_with_its_path(tiny, tmp_path, monkeypatch):
    import torchvision

    model = torchvision.models.resnet18(num_classes=2)
    state = model.state_dict()
    state["layer1.0.bn1.running_var"][0] = float("nan")
    weights = tmp_path / "w.pt"
    torch.save(state, weights)
    no_images_read(monkeypatch)
    args = ["evaluate", "--model", "torchvision:resnet18", "--weights", str(weights)]
    result = run_cli([*args, "--benchmark", str(tiny / "bench"), "--out", str(tmp_path / "o")])
    one_line_failure(result, str(weights), "parameter layer1.0.bn1.running_var", "1 NaN or inf")


def test_evaluator_names_a_non_finite_parameter_of_the_model_it_is_given(tiny):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    with pytest.raises(ModelError, match=r"model Sequential: parameter 1\.bias holds 1 NaN"):
        Evaluator(model, benchmark=tiny / "bench", fc_name="1", normalize="none")


def test_a_shard_replaced_by_another_of_equal_count_is_named(tiny, tmp_path):
    """Another benchmark of the same sizes (another seed: other images in each split): its
    id_test shard copied over ours has the same sample count, but not the manifest's sha256."""
    bench = tmp_path / "bench"
    shutil.copytree(tiny / "bench", bench)
    digits = DigitsConfig(id_classes=(0, 1), near_ood_classes=(2,), far_ood_images_per_set=16)
    write_benchmark(ShardConfig(shard_size=512, seed=1, digits=digits), tmp_path / "other")
    ours, theirs = read_manifest(bench / "id_test"), read_manifest(tmp_path / "other" / "id_test")
    assert ours.num_samples == theirs.num_samples
    shard = bench / "id_test" / "shard-000000.tar"
    assert shard.read_bytes() != (tmp_path / "other" / "id_test" / shard.name).read_bytes()
    shutil.copyfile(tmp_path / "other" / "id_test" / shard.name, shard)
    out = tmp_path / "out"
    args = ["evaluate", "--run", str(tiny / "run"), "--benchmark", str(bench), "--out", str(out)]
    one_line_failure(run_cli([*args, "--detectors", "msp"]), str(shard), "sha256")
    assert not (out / "results.json").exists() and not (out / "activations.npz").exists()
    # the untouched copy of the same benchmark evaluates (the failure is the shard's)
    clean = ["evaluate", "--run", str(tiny / "run"), "--benchmark", str(tiny / "bench")]
    assert run_cli([*clean, "--out", str(tmp_path / "ok"), "--detectors", "msp"]).exit_code == 0
