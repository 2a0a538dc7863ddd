"""Each fast detector against a plain float64 NumPy reference written from its paper's formula,
on random banks of odd sizes over several seeds: float64 features to 1e-9 relative, float32
features (multiplied in float32, as documented) to float32 rounding, with the same ranking."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sio.evaluate import ActivationBank
from sio.evaluate.detectors import base, features, fit_detector
from sio.evaluate.detectors.features import DICE, VIM, ReAct
from sio.evaluate.detectors.logits import TEMPLATE_FLOOR

SEEDS = range(6)


def random_bank(seed: int, dtype) -> tuple[ActivationBank, np.ndarray]:
    """A bank of odd sizes (K classes, D features, rectified class means plus noise, a full-rank
    fc with a bias) and a query set mixing ID-like and OOD-like rows."""
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 12))
    width = int(rng.integers(classes + 3, 41))
    means = np.abs(rng.normal(0, 1, (classes, width))) * rng.uniform(1, 3)

    def draw(n, centres=None):
        labels = rng.integers(0, classes, n)
        centre = means[labels] if centres is None else centres
        return np.maximum(centre + rng.normal(0, 0.7, (n, width)), 0).astype(dtype), labels

    train, y_train = draw(int(rng.integers(width + 5, 301)))
    val, y_val = draw(int(rng.integers(classes * 3, 157)))
    test, y_test = draw(int(rng.integers(20, 113)))
    ood, _ = draw(int(rng.integers(20, 97)), centres=rng.uniform(0, 1.5, width))
    weight = (means - means.mean(axis=0)) / 2 + rng.normal(0, 0.05, (classes, width))
    bias = rng.normal(0, 0.3, classes)
    bank = ActivationBank(
        weight.astype(dtype),
        bias.astype(dtype),
        {"train": train, "val": val, "test": test},
        {"train": y_train, "val": y_val, "test": y_test},
        {"near": {"ood": ood}},
    )
    return bank, np.concatenate([test, ood])


# --- the references: float64, straight from the formulas -----------------------------------


def f64(array) -> np.ndarray:
    return np.asarray(array, np.float64)


def logits(bank, h):
    return f64(h) @ f64(bank.fc_weight).T + f64(bank.fc_bias)


def logsumexp(z):
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_msp(bank, h, _detector):
    return softmax(logits(bank, h)).max(axis=1)


def ref_mls(bank, h, _detector):
    return logits(bank, h).max(axis=1)


def ref_ebo(bank, h, _detector):
    return logsumexp(logits(bank, h))


def ref_tempscale(bank, h, detector):
    # the score at the detector's fitted T (the fit itself is tested in test_detectors_logits)
    return np.log(softmax(logits(bank, h) / detector.temperature).max(axis=1))


def ref_klm(bank, h, _detector):
    z_val = logits(bank, bank.id_features["val"])
    classes = z_val.shape[1]
    templates = np.eye(classes)
    for k in range(classes):
        members = z_val.argmax(axis=1) == k
        if members.any():
            templates[k] = softmax(z_val[members]).mean(axis=0)
    p = softmax(logits(bank, h))
    kl = [
        [(p_i * (np.log(p_i) - np.log(np.maximum(d, TEMPLATE_FLOOR)))).sum() for d in templates]
        for p_i in p
    ]
    return -np.min(kl, axis=1)


def ref_gradnorm(bank, h, _detector):
    # OpenOOD's loss L = -sum_k log softmax(z)_k: dL/dW = outer(C p - 1, h), score = sum |dL/dW|
    p = softmax(logits(bank, h))
    classes = p.shape[1]
    rows = zip(p, f64(h), strict=True)
    return np.array([np.abs(np.outer(classes * p_i - 1, h_i)).sum() for p_i, h_i in rows])


def ref_react(bank, h, _detector):
    threshold = np.percentile(f64(bank.id_features["val"]), 90)
    return logsumexp(logits(bank, np.minimum(f64(h), threshold)))


def ref_dice(bank, h, _detector):
    mean = f64(bank.id_features["train"]).mean(axis=0)
    contributions = mean[None, :] * f64(bank.fc_weight)
    mask = contributions > np.percentile(contributions, 90)
    return logsumexp(f64(h) @ (f64(bank.fc_weight) * mask).T + f64(bank.fc_bias))


def ref_vim(bank, h, detector, dim=None):
    dim = detector.dim if dim is None else dim
    weight, bias, train = f64(bank.fc_weight), f64(bank.fc_bias), f64(bank.id_features["train"])
    origin = -np.linalg.pinv(weight) @ bias
    centred = train - origin
    values, vectors = np.linalg.eigh(centred.T @ centred / len(train))
    residual_space = vectors[:, np.argsort(values)[::-1][dim:]]

    def residual(x):
        return np.linalg.norm((f64(x) - origin) @ residual_space, axis=1)

    alpha = logits(bank, train).max(axis=1).mean() / residual(train).mean()
    return logsumexp(logits(bank, h)) - alpha * residual(h)


REFERENCES = {
    "msp": ref_msp,
    "mls": ref_mls,
    "ebo": ref_ebo,
    "tempscale": ref_tempscale,
    "klm": ref_klm,
    "gradnorm": ref_gradnorm,
    "react": ref_react,
    "dice": ref_dice,
    "vim": ref_vim,
}


def auroc(bank, scores) -> float:
    n_id = len(bank.id_features["test"])
    labels = np.r_[np.ones(n_id), np.zeros(len(scores) - n_id)]
    return roc_auc_score(labels, scores)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(REFERENCES))
def test_float64_features_match_the_reference(name, seed):
    bank, queries = random_bank(seed, np.float64)
    detector = fit_detector(name, bank)
    scores = detector.score(queries)
    expected = REFERENCES[name](bank, queries, detector)
    assert scores.dtype == np.float64 and scores.shape == expected.shape
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    assert auroc(bank, scores) == auroc(bank, expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(REFERENCES))
def test_float32_features_match_the_reference_to_float32_rounding(name, seed):
    # float32 activations are multiplied in float32 (the documented difference): the scores
    # stay within float32 rounding of the float64 formula on the same (widened) values
    bank, queries = random_bank(seed, np.float32)
    detector = fit_detector(name, bank)
    scores = detector.score(queries)
    expected = REFERENCES[name](bank, queries, detector)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(REFERENCES))
def test_scores_are_taken_a_block_of_rows_at_a_time(name, seed, monkeypatch):
    # score() hands score_features BLOCK_VALUES // K rows at a time (here 1 to 3 rows and a
    # short last block): no N x K array for all N rows, and each row keeps its own score
    bank, queries = random_bank(seed, np.float64)
    detector = fit_detector(name, bank)
    monkeypatch.setattr(base, "BLOCK_VALUES", 7)
    blocks, score_features = [], detector.score_features

    def spy(rows):
        blocks.append(len(rows))
        return score_features(rows)

    monkeypatch.setattr(detector, "score_features", spy)
    scores = detector.score(queries)
    step = max(1, 7 // len(bank.fc_bias))
    assert blocks == [step] * (len(queries) // step) + (
        [len(queries) % step] if len(queries) % step else []
    )
    expected = REFERENCES[name](bank, queries, detector)
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize("seed", SEEDS)
def test_vim_every_dim_matches_the_reference(seed):
    bank, queries = random_bank(seed, np.float64)
    width = bank.fc_weight.shape[1]
    for dim in sorted({1, 2, width // 3, width // 2, width - 2, width - 1}):
        detector = VIM(dim=dim).fit(bank)
        expected = ref_vim(bank, queries, detector, dim)
        np.testing.assert_allclose(detector.score(queries), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("block", [1, 7])
@pytest.mark.parametrize("name", ["vim", "react"])
def test_detectors_in_blocks_of_rows_match_the_reference(name, seed, block, monkeypatch):
    # VIM (fit and score) and ReAct (its clip) take their products a block of rows at a time:
    # many blocks and a short last one give the same scores as the reference
    monkeypatch.setattr(features, "ROWS_PER_BLOCK", block)
    monkeypatch.setattr(features, "CLIP_ROWS", block)
    bank, queries = random_bank(seed, np.float64)
    detector = fit_detector(name, bank)
    expected = REFERENCES[name](bank, queries, detector)
    np.testing.assert_allclose(detector.score(queries), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("percentile", [50.0, 85.0, 99.0])
def test_react_and_dice_other_percentiles_match_the_reference(seed, percentile):
    bank, queries = random_bank(seed, np.float64)
    val, train = bank.id_features["val"], bank.id_features["train"]
    lse_clip = logsumexp(logits(bank, np.minimum(queries, np.percentile(val, percentile))))
    np.testing.assert_allclose(ReAct(percentile).fit(bank).score(queries), lse_clip, rtol=1e-9)
    contributions = train.mean(axis=0)[None, :] * bank.fc_weight
    mask = contributions > np.percentile(contributions, percentile)
    lse_dice = logsumexp(queries @ (bank.fc_weight * mask).T + bank.fc_bias)
    np.testing.assert_allclose(DICE(percentile).fit(bank).score(queries), lse_dice, rtol=1e-9)
