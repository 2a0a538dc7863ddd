"""evaluate.search: the held-out OOD val split, the grids, the choice, and what results keep."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sio.core.config import ConfigError
from sio.evaluate import (
    ActivationBank,
    DetectorError,
    evaluate_bank,
    evaluate_checkpoint,
    load_activations,
    write_results,
)
from sio.evaluate.config import EvaluateConfig, SearchSettings
from sio.evaluate.detectors import fit_detector
from sio.evaluate.detectors.features import VIM
from sio.evaluate.detectors.knn import KNN
from sio.evaluate.detectors.odin import ODIN
from sio.evaluate.image_scoring import ModelInputs, load_model, score_shard_set
from sio.evaluate.metrics import auroc, ood_metrics
from sio.evaluate.search import ood_split
from sio.pipeline.config import load_pipeline
from sio.shards import read_benchmark

from .tiny_run import write_tiny_run

SEARCH = EvaluateConfig(search=SearchSettings(enabled=True))


def cluster(rng, n, axis, spread, dim=8):
    """n points around the unit vector e_axis with Gaussian noise of std ``spread``."""
    return (np.eye(dim)[axis] + rng.normal(0, spread, (n, dim))).astype(np.float32)


def make_bank(train, val, test, ood, dim=8) -> ActivationBank:
    """W = the first two unit rows (logits = h_0, h_1), b = 0; ID labels all 0."""
    features = {"train": train, "val": val, "test": test}
    labels = {split: np.zeros(len(f), np.int64) for split, f in features.items()}
    weight = np.eye(2, dim, dtype=np.float32)
    return ActivationBank(weight, np.zeros(2, np.float32), features, labels, ood)


def overlapping_bank(seed=0) -> ActivationBank:
    """ID around e0, near-OOD around a mix of e0 and e1, far-OOD around e1 (imperfect AUROCs)."""
    rng = np.random.default_rng(seed)
    near = (cluster(rng, 60, 0, 0.6) + cluster(rng, 60, 1, 0.6)) / 2
    ood = {
        "near": {"mix": near},
        "far": {"e1": cluster(rng, 50, 1, 0.8), "e2": cluster(rng, 40, 2, 0.8)},
    }
    return make_bank(*(cluster(rng, n, 0, 0.6) for n in (120, 40, 60)), ood)


def knn_bank(seed=0) -> ActivationBank:
    """ID train: 120 loose points around e0 (std 0.1) and 60 tight ones around e1 (std 0.01); ID
    val/test around e0 (std 0.1), OOD around e1 (std 0.01). k = 50: the OOD's 50th neighbour is
    in the tight e1 cluster, nearer than ID val's in the loose e0 one (AUROC ~ 0); k = 100: the
    OOD's 100th neighbour is in the e0 cluster, at distance ~ sqrt 2, ID val's still in it
    (AUROC 100). N_train = 180, so the grid is k in {50, 100}."""
    rng = np.random.default_rng(seed)
    train = np.concatenate([cluster(rng, 120, 0, 0.1), cluster(rng, 60, 1, 0.01)])
    ood = {"near": {"e1": cluster(rng, 100, 1, 0.01)}, "far": {}}
    return make_bank(train, cluster(rng, 30, 0, 0.1), cluster(rng, 30, 0, 0.1), ood)


def test_heldout_split_is_seeded_disjoint_and_complete():
    bank = overlapping_bank()
    settings = SearchSettings(enabled=True, ood_val_fraction=0.2, seed=3)
    split, again = ood_split(bank, settings), ood_split(bank, settings)
    other = ood_split(bank, dataclasses.replace(settings, seed=4))
    for group, sets in bank.ood.items():
        for name, feats in sets.items():
            val, test = split.val[group][name], split.test[group][name]
            np.testing.assert_array_equal(val, again.val[group][name])
            assert len(val) == int(0.2 * len(feats))
            assert not set(val) & set(test)
            assert sorted([*val, *test]) == list(range(len(feats)))
            assert not np.array_equal(val, other.val[group][name])
    assert split.val_features(bank).shape == (12 + 10 + 8, 8)


def test_search_test_metrics_use_exactly_the_remaining_samples():
    bank = overlapping_bank()
    split = ood_split(bank, SEARCH.search)
    results = evaluate_bank(bank, ["msp", "react"], config=SEARCH)
    msp = fit_detector("msp", bank)
    id_scores = msp.score(bank, bank.id_features["test"])
    for group, sets in bank.ood.items():
        for name, feats in sets.items():
            test_scores = msp.score(bank, feats[split.test[group][name]])
            expected = ood_metrics(id_scores, test_scores)
            assert results["metrics"]["msp"][group]["datasets"][name] == expected
    # the held-out rows do not reach a test metric: rewriting them changes nothing
    poisoned = {
        group: {name: feats.copy() for name, feats in sets.items()}
        for group, sets in bank.ood.items()
    }
    for group, sets in poisoned.items():
        for name, feats in sets.items():
            feats[split.val[group][name]] = 50 * np.eye(8, dtype=np.float32)[0]
    again = evaluate_bank(dataclasses.replace(bank, ood=poisoned), ["msp"], config=SEARCH)
    assert again["metrics"]["msp"] == results["metrics"]["msp"]
    assert "search" not in results["detectors"]["msp"]  # no grid: settings kept
    assert results["detectors"]["react"]["search"]["ood_val_samples"] == 6 + 5 + 4


def test_search_picks_the_k_that_separates_by_construction():
    bank = knn_bank()
    config = dataclasses.replace(SEARCH, knn=dataclasses.replace(SEARCH.knn, backend="torch"))
    results = evaluate_bank(bank, ["knn"], config=config)
    search = results["detectors"]["knn"]["search"]
    assert search["grid"] == {"k": [50, 100, 200, 500, 1000]}
    assert [c["k"] for c in search["candidates"]] == [50, 100]
    aurocs = [c["val_auroc"] for c in search["candidates"]]
    assert aurocs[0] < 10 and aurocs[1] == 100.0
    assert search["chosen"] == {"k": 100}
    assert results["detectors"]["knn"]["k"] == 100
    assert (search["id_val_samples"], search["ood_val_samples"]) == (30, 10)
    assert results["metrics"]["knn"]["near"]["datasets"]["e1"]["auroc"] == 100.0


def test_ties_pick_the_first_setting():
    # OOD h = 0 scores log 2 under every ReAct clip; ID val (h_0 > 0) scores more: all 100
    rng = np.random.default_rng(1)
    id_sets = [np.abs(cluster(rng, n, 0, 0.1)) for n in (50, 40, 40)]
    bank = make_bank(*id_sets, {"near": {"zero": np.zeros((30, 8), np.float32)}, "far": {}})
    search = evaluate_bank(bank, ["react"], config=SEARCH)["detectors"]["react"]["search"]
    assert [c["val_auroc"] for c in search["candidates"]] == [100.0] * 4
    assert search["chosen"] == {"percentile": 85.0}


def test_grids_are_openood_v15_and_fit_the_bank():
    def bank_of(width, train=10):
        features = np.ones((train, width), np.float32)
        return make_bank(features, features, features, {}, dim=width)

    # recursive_generator's order: the first swept key varies fastest
    assert ODIN.search_settings(None)[:5] == [
        {"temperature": 1.0, "epsilon": 0.0014},
        {"temperature": 10.0, "epsilon": 0.0014},
        {"temperature": 100.0, "epsilon": 0.0014},
        {"temperature": 1000.0, "epsilon": 0.0014},
        {"temperature": 1.0, "epsilon": 0.0028},
    ]
    assert len(ODIN.search_settings(None)) == 8
    dims = {width: [s["dim"] for s in VIM.search_settings(bank_of(width))] for width in (16, 300)}
    assert dims == {16: [8], 300: [256, 150]}
    assert [s["dim"] for s in VIM.search_settings(bank_of(512))] == [256]
    assert [s["dim"] for s in VIM.search_settings(bank_of(2048))] == [256, 1000]
    assert [s["k"] for s in KNN.search_settings(bank_of(4, train=499))] == [50, 100, 200]
    assert KNN.search_settings(bank_of(4, train=20)) == []


def test_results_json_and_md_carry_the_chosen_setting(tmp_path):
    config = dataclasses.replace(SEARCH, knn=dataclasses.replace(SEARCH.knn, backend="torch"))
    write_results(evaluate_bank(knn_bank(), ["knn", "mls"], config=config), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) == {
        "id_acc",
        "fpr_convention",
        "metrics",
        "skipped",
        "detectors",
        "search",
        "parity",
    }
    held_out = saved["search"]["ood_val_samples"]
    assert sum(n for sets in held_out.values() for n in sets.values()) == 10
    assert saved["search"]["ood_val_fraction"] == config.search.ood_val_fraction
    assert saved["detectors"]["knn"]["k"] == 100
    assert saved["detectors"]["knn"]["search"]["chosen"] == {"k": 100}
    assert saved["detectors"]["mls"] == {}
    table = (tmp_path / "results.md").read_text()
    assert "Settings: k 100, backend torch." in table
    assert "Search (ID val 30 vs OOD val 10): chose k 100; val AUROC k 50: " in table


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ood_val_fraction: 0", r"evaluate\.search\.ood_val_fraction: must be in \(0, 0\.5\]"),
        ("ood_val_fraction: 0.6", r"evaluate\.search\.ood_val_fraction: must be in \(0, 0\.5\]"),
        ("enabled: 1", r"evaluate\.search\.enabled: expected true or false"),
        ("seed: 0.5", r"evaluate\.search\.seed: expected an integer"),
        ("grid: {}", r"evaluate\.search\.grid: unknown key"),
    ],
)
def test_config_errors_name_the_field(tmp_path, text, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"evaluate:\n  search: {{{text}}}\n")
    with pytest.raises(ConfigError, match=message):
        load_pipeline(path)


def test_search_is_off_by_default_and_half_is_allowed():
    assert EvaluateConfig().search == SearchSettings(enabled=False, ood_val_fraction=0.1, seed=0)
    assert SearchSettings(ood_val_fraction=0.5).ood_val_fraction == 0.5
    with pytest.raises(ConfigError, match="ood_val_fraction"):
        SearchSettings(ood_val_fraction=-0.1)


def test_an_empty_id_val_is_an_error_naming_the_detector():
    bank = knn_bank()
    bank = dataclasses.replace(
        bank,
        id_features={**bank.id_features, "val": np.zeros((0, 8), np.float32)},
        id_labels={**bank.id_labels, "val": np.zeros(0, np.int64)},
    )
    strict = dataclasses.replace(SEARCH, strict=True)
    with pytest.raises(DetectorError, match=r"knn on id\.val: the search needs ID val"):
        evaluate_bank(bank, ["knn"], config=strict)
    # not strict: knn is skipped with that reason
    skipped = evaluate_bank(bank, ["knn"], config=SEARCH)["skipped"]
    assert "knn on id.val: the search needs ID val" in skipped["knn"]


def test_an_ood_set_too_small_to_split_is_an_error():
    bank = overlapping_bank()
    bank = dataclasses.replace(bank, ood={"near": {"one": bank.ood["near"]["mix"][:1]}})
    with pytest.raises(ValueError, match=r"OOD set near\.one has 1 samples"):
        evaluate_bank(bank, ["msp"], config=SEARCH)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("search"), shard_size=64)


@pytest.mark.usefixtures("one_thread")  # a tiny CNN: more threads only contend
def test_odin_grid_is_searched_on_the_images_with_the_model(tiny_run):
    config = dataclasses.replace(SEARCH, detectors=("odin", "msp"), batch_size=100)
    results = evaluate_checkpoint(tiny_run / "run", tiny_run / "bench", tiny_run / "eval", config)
    search = results["detectors"]["odin"]["search"]
    settings = ODIN.search_settings(None)
    assert [{k: c[k] for k in ("temperature", "epsilon")} for c in search["candidates"]] == settings
    # each candidate by hand: every image of a set scored, then its OOD val rows picked
    bank = load_activations(tiny_run / "eval" / "activations.npz")
    split = ood_split(bank, config.search)
    inputs = ModelInputs(tiny_run / "run" / "checkpoint.pt", tiny_run / "bench", 100)
    model, benchmark = load_model(inputs), read_benchmark(tiny_run / "bench")
    sets = {"near": benchmark.near, "far": benchmark.far}

    def scores(detector, path, rows=None):
        every = score_shard_set(detector, model, path, inputs)
        return every if rows is None else every[rows]

    aurocs = []
    for setting in settings:
        odin = ODIN(**setting)
        ood_val = [
            scores(odin, path, split.val[group][name])
            for group in sets
            for name, path in sets[group].items()
        ]
        aurocs.append(auroc(scores(odin, benchmark.id_splits["val"]), np.concatenate(ood_val)))
    np.testing.assert_allclose([c["val_auroc"] for c in search["candidates"]], aurocs)
    best = settings[int(np.argmax(aurocs))]
    assert (
        search["chosen"] == best
        and results["detectors"]["odin"]["temperature"] == (best["temperature"])
    )
    # the test metrics: ID test against each OOD set's remaining rows, under the chosen setting
    odin = ODIN(**best)
    id_test = scores(odin, benchmark.id_splits["test"])
    near_name, near_path = next(iter(benchmark.near.items()))
    near_test = scores(odin, near_path, split.test["near"][near_name])
    expected = ood_metrics(id_test, near_test)
    got = results["metrics"]["odin"]["near"]["datasets"][near_name]
    assert got == pytest.approx(expected)
