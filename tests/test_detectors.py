"""sio.evaluate.detectors and evaluate_bank on small hand-made activation banks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sio.evaluate import (
    DETECTORS,
    ActivationBank,
    ActivationsError,
    DetectorError,
    evaluate_bank,
    markdown_table,
)
from sio.evaluate.detectors import finite_scores, fit_detector
from sio.evaluate.metrics import METRICS, ood_metrics

LN3 = math.log(3.0)


def make_bank(test_features, test_labels, ood, *, weight=None, bias=None) -> ActivationBank:
    test_features = np.asarray(test_features, np.float32)
    dim = test_features.shape[1]
    weight = np.eye(2, dim, dtype=np.float32) if weight is None else np.asarray(weight, np.float32)
    bias = np.zeros(len(weight), np.float32) if bias is None else np.asarray(bias, np.float32)
    features = dict.fromkeys(("train", "val", "test"), test_features)
    labels = dict.fromkeys(("train", "val", "test"), np.asarray(test_labels, np.int64))
    ood = {
        group: {k: np.asarray(v, np.float32) for k, v in sets.items()}
        for group, sets in ood.items()
    }
    return ActivationBank(weight, bias, features, labels, ood)


# rows of h; with W = I and b = 0 the logits are h itself.
ROWS = np.array([[0.0, 0.0], [1.0, 0.0], [LN3, 0.0], [0.0, LN3]])
# softmax max: [0,0] -> 1/2; [1,0] -> e/(e+1); [ln3,0] -> 3/(3+1); [0,ln3] -> 3/4
MSP = [0.5, math.e / (math.e + 1), 0.75, 0.75]
MLS = [0.0, 1.0, LN3, LN3]
# log(e^a + e^b): log 2, log(e + 1), log 4, log 4
EBO = [math.log(2), math.log(math.e + 1), math.log(4), math.log(4)]


@pytest.fixture
def bank():
    return make_bank(ROWS, [0, 0, 0, 1], {"near": {"x": ROWS}, "far": {}})


@pytest.mark.parametrize(("name", "expected"), [("msp", MSP), ("mls", MLS), ("ebo", EBO)])
def test_scores_by_hand(bank, name, expected):
    detector = fit_detector(name, bank)
    assert detector.name == name
    np.testing.assert_allclose(detector.score(bank, ROWS), expected, rtol=1e-6)


@pytest.mark.parametrize(("name", "expected"), [("msp", 0.75), ("mls", LN3), ("ebo", math.log(4))])
def test_bias_is_added_to_logits(name, expected):
    # h = [0, 0] with b = [0, ln 3]: logits [0, ln 3] -> MSP 3/4, MLS ln 3, EBO log 4.
    bank = make_bank(ROWS, [0, 0, 0, 1], {"near": {"x": ROWS}}, bias=[0.0, LN3])
    score = fit_detector(name, bank).score(bank, np.zeros((1, 2)))
    np.testing.assert_allclose(score, [expected], rtol=1e-6)


def test_weight_is_applied_as_h_times_w_transpose():
    # W = [[1, 2], [0, 1]]: h = [1, 1] gives logits [1*1 + 2*1, 0*1 + 1*1] = [3, 1].
    bank = make_bank(ROWS, [0, 0, 0, 1], {"near": {"x": ROWS}}, weight=[[1, 2], [0, 1]])
    np.testing.assert_allclose(bank.logits(np.array([[1.0, 1.0]])), [[3.0, 1.0]])
    score = fit_detector("mls", bank).score(bank, np.array([[1.0, 1.0]]))
    np.testing.assert_allclose(score, [3.0])


def gaussian_bank(seed=0):
    """ID features near 6 * e_class, OOD features near 0: every detector should separate them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(200) % 2
    id_feats = 6.0 * np.eye(2)[labels] + rng.normal(0, 0.5, (200, 2))
    near = rng.normal(0, 0.5, (150, 2))
    far = rng.normal(0, 0.5, (100, 2))
    return make_bank(id_feats, labels, {"near": {"n1": near}, "far": {"f1": far}})


@pytest.mark.parametrize("name", ["msp", "mls", "ebo"])
def test_higher_score_means_more_in_distribution(name):
    results = evaluate_bank(gaussian_bank(), [name])
    for group in ("near", "far"):
        assert results["metrics"][name][group]["mean"]["auroc"] > 99
        assert results["metrics"][name][group]["mean"]["fpr95"] < 5


def test_energy_is_stable_for_large_logits():
    bank = make_bank(ROWS, [0, 0, 0, 1], {"near": {"x": ROWS}})
    big = np.array([[1000.0, 999.0], [1000.0, 1000.0], [-1000.0, -1001.0]])
    ebo = fit_detector("ebo", bank).score(bank, big)
    assert np.all(np.isfinite(ebo))
    # logsumexp = max + log(sum exp(z - max))
    expected = [
        1000 + math.log(1 + math.exp(-1)),
        1000 + math.log(2),
        -1000 + math.log(1 + math.exp(-1)),
    ]
    np.testing.assert_allclose(ebo, expected, rtol=1e-12)
    msp = fit_detector("msp", bank).score(bank, big)
    np.testing.assert_allclose(msp, [1 / (1 + math.exp(-1)), 0.5, 1 / (1 + math.exp(-1))])


@pytest.mark.parametrize("name", ["msp", "mls", "ebo"])
def test_nan_scores_raise_naming_detector_and_dataset(name):
    bad = np.array([[1.0, 0.0], [np.nan, 0.0]])
    bank = make_bank(ROWS, [0, 0, 0, 1], {"near": {"x": ROWS}})
    detector = fit_detector(name, bank)
    with pytest.raises(DetectorError, match=rf"{name}.*1 non-finite.*ood\.far\.broken"):
        finite_scores(detector, bank, bad, "ood.far.broken")
    # a bank refuses the NaN when it is made, naming the array and the row
    with pytest.raises(ActivationsError, match=r"ood\.far\.broken\.features row 1 holds NaN"):
        make_bank(ROWS, [0, 0, 0, 1], {"near": {"x": ROWS}, "far": {"broken": bad}})


def test_finite_scores_pass_through(bank):
    detector = fit_detector("mls", bank)
    np.testing.assert_allclose(finite_scores(detector, bank, ROWS, "id.test"), MLS)


def test_registry_rejects_unknown_names(bank):
    assert {"msp", "mls", "ebo"} <= set(DETECTORS.names())
    with pytest.raises(ValueError, match=r"unknown detector 'nope'.*known: .*ebo.*mls.*msp"):
        fit_detector("nope", bank)
    with pytest.raises(ValueError, match="nope"):
        evaluate_bank(bank, ["msp", "nope"])


def test_evaluate_bank_structure_and_values():
    # test set: logits = h; rows 0-3 are [2,0] [0,2] [2,0] [0,2] with labels 0 1 1 1 -> 3 of 4
    # right (row 2 predicts 0, label 1); row 4 [1, 3] label 1 right -> 4 of 5 = 80%.
    test = np.array([[2, 0], [0, 2], [2, 0], [0, 2], [1, 3]], float)
    labels = [0, 1, 1, 1, 1]
    near = {"n1": np.array([[0.5, 0.2], [2.5, 0]]), "n2": np.array([[0.1, 0.1]])}
    far = {"f1": np.array([[0.0, 0.0], [0.2, 0.1], [3.0, 0.0]])}
    bank = make_bank(test, labels, {"near": near, "far": far})
    results = evaluate_bank(bank, ["msp", "ebo"], "ood")
    assert results["id_acc"] == pytest.approx(80.0)
    assert results["fpr_convention"] == "ood"
    assert list(results["metrics"]) == ["msp", "ebo"]
    for method in ("msp", "ebo"):
        detector = fit_detector(method, bank)
        id_scores = detector.score(bank, test)
        for group, sets in (("near", near), ("far", far)):
            entry = results["metrics"][method][group]
            assert set(entry) == {"datasets", "mean"}
            assert set(entry["datasets"]) == set(sets)
            for name, feats in sets.items():
                expected = ood_metrics(id_scores, detector.score(bank, feats), "ood")
                assert set(entry["datasets"][name]) == set(METRICS)
                assert entry["datasets"][name] == pytest.approx(expected)
            for metric in METRICS:
                values = [entry["datasets"][n][metric] for n in sets]
                assert entry["mean"][metric] == pytest.approx(np.mean(values))
    table = markdown_table(results)
    lines = table.splitlines()
    assert "ood-positive" in lines[0]
    assert lines.count("### msp") == 1 and lines.count("### ebo") == 1
    nearood = [line for line in lines if line.startswith("| nearood |")]
    farood = [line for line in lines if line.startswith("| farood |")]
    assert len(nearood) == 2 and len(farood) == 2  # one per method
    # the msp nearood row carries the mean values and the ID accuracy, two decimals
    mean = results["metrics"]["msp"]["near"]["mean"]
    cells = [f"{mean[m]:.2f}" for m in METRICS] + ["80.00"]
    assert nearood[0] == "| nearood | " + " | ".join(cells) + " |"


def test_evaluate_bank_skips_empty_group():
    bank = make_bank(ROWS, [0, 0, 0, 1], {"near": {"x": ROWS[:2]}, "far": {}})
    results = evaluate_bank(bank, ["mls"])
    assert set(results["metrics"]["mls"]) == {"near"}
    assert "farood" not in markdown_table(results)
