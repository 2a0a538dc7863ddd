"""Hostile activation files and mismatched inputs: `sio evaluate` exits non-zero with one line
naming the array (and row) or the detector, and never writes NaN into results.json."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from sio.cli import get_cli
from sio.evaluate import ActivationBank, ActivationsError, DetectorError, evaluate_bank
from sio.evaluate.config import ALL_DETECTORS
from sio.evaluate.detectors import base, fit_detector
from sio.evaluate.detectors.knn import FaissSearch
from sio.evaluate.evaluate import write_results

from .failures import one_line_failure

ACTIVATION_DETECTORS = [m for m in ALL_DETECTORS if m != "odin"]


def random_bank(seed: int, k: int = 4, d: int = 16) -> ActivationBank:
    """Features clustered by class so that OpenMax finds correct train samples in every class."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(k, d)).astype(np.float32)
    centres = np.abs(rng.normal(0, 3, (k, d)))

    def split(n):
        labels = np.arange(n) % k
        feats = np.abs(centres[labels] + rng.normal(0, 0.5, (n, d)))
        # make the fc classify by cluster: W = centres (normalised), so most are correct
        return feats.astype(np.float32), labels.astype(np.int64)

    weight = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    train, val, test = split(int(rng.integers(80, 160))), split(40), split(int(rng.integers(9, 40)))
    ood = {
        "near": {"n": np.abs(rng.normal(1, 2, (int(rng.integers(3, 30)), d))).astype(np.float32)},
        "far": {"f": np.abs(rng.normal(4, 1, (int(rng.integers(2, 20)), d))).astype(np.float32)},
    }
    return ActivationBank(
        weight,
        rng.normal(0, 0.1, k).astype(np.float32),
        {"train": train[0], "val": val[0], "test": test[0]},
        {"train": train[1], "val": val[1], "test": test[1]},
        ood,
    )


def run_cli(args):
    return CliRunner().invoke(get_cli(), args)


def save(path, bank: ActivationBank, **changes):
    arrays = bank.to_npz_dict()
    for key, value in changes.items():
        arrays[key.replace("__", ".")] = value
    np.savez(path, **arrays)
    return path


@pytest.fixture(autouse=True)
def no_pipeline_yaml(tmp_path, monkeypatch):
    """Run the commands where no ./pipeline.yaml is picked up."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("seed", range(3))
def test_every_detector_gives_finite_results_on_random_banks(tmp_path, seed):
    bank = random_bank(seed)
    results = evaluate_bank(bank, ACTIVATION_DETECTORS)
    write_results(results, tmp_path)
    text = (tmp_path / "results.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in results.json"))
    for method in ACTIVATION_DETECTORS:
        for group in ("near", "far"):
            assert all(math.isfinite(v) for v in results["metrics"][method][group]["mean"].values())


@pytest.mark.parametrize(
    ("key", "rows"),
    [("ood.near.n.features", 0), ("ood.far.f.features", 0), ("id.test.features", 0)],
)
def test_zero_row_sets_exit_non_zero_naming_the_array(tmp_path, key, rows):
    bank = random_bank(0)
    changes = {key: np.zeros((rows, 16), np.float32)}
    if key.startswith("id."):
        changes["id.test.labels"] = np.zeros(0, np.int64)
    path = save(tmp_path / "a.npz", bank, **changes)
    result = run_cli(["evaluate", "--activations", str(path), "--out", str(tmp_path / "o")])
    one_line_failure(result, str(path), key, "0 rows")
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_anywhere_is_named_with_its_row(tmp_path, seed, value):
    rng = np.random.default_rng(seed)
    bank = random_bank(seed)
    arrays = bank.to_npz_dict()
    keys = [k for k in arrays if k.endswith(".features")]
    key = keys[int(rng.integers(len(keys)))]
    features = arrays[key].copy()
    row = int(rng.integers(len(features)))
    features[row, int(rng.integers(features.shape[1]))] = value
    path = save(tmp_path / "a.npz", bank, **{key: features})
    with pytest.raises(ActivationsError, match=rf"{key} row {row} holds"):
        from sio.evaluate import load_activations

        load_activations(path)
    result = run_cli(["evaluate", "--activations", str(path), "--out", str(tmp_path / "o")])
    what = "NaN" if np.isnan(value) else "inf"
    one_line_failure(result, key, f"row {row} holds {what}")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0, 1, 4]), "row 2 is 4, outside [0, 4)"),
        (np.array([0, -1, 2]), "row 1 is -1, outside [0, 4)"),
        (np.array([0.0, 1.0, 2.0]), "dtype float64; class labels are integers"),
        (np.array([True, False, True]), "dtype bool"),
    ],
)
def test_bad_labels_are_named(tmp_path, labels, message):
    bank = random_bank(1)
    features = bank.id_features["test"][:3]
    path = save(tmp_path / "a.npz", bank, id__test__features=features, id__test__labels=labels)
    result = run_cli(["evaluate", "--activations", str(path), "--out", str(tmp_path / "o")])
    one_line_failure(result, "id.test.labels", message)


def test_integer_features_and_a_bad_fc_are_named(tmp_path):
    bank = random_bank(2)
    path = save(tmp_path / "a.npz", bank, fc__bias=np.array([0.0, np.nan, 0.0, 0.0]))
    result = run_cli(["evaluate", "--activations", str(path), "--out", str(tmp_path / "o")])
    one_line_failure(result, "fc.bias entry 1 holds NaN")
    ints = bank.id_features["train"].astype(np.int32)
    path = save(tmp_path / "b.npz", bank, id__train__features=ints)
    result = run_cli(["evaluate", "--activations", str(path), "--out", str(tmp_path / "o")])
    one_line_failure(result, "id.train.features has dtype int32")


def test_one_nan_in_id_train_no_longer_reaches_dice_or_vim():
    bank = random_bank(3)
    train = bank.id_features["train"].copy()
    train[5, 2] = np.nan
    with pytest.raises(ActivationsError, match=r"id\.train\.features row 5 holds NaN"):
        ActivationBank(
            bank.fc_weight,
            bank.fc_bias,
            {**bank.id_features, "train": train},
            bank.id_labels,
            bank.ood,
        )


def test_faiss_knn_refuses_non_finite_rows_instead_of_flt_max(monkeypatch):
    bank = random_bank(4)
    knn = fit_detector("knn", bank)
    assert knn.info()["backend"] == "faiss"
    queries = bank.ood["near"]["n"].copy()
    queries[5, 0] = np.nan
    # the row is named by its place among all queries, even where other detectors score a
    # row at a time
    monkeypatch.setattr(base, "BLOCK_VALUES", 1)
    with pytest.raises(DetectorError, match=r"knn on its input: row 5 has NaN or inf"):
        knn.score(queries)
    # and the search itself: faiss answers NaN with FLT_MAX distances; those are refused too
    search = FaissSearch(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="row 1: faiss found no neighbour"):
        search.kth_sq_distance(np.array([[1, 0, 0], [np.nan, 0, 0]], np.float32), 1)


def test_an_ill_conditioned_fc_warns_naming_vim_and_stays_finite(tmp_path):
    bank = random_bank(5)
    weight = bank.fc_weight.copy()
    weight[3] = weight[2] * (1 + 1e-9)  # rank-deficient: u = -pinv(W) b is rounding noise
    bank = ActivationBank(weight, bank.fc_bias, bank.id_features, bank.id_labels, bank.ood)
    with pytest.warns(RuntimeWarning, match="detector vim: fc.weight is rank-deficient"):
        results = evaluate_bank(bank, ["vim"])
    assert "rank-deficient" in results["detectors"]["vim"]["warning"]
    write_results(results, tmp_path)  # finite, so it is written
    # a well-conditioned fc gives no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_bank(random_bank(5), ["vim"])


def test_results_with_nan_are_never_written(tmp_path):
    results = evaluate_bank(random_bank(6), ["msp"])
    results["metrics"]["msp"]["near"]["mean"]["auroc"] = float("nan")
    with pytest.raises(ValueError, match=r"results\.metrics\.msp\.near\.mean\.auroc is not"):
        write_results(results, tmp_path)
    assert not (tmp_path / "results.json").exists()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from .tiny_run import write_tiny_run

    return write_tiny_run(tmp_path_factory.mktemp("hostile"), shard_size=512)


def rewrite_checkpoint(tiny, name, **changes):
    import torch

    state = torch.load(tiny / "run" / "checkpoint.pt", weights_only=False)
    state.update(changes)
    folder = tiny / name
    folder.mkdir(exist_ok=True)
    torch.save(state, folder / "checkpoint.pt")
    return folder


def test_a_checkpoint_for_another_image_size_or_class_list_is_refused(tiny):
    from sio.shardset import read_manifest

    size = read_manifest(tiny / "bench" / "id_test").image_size
    wrong = rewrite_checkpoint(tiny, "wrong_size", image_size=[size[0] * 2, size[1] * 2])
    out = tiny / "eval_wrong"
    args = ["evaluate", "--run", str(wrong), "--benchmark", str(tiny / "bench"), "--out"]
    result = run_cli([*args, str(out), "--detectors", "msp"])
    one_line_failure(result, f"trained on {size[0] * 2}x{size[1] * 2} images", "holds")
    assert not (out / "activations.npz").exists()
    renamed = rewrite_checkpoint(tiny, "wrong_classes", class_names=["zero", "one"])
    result = run_cli(
        ["evaluate", "--run", str(renamed), "--benchmark", str(tiny / "bench"), "--out", str(out)]
    )
    one_line_failure(result, "trained on 2 classes ['zero', 'one']", "but benchmark")


def test_results_and_run_record_the_benchmark_and_report_refuses_a_mix(tiny, tmp_path):
    import shutil

    from sio.core.files import sha256_file
    from sio.evaluate import evaluate_checkpoint
    from sio.evaluate.config import EvaluateConfig

    config = EvaluateConfig(detectors=("msp",))
    first = tmp_path / "a"
    results = evaluate_checkpoint(tiny / "run", tiny / "bench", first, config)
    record = {"name": "digits", "sha256": sha256_file(tiny / "bench" / "benchmark.json")}
    assert results["benchmark"]["sha256"] == record["sha256"]
    assert json.loads((first / "run.json").read_text())["benchmark"] == results["benchmark"]
    assert json.loads((first / "results.json").read_text())["benchmark"] == results["benchmark"]
    # a second run folder, "evaluated" on an edited benchmark
    second = tmp_path / "b"
    shutil.copytree(first, second)
    run = json.loads((second / "run.json").read_text())
    run["seed"] = 8
    run["benchmark"] = {**run["benchmark"], "sha256": "0" * 64}
    (second / "run.json").write_text(json.dumps(run))
    result = run_cli(["report", str(first), str(second)])
    one_line_failure(result, "evaluated on different benchmarks", "evaluate them all on one")
    run["benchmark"] = results["benchmark"]
    (second / "run.json").write_text(json.dumps(run))
    assert run_cli(["report", str(first), str(second)]).exit_code == 0
