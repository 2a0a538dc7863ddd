"""evaluate_bank with every detector: results.json's shape, settings from the config, skips."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sio.evaluate import DETECTORS, ActivationBank, DetectorError, evaluate_bank, markdown_table
from sio.evaluate.config import ALL_DETECTORS, EvaluateConfig, KnnSettings, VimSettings
from sio.evaluate.detectors import needs_images

ACTIVATION_DETECTORS = [m for m in ALL_DETECTORS if m != "odin"]


def structured_bank(seed=0, dim=16, classes=4) -> ActivationBank:
    """Non-negative features (as after a ReLU): class k lives on its own block of coordinates,
    near-OOD mixes two blocks at half strength, far-OOD is small and unstructured."""
    rng = np.random.default_rng(seed)
    block = dim // classes
    weight = np.kron(np.eye(classes), np.ones((1, block))) / block

    def id_set(n):
        labels = np.arange(n) % classes
        centres = 4 * np.kron(np.eye(classes), np.ones((1, block)))[labels]
        return np.abs(centres + rng.normal(0, 0.6, (n, dim))).astype(np.float32), labels

    features, labels = {}, {}
    for split, n in (("train", 400), ("val", 80), ("test", 120)):
        features[split], labels[split] = id_set(n)
    mix, _ = id_set(100)
    near = 0.5 * (mix + np.roll(mix, block, axis=1))
    far = np.abs(rng.normal(0, 0.8, (90, dim)))
    ood = {"near": {"mix": near.astype(np.float32)}, "far": {"noise": far.astype(np.float32)}}
    return ActivationBank(
        weight.astype(np.float32), np.zeros(classes, np.float32), features, labels, ood
    )


def test_registry_holds_the_twelve_paper_detectors():
    # the twelve of the paper's Table 1 are the default; godin (a training method's score) is
    # registered too but needs a G-ODIN checkpoint
    # (OpenOOD v1.5's other detectors are registered too: test_detectors_openood15.py)
    assert {*ALL_DETECTORS, "godin"} <= set(DETECTORS.names())
    assert [m for m in ALL_DETECTORS if needs_images(m)] == ["odin"]
    assert needs_images("godin")
    assert EvaluateConfig().detectors == ALL_DETECTORS
    for name in ALL_DETECTORS:
        doc = DETECTORS.get(name).__doc__
        assert "(" in doc and "20" in doc, f"{name}: docstring should cite the paper and year"


def test_every_activation_detector_separates_structured_ood():
    bank = structured_bank()
    results = evaluate_bank(bank, ALL_DETECTORS, config=EvaluateConfig(knn=KnnSettings(k=5)))
    assert results["skipped"] == {"odin": "needs the model and the images: use sio evaluate --run"}
    assert list(results["metrics"]) == ACTIVATION_DETECTORS
    assert results["id_acc"] == pytest.approx(100.0)
    for method in ACTIVATION_DETECTORS:
        far = results["metrics"][method]["far"]["mean"]["auroc"]
        assert far > 90, f"{method}: far AUROC {far:.1f}"


def test_results_shape_and_recorded_settings():
    bank = structured_bank()
    config = EvaluateConfig(knn=KnnSettings(k=3, backend="torch"), vim=VimSettings(dim=5))
    results = evaluate_bank(bank, ["knn", "vim", "react", "msp"], "ood", config=config)
    assert set(results) == {"id_acc", "fpr_convention", "metrics", "skipped", "detectors", "parity"}
    assert results["fpr_convention"] == "ood" and results["skipped"] == {}
    for groups in results["metrics"].values():
        assert set(groups) == {"near", "far"}
        for entry in groups.values():
            assert set(entry) == {"datasets", "mean"}
            assert set(entry["mean"]) == {"fpr95", "auroc", "aupr_in", "aupr_out"}
    assert results["detectors"]["knn"] == {"k": 3, "backend": "torch"}
    assert results["detectors"]["vim"]["dim"] == 5
    assert results["detectors"]["react"]["percentile"] == 90.0
    assert results["detectors"]["msp"] == {}
    table = markdown_table(results)
    assert "Settings: k 3, backend torch." in table
    assert "Skipped" not in table


def test_vim_dim_error_names_detector_dataset_and_cause():
    bank = structured_bank()
    config = EvaluateConfig(vim=VimSettings(dim=16), strict=True)  # D = 16
    with pytest.raises(DetectorError, match=r"vim on id\.train: dim 16 must be in \[1, D\)"):
        evaluate_bank(bank, ["msp", "vim"], config=config)
    # not strict (the default): vim is skipped with that reason, msp is scored
    results = evaluate_bank(bank, ["msp", "vim"], config=dataclasses.replace(config, strict=False))
    assert list(results["metrics"]) == ["msp"]
    assert "vim on id.train: dim 16 must be in [1, D)" in results["skipped"]["vim"]


def test_method_names_are_checked_before_any_work(monkeypatch):
    bank = structured_bank()
    with pytest.raises(ValueError, match="listed twice: msp"):
        evaluate_bank(bank, ["msp", "knn", "msp"])
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        evaluate_bank(bank, ["knn", "nope"])
    with pytest.raises(ValueError, match="must be distinct"):
        dataclasses.replace(EvaluateConfig(), detectors=("msp", "msp"))


def test_zero_feature_vectors_score_finitely_everywhere():
    # a dead-ReLU sample (h = 0) in every set: OpenOOD's KNN normaliser gives NaN on it
    bank = structured_bank()
    zeros = np.zeros((3, 16), np.float32)
    test = np.concatenate([bank.id_features["test"], zeros])
    bank = dataclasses.replace(
        bank,
        id_features={**bank.id_features, "test": test},
        id_labels={**bank.id_labels, "test": np.r_[bank.id_labels["test"], [0, 0, 0]]},
        ood={"far": {"dead": np.concatenate([zeros, bank.ood["far"]["noise"]])}},
    )
    results = evaluate_bank(bank, ACTIVATION_DETECTORS, config=EvaluateConfig(knn=KnnSettings(k=5)))
    assert list(results["metrics"]) == ACTIVATION_DETECTORS
