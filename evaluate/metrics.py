"""OOD metrics from detector scores (higher = more ID), with scikit-learn's curves.

- AUROC: area under the ROC curve (ties count 1/2); the same with ID or OOD as positive.
- FPR@95TPR, convention ``"id"`` (the literature's, SIO's): ID is positive; the fraction of OOD
  accepted at the first threshold that accepts >= 95% of ID. Convention ``"ood"`` (OpenOOD
  v1.5's): OOD is positive; the fraction of ID rejected when >= 95% of OOD is rejected.
- AUPR-In / AUPR-Out: trapezoidal area under the precision-recall curve with ID (score) or OOD
  (-score) as positive, as OpenOOD computes it.
All values are returned in percent.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out")


def fpr_at_95_tpr(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """FPR at the first ROC point with TPR >= 0.95 (positives should score higher)."""
    labels = np.r_[np.ones(len(positive_scores)), np.zeros(len(negative_scores))]
    fpr, tpr, _ = roc_curve(labels, np.r_[positive_scores, negative_scores])
    return float(fpr[np.argmax(tpr >= 0.95)])


def _aupr(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(auc(recall, precision))


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """AUROC in percent with ID as positive (the search's criterion)."""
    is_id = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    return 100 * float(roc_auc_score(is_id, np.r_[id_scores, ood_scores]))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray, fpr_convention: str = "id"):
    """{fpr95, auroc, aupr_in, aupr_out} in percent for one ID/OOD pair."""
    if fpr_convention not in ("id", "ood"):
        raise ValueError(f"fpr_convention is 'id' or 'ood', got {fpr_convention!r}")
    is_id = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    scores = np.r_[id_scores, ood_scores]
    if fpr_convention == "id":
        fpr95 = fpr_at_95_tpr(id_scores, ood_scores)
    else:
        fpr95 = fpr_at_95_tpr(-ood_scores, -id_scores)
    return {
        "fpr95": 100 * fpr95,
        "auroc": auroc(id_scores, ood_scores),
        "aupr_in": 100 * _aupr(is_id, scores),
        "aupr_out": 100 * _aupr(1 - is_id, -scores),
    }


def mean_metrics(per_dataset: dict[str, dict[str, float]]) -> dict[str, float]:
    """Unweighted mean per metric over datasets (OpenOOD's near/far rows)."""
    return {m: float(np.mean([d[m] for d in per_dataset.values()])) for m in METRICS}
