"""OpenMax: the Weibull tail fit against scipy, and scores derived by hand or independently."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import weibull_min

from sio.evaluate import ActivationBank, DetectorError, evaluate_bank
from sio.evaluate.detectors import fit_detector
from sio.evaluate.detectors.openmax import LIBMR_TRANSLATION, OpenMax, TailModel, weibull_mle


def test_weibull_mle_matches_scipy():
    samples = weibull_min.rvs(2.5, scale=3.0, size=300, random_state=1)
    shape, _, scale = weibull_min.fit(samples, floc=0)  # independent numerical MLE
    assert weibull_mle(samples) == pytest.approx((shape, scale), rel=1e-4)


def test_libmr_translation_is_the_python_mr_default():
    # libmr.pyx: MR(..., int translate_amount=1), which OpenOOD's libmr.MR() uses
    assert LIBMR_TRANSLATION == 1.0


def test_w_scores_match_libmr():
    # libMR 0.1.9 built once from PyPI: MR().fit_high(sorted(d)[-tail:], tail), then w_score
    reference = json.loads((Path(__file__).parent / "data" / "libmr_w_score.json").read_text())
    for case in reference["cases"]:
        data = np.array(case["data"])
        model = TailModel.fit(data, case["tail_size"])
        scale, shape, sign, translate, small = case["params"]
        assert (sign, translate) == (1, 1)
        assert model.smallest == small
        assert (model.shape, model.scale) == pytest.approx((shape, scale), rel=1e-5)
        np.testing.assert_allclose(
            model.cdf(np.array(case["queries"])), case["w_score"], rtol=1e-5, atol=1e-9
        )


def test_weibull_mle_on_a_libmr_shifted_tail():
    # libMR's data: the tail shifted so that its smallest value is 1
    tail = np.sort(np.random.default_rng(0).normal(5, 1, 100))[-20:]
    shifted = tail - tail[0] + LIBMR_TRANSLATION
    shape, _, scale = weibull_min.fit(shifted, floc=0)
    assert weibull_mle(shifted) == pytest.approx((shape, scale), rel=1e-4)


def test_weibull_mle_needs_spread():
    with pytest.raises(ValueError, match="two distinct values"):
        weibull_mle(np.full(5, 3.0))


def test_tail_model_uses_the_largest_values_shifted_to_1():
    values = np.arange(1.0, 41.0)  # tail 20: 21..40, smallest 21 -> shifted 1..20
    model = TailModel.fit(values, 20)
    assert model.smallest == 21.0
    shape, scale = weibull_mle(np.arange(21.0, 41.0) - 21 + LIBMR_TRANSLATION)
    assert (model.shape, model.scale) == pytest.approx((shape, scale))
    cdf = model.cdf(np.array([-1e12, 0.0, 30.0, 40.0, 1e12]))
    expected_30 = weibull_min.cdf(30 - 21 + LIBMR_TRANSLATION, shape, scale=scale)
    assert cdf[2] == pytest.approx(expected_30)
    assert cdf[0] == 0.0 and cdf[-1] == 1.0  # no overflow, no NaN at the extremes
    assert np.all(np.diff(cdf) >= 0)


def openmax_bank():
    """Three classes, W = I: class k's 30 train logits are 10 e_k plus noise (all correct)."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 30)
    train = 10 * np.eye(3)[labels] + rng.normal(0, 0.5, (90, 3))
    weight = np.eye(3, dtype=np.float32)
    features = {"train": train, "val": train, "test": train}
    split_labels = dict.fromkeys(("train", "val", "test"), labels)
    return ActivationBank(weight, np.zeros(3, np.float32), features, split_labels, {"near": {}})


def test_rank_weights():
    # alpha 3: weights 1, 2/3, 1/3 for the 1st, 2nd, 3rd largest logit
    weights = OpenMax(alpha_rank=3).rank_weights(np.array([[1.0, 3.0, 2.0, 0.0]]))
    np.testing.assert_allclose(weights, [[1 / 3, 1, 2 / 3, 0]])
    weights = OpenMax(alpha_rank=2).rank_weights(np.array([[3.0, 1.0, 2.0]]))
    np.testing.assert_allclose(weights, [[1, 0, 0.5]])


def test_openmax_far_from_every_class_by_hand():
    # z = [30, 20, 10] is > 20 away from every class mean, far beyond every tail: all w = 1.
    # Weights 1, 2/3, 1/3 -> z' = [0, 20/3, 20/3], z_unknown = 30 + 40/3 + 10/3 = 140/3.
    bank = openmax_bank()
    score = fit_detector("openmax", bank).score(bank, np.array([[30.0, 20.0, 10.0]]))
    u = 140 / 3
    expected = -1 / (1 + math.exp(-u) * (1 + 2 * math.exp(20 / 3)))
    np.testing.assert_allclose(score, [expected], rtol=1e-12)


def test_openmax_at_a_class_mean_against_scipy():
    # z = MAV_0 (computed here with numpy): distance 0 to class 0, whose outlier probability
    # w_0 is scipy's Weibull CDF at 0 - smallest + 10000 with scipy's own fit of the shifted
    # tail; classes 1 and 2 have logit ~0, so z'_c ~ z_c there. z' = z * (1 - w), rank weights
    # 1, 2/3, 1/3 by logit.
    bank = openmax_bank()
    train, labels = bank.id_features["train"], bank.id_labels["train"]
    means = np.stack([train[labels == k].mean(axis=0) for k in range(3)])
    z = means[0]
    w = []
    for k in range(3):
        tail = np.sort(np.linalg.norm(train[labels == k] - means[k], axis=1))[-20:]
        shape, _, scale = weibull_min.fit(tail - tail[0] + LIBMR_TRANSLATION, floc=0)
        distance = np.linalg.norm(z - means[k])
        w.append(weibull_min.cdf(distance - tail[0] + LIBMR_TRANSLATION, shape, scale=scale))
    order = np.argsort(-z)
    rank = np.zeros(3)
    rank[order] = [1, 2 / 3, 1 / 3]
    recalibrated = z * (1 - np.array(w) * rank)
    unknown = (z - recalibrated).sum()
    expected = -math.exp(unknown) / (np.exp(recalibrated).sum() + math.exp(unknown))
    score = fit_detector("openmax", bank).score(bank, z[None])
    np.testing.assert_allclose(score, [expected], rtol=1e-3)


def test_openmax_huge_logits_stay_finite():
    # OpenOOD exponentiates float32 logits directly: exp(1000) = inf, inf / inf = NaN
    bank = openmax_bank()
    scores = fit_detector("openmax", bank).score(bank, np.array([[1000.0, 999.0, -5.0]] * 2))
    assert np.isfinite(scores).all()
    assert np.all(scores <= 0) and np.all(scores >= -1)


def test_openmax_class_without_correct_train_samples_is_named():
    bank = openmax_bank()
    labels = bank.id_labels["train"].copy()
    labels[labels == 2] = 1  # class 2 is never the right answer now
    broken = ActivationBank(
        bank.fc_weight, bank.fc_bias, bank.id_features, {**bank.id_labels, "train": labels}, {}
    )
    with pytest.raises(DetectorError, match=r"openmax on id\.train: class 2 has 0 correctly"):
        fit_detector("openmax", broken)


def test_openmax_degenerate_tail_is_named():
    bank = openmax_bank()
    train = bank.id_features["train"].copy()
    train[:30] = [10.0, 0.0, 0.0]  # class 0: all distances 0
    broken = ActivationBank(
        bank.fc_weight, bank.fc_bias, {**bank.id_features, "train": train}, bank.id_labels, {}
    )
    with pytest.raises(DetectorError, match=r"openmax on id\.train: class 0: .*distinct"):
        fit_detector("openmax", broken)


def test_openmax_separates_id_from_far_points():
    bank = openmax_bank()
    ood = np.random.default_rng(4).normal(0, 8, (40, 3)) + np.array([20.0, 20.0, 20.0])
    bank = ActivationBank(
        bank.fc_weight, bank.fc_bias, bank.id_features, bank.id_labels, {"far": {"blob": ood}}
    )
    results = evaluate_bank(bank, ["openmax"])
    assert results["metrics"]["openmax"]["far"]["mean"]["auroc"] > 95
