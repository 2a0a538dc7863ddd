"""sio.evaluate.metrics against values counted by hand on tiny score lists.

Scores are "higher = more in-distribution". Every expected value below is derived in the
comment next to it; none comes from running the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc, precision_recall_curve

from sio.evaluate.metrics import METRICS, fpr_at_95_tpr, mean_metrics, ood_metrics


def metrics(id_scores, ood_scores, convention="id"):
    return ood_metrics(np.asarray(id_scores, float), np.asarray(ood_scores, float), convention)


def test_auroc_counts_pairs():
    # (id, ood) pairs: (3,2.5) (3,0) (2,0) (1,0) are ordered right, (2,2.5) (1,2.5) wrong: 4/6.
    assert metrics([3, 2, 1], [2.5, 0])["auroc"] == pytest.approx(100 * 4 / 6)


def test_auroc_counts_ties_as_half():
    # pairs: 3>2, 3>0, 2=2 (1/2), 2>0, 1<2, 1>0 -> 4.5 / 6.
    assert metrics([3, 2, 1], [2, 0])["auroc"] == pytest.approx(100 * 4.5 / 6)


def test_fpr95_conventions_differ_on_small_example():
    # "id": accept >= 95% of 3 ID scores = all 3, so the threshold is 1 (accept s >= 1);
    #        OOD accepted: 2.5 of {2.5, 0} -> 1/2.
    # "ood": OOD is positive; reject >= 95% of 2 OOD = both, so reject s <= 2.5;
    #        ID rejected: 2 and 1 of {3, 2, 1} -> 2/3.
    assert metrics([3, 2, 1], [2.5, 0], "id")["fpr95"] == pytest.approx(50.0)
    assert metrics([3, 2, 1], [2.5, 0], "ood")["fpr95"] == pytest.approx(100 * 2 / 3)


def test_fpr95_uses_first_threshold_reaching_95_percent():
    # ID = 1..20: accepting 19 of 20 (exactly 95%) needs threshold 2, which accepts the OOD
    # score 10.5 but not 1.5 or 0 -> FPR 1/3 (a threshold of 1 would give 2/3).
    id_scores = np.arange(1, 21, dtype=float)
    ood_scores = np.array([1.5, 10.5, 0.0])
    assert metrics(id_scores, ood_scores, "id")["fpr95"] == pytest.approx(100 / 3)
    # OOD positive: all 3 OOD must be rejected (2/3 < 95%), i.e. reject s <= 10.5, which
    # rejects ID 1..10 -> 10/20.
    assert metrics(id_scores, ood_scores, "ood")["fpr95"] == pytest.approx(50.0)
    # the low-level function takes (positive, negative) scores directly
    assert fpr_at_95_tpr(id_scores, ood_scores) == pytest.approx(1 / 3)


def test_fpr95_ties_at_threshold_count_as_accepted():
    # threshold 1 is needed for all ID; OOD scores 1 (tied) and 0 -> the tied one is accepted.
    assert metrics([3, 2, 1], [1, 0], "id")["fpr95"] == pytest.approx(50.0)


@pytest.mark.parametrize("convention", ["id", "ood"])
def test_perfect_separation(convention):
    result = metrics([5, 6, 7], [1, 2], convention)
    assert result == pytest.approx(
        {"fpr95": 0.0, "auroc": 100.0, "aupr_in": 100.0, "aupr_out": 100.0}
    )


@pytest.mark.parametrize("convention", ["id", "ood"])
def test_reversed_scores(convention):
    result = metrics([1, 2], [5, 6, 7], convention)
    assert result["auroc"] == pytest.approx(0.0)
    assert result["fpr95"] == pytest.approx(100.0)


def test_aupr_hand_computed_trapezoid():
    # id = [4, 3, 1], ood = [2].
    # AUPR-In (ID positive), thresholds from the top, as (recall, precision):
    #   4: (1/3, 1)   3: (2/3, 1)   2: (2/3, 2/3)   1: (1, 3/4), plus the end point (0, 1).
    #   trapezoids: 1/3*1 + 1/3*1 + 0 + 1/3*(2/3 + 3/4)/2 = 2/3 + 17/72 = 65/72.
    # AUPR-Out (OOD positive, score -s): -1 (an ID): (0, 0); -2 (the OOD): (1, 1/2);
    #   -3: (1, 1/3); -4: (1, 1/4); end point (0, 1).
    #   trapezoids: the only step in recall is 0 -> 1 with precision 0 -> 1/2: 1/4.
    # AUROC: 4>2, 3>2, 1<2 -> 2/3.
    result = metrics([4, 3, 1], [2])
    assert result["aupr_in"] == pytest.approx(100 * 65 / 72)
    assert result["aupr_out"] == pytest.approx(25.0)
    assert result["auroc"] == pytest.approx(100 * 2 / 3)


def test_aupr_matches_independent_sklearn_computation():
    rng = np.random.default_rng(0)
    id_scores = rng.normal(1.0, 1.0, 50)
    ood_scores = rng.normal(0.0, 1.0, 30)
    labels = np.r_[np.ones(50), np.zeros(30)]
    scores = np.r_[id_scores, ood_scores]
    p_in, r_in, _ = precision_recall_curve(labels, scores)
    p_out, r_out, _ = precision_recall_curve(1 - labels, -scores)
    # AUROC independently: the fraction of (id, ood) pairs in the right order (no ties here).
    pairs = (id_scores[:, None] > ood_scores[None, :]).mean()
    result = metrics(id_scores, ood_scores)
    assert result["aupr_in"] == pytest.approx(100 * auc(r_in, p_in))
    assert result["aupr_out"] == pytest.approx(100 * auc(r_out, p_out))
    assert result["auroc"] == pytest.approx(100 * pairs)
    # AUROC does not depend on which side is positive; the conventions only change FPR@95.
    assert metrics(id_scores, ood_scores, "ood")["auroc"] == pytest.approx(result["auroc"])


def test_invalid_convention_raises():
    with pytest.raises(ValueError, match="fpr_convention"):
        metrics([1, 2], [0], "both")


def test_mean_metrics_is_unweighted():
    per_dataset = {
        "a": {"fpr95": 10.0, "auroc": 90.0, "aupr_in": 80.0, "aupr_out": 70.0},
        "b": {"fpr95": 30.0, "auroc": 60.0, "aupr_in": 40.0, "aupr_out": 20.0},
        "c": {"fpr95": 50.0, "auroc": 30.0, "aupr_in": 0.0, "aupr_out": 50.0},
    }
    mean = mean_metrics(per_dataset)
    assert set(mean) == set(METRICS)
    assert mean == pytest.approx(
        {"fpr95": 30.0, "auroc": 60.0, "aupr_in": 40.0, "aupr_out": 140 / 3}
    )


def test_mean_metrics_ignores_dataset_sizes():
    # a small and a large OOD set count equally: the mean of the two AUROCs, not a pooled AUROC.
    small = metrics([3, 2, 1], [2.5, 0])  # AUROC 4/6
    large = metrics([3, 2, 1], [5.0] * 50)  # AUROC 0
    assert mean_metrics({"s": small, "l": large})["auroc"] == pytest.approx(100 * 2 / 6)
