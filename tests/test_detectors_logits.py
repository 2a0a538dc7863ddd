"""TempScale and KLM on hand-made activation banks (logits = h when W = I and b = 0)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from sio.evaluate import DETECTORS, ActivationBank, DetectorError
from sio.evaluate.config import EvaluateConfig, TempScaleSettings
from sio.evaluate.detectors import fit_detector
from sio.evaluate.detectors.logits import TEMPLATE_FLOOR, fit_temperature, log_max_softmax

LN3 = math.log(3.0)


def bank_with(val, val_labels, classes=2) -> ActivationBank:
    val = np.asarray(val, np.float32)
    dim = val.shape[1]
    weight = np.eye(classes, dim, dtype=np.float32)
    val_labels = np.asarray(val_labels, np.int64)
    # an empty val set still needs an ID test row (the bank refuses an empty ID test set)
    test, test_labels = (val, val_labels) if len(val) else (np.zeros((1, dim), np.float32), [0])
    features = {"train": val, "val": val, "test": test}
    labels = {"train": val_labels, "val": val_labels, "test": np.asarray(test_labels, np.int64)}
    return ActivationBank(weight, np.zeros(classes, np.float32), features, labels, {"near": {}})


def test_temperature_minimises_the_nll_by_hand():
    # Four val samples with logits [2, 0], labels 0, 0, 0, 1: NLL(T) = -(3 log s(2/T) +
    # log s(-2/T)) / 4 with s the logistic function; its derivative vanishes at s(2/T) = 3/4,
    # i.e. 2/T = ln 3, T = 2 / ln 3.
    z = np.array([[2.0, 0.0]] * 4)
    assert fit_temperature(z, np.array([0, 0, 0, 1])) == pytest.approx(2 / LN3, rel=1e-5)


def nll_in_s(logits, labels, s):
    """The mean NLL of softmax(s z), float64 (scipy's logsumexp)."""
    from scipy.special import logsumexp

    z = np.asarray(logits, np.float64) * s
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(z)), labels]))


@pytest.mark.parametrize("seed", range(12))
def test_temperature_is_the_nll_minimum_to_float64_rounding(seed):
    # random val sets of odd sizes, some wrong and some confident: 1 / T is where the NLL's
    # derivative changes sign (a bounded scalar search on the float64 NLL agrees to 1e-7, and
    # one part in 1e6 either side of 1 / T costs more NLL)
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(seed)
    classes, n = int(rng.integers(2, 40)), int(rng.integers(7, 400))
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes)) + rng.uniform(1, 9) * np.eye(classes)[labels]
    logits[rng.random(n) < 0.2] = rng.normal(0, rng.uniform(1, 6), (1, classes))
    labels[0] = (logits[0].argmax() + 1) % classes  # at least one wrong
    s = 1 / fit_temperature(logits, labels)
    best = minimize_scalar(
        lambda t: nll_in_s(logits, labels, t),
        bounds=(1e-6, 1e3),
        method="bounded",
        options={"xatol": 1e-12},
    )
    assert s == pytest.approx(best.x, rel=1e-7)
    at = nll_in_s(logits, labels, s)
    assert at <= nll_in_s(logits, labels, s * (1 + 1e-6))
    assert at <= nll_in_s(logits, labels, s * (1 - 1e-6))


def test_temperature_of_logits_no_better_than_the_mean_class_is_refused():
    # the true class's logit below the mean logit on average: the NLL falls as T -> inf
    bank = bank_with([[0, 2], [0, 3], [1, 0]], [0, 0, 0])
    with pytest.raises(DetectorError, match=r"tempscale on id\.val: .*no finite T"):
        fit_detector("tempscale", bank)


@pytest.mark.parametrize("scale", [1e-20, 1e-6, 1.0, 1e6, 1e100])
def test_temperature_scales_with_the_logits(scale):
    # NLL(z / T) depends on z / T alone: logits times c give T times c, at any scale
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, 300)
    logits = rng.normal(0, 1, (300, 5)) + 2 * np.eye(5)[labels]
    assert fit_temperature(logits * scale, labels) == pytest.approx(
        scale * fit_temperature(logits, labels), rel=1e-9
    )


def test_tempscale_with_every_label_at_a_tied_maximum_uses_t_1_and_says_so():
    # the label is at its row's maximum everywhere, once in a tie not first in the row
    # (argmax would call that row wrong): the NLL only falls as T -> 0, no minimiser
    bank = bank_with([[0, 0], [2, 0], [0, 3]], [1, 0, 1])
    detector = fit_detector("tempscale", bank)
    assert detector.temperature == 1.0 and "no minimum" in detector.info()["note"]


def test_tempscale_refuses_val_logits_that_overflow():
    # finite float32 features whose float32 product overflows: named, never a silent T
    features = np.array([[3e38, 3e38], [0.0, 1.0]], np.float32)
    weight = np.array([[1.0, 1.0], [0.0, 1.0]], np.float32)
    labels = np.array([0, 1])
    split = {"train": features, "val": features, "test": features}
    bank = ActivationBank(
        weight, np.zeros(2, np.float32), split, dict.fromkeys(split, labels), {"near": {}}
    )
    with pytest.raises(DetectorError, match=r"tempscale on id\.val: its logits hold inf"):
        fit_detector("tempscale", bank)


def test_tempscale_scores_log_max_softmax_at_fitted_t():
    bank = bank_with([[2, 0]] * 4, [0, 0, 0, 1])
    detector = fit_detector("tempscale", bank)
    assert detector.temperature == pytest.approx(2 / LN3, rel=1e-5)
    # h = [1, 0]: z / T = [ln3 / 2, 0] -> max softmax = 1 / (1 + 3^(-1/2)) = sqrt3 / (sqrt3 + 1)
    score = detector.score(bank, np.array([[1.0, 0.0]]))
    expected = math.log(math.sqrt(3) / (math.sqrt(3) + 1))
    np.testing.assert_allclose(score, [expected], rtol=1e-5)
    assert detector.info() == {"fit": "nll", "temperature": detector.temperature}


def openood_reference_t(logits, labels) -> float:
    """OpenOOD v1.5's temp_scaling_postprocessor.setup, written out as it is there."""
    temperature = torch.nn.Parameter(torch.ones(1) * 1.5)
    z, y = torch.tensor(logits, dtype=torch.float32), torch.tensor(labels)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.LBFGS([temperature], lr=0.01, max_iter=50)

    def eval():  # noqa: A001 (OpenOOD's name)
        optimizer.zero_grad()
        loss = criterion(z / temperature, y)
        loss.backward()
        return loss

    optimizer.step(eval)
    return temperature.item()


@pytest.mark.parametrize("seed", range(5))
def test_tempscale_openood_fit_reproduces_openood_t_and_stops_short(seed):
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(3, 12))
    n = int(rng.integers(30, 300))
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes)) + rng.uniform(2, 9) * np.eye(classes)[labels]
    logits[rng.random(n) < 0.2] = rng.normal(0, 3, (1, classes))  # some wrong, some confident
    bank = bank_with(logits.astype(np.float32), labels, classes)
    config = EvaluateConfig(tempscale=TempScaleSettings(fit="openood"))
    openood = DETECTORS.get("tempscale").from_config(config).fit(bank)
    assert openood.temperature == openood_reference_t(logits.astype(np.float32), labels)
    assert openood.info()["fit"] == "openood"
    converged = fit_detector("tempscale", bank).temperature

    def nll(t):
        z = torch.tensor(logits / t)
        return torch.nn.functional.cross_entropy(z, torch.tensor(labels)).item()

    # the converged fit is the NLL minimum: never worse than OpenOOD's early stop
    assert nll(converged) <= nll(openood.temperature) + 1e-9
    assert nll(converged) <= min(nll(converged * 1.01), nll(converged / 1.01))


def test_tempscale_on_perfectly_classified_val_uses_t_1_and_says_so():
    # every val sample right: the NLL falls towards 0 as T -> 0 and has no minimiser
    bank = bank_with([[2, 0], [0, 3]], [0, 1])
    detector = fit_detector("tempscale", bank)
    assert detector.temperature == 1.0
    assert "no minimum" in detector.info()["note"]
    np.testing.assert_allclose(
        detector.score(bank, np.array([[1.0, 0.0]])), [math.log(math.e / (math.e + 1))]
    )


@pytest.mark.parametrize("name", ["tempscale", "klm", "react"])
def test_detectors_fitted_on_val_need_val_samples(name):
    bank = bank_with(np.zeros((0, 2)), [])
    with pytest.raises(DetectorError, match=rf"{name} on id\.val: the ID val set is empty"):
        fit_detector(name, bank)


def test_log_max_softmax_keeps_apart_what_softmax_rounds_to_one():
    logits = np.array([[0.0, -50.0], [0.0, -60.0], [LN3, 0.0]])
    assert softmax(logits[:2], axis=1).max(axis=1).tolist() == [1.0, 1.0]
    scores = log_max_softmax(logits)
    # -log(1 + e^-50) = -e^-50 to double precision; likewise e^-60; row 3: log(3/4)
    np.testing.assert_allclose(scores, [-math.exp(-50), -math.exp(-60), math.log(0.75)])
    assert scores[0] < scores[1]


def klm_bank():
    # val: two samples predicted as class 0 with softmax [3/4, 1/4]; none predicted as 1
    return bank_with([[LN3, 0.0], [LN3, 0.0]], [0, 1])


def test_klm_templates_and_scores_by_hand():
    bank = klm_bank()
    detector = fit_detector("klm", bank)
    np.testing.assert_allclose(detector.templates, [[0.75, 0.25], [0.0, 1.0]])
    assert detector.info() == {"classes_without_val_predictions": [1]}
    # h = [ln3, 0]: p = d_0 -> KL 0. h = [0, ln3]: p = [1/4, 3/4]; KL(p || d_0) =
    # 1/4 ln(1/3) + 3/4 ln 3 = ln3 / 2, and KL(p || e_1) is ~ 1/4 * 708: the min is ln3 / 2.
    scores = detector.score(bank, np.array([[LN3, 0.0], [0.0, LN3]]))
    np.testing.assert_allclose(scores, [0.0, -LN3 / 2], atol=1e-12)


def test_klm_takes_the_nearer_of_two_templates_a_float32_product_cannot_tell_apart():
    # the float32 search sees templates 0 and 1 as equally near (row 0 given row 1's float32
    # logs); in float64, template 1 is p itself (KL 0) and template 0 is ~2.7e-6 away: the
    # score is the float64 minimum whichever of the two the search ranks first
    detector = fit_detector("klm", klm_bank())
    p = softmax(np.array([[LN3, 0.0]]), axis=1)[0]  # [3/4, 1/4]
    templates = np.array([p + [1e-3, -1e-3], p, [0.5, 0.5]])
    detector.log_templates = torch.from_numpy(np.log(templates))
    detector.log_templates32 = detector.log_templates.float()[[1, 1, 2]]
    kl_0 = float(np.sum(p * (np.log(p) - np.log(templates[0]))))
    assert kl_0 > 1e-6
    assert detector.score(np.array([[LN3, 0.0]]))[0] == pytest.approx(0.0, abs=1e-12)


def test_klm_one_hot_template_is_finite_where_openood_gives_inf():
    bank = klm_bank()
    detector = fit_detector("klm", bank)
    h = np.array([[0.0, 50.0]])
    p = softmax(h, axis=1)[0]
    assert entropy(p, [0.0, 1.0]) == np.inf  # OpenOOD's KL against the one-hot template
    # ours: p0 (ln p0 - ln floor) + p1 ln p1, finite and far below KL(p || d_0) ~ ln 4
    expected = p[0] * (math.log(p[0]) - math.log(TEMPLATE_FLOOR)) + p[1] * math.log(p[1])
    score = detector.score(bank, h)
    assert np.isfinite(score).all()
    np.testing.assert_allclose(score, [-expected], rtol=1e-9)


def test_klm_with_underflowing_template_entries_stays_finite():
    # val logits 800 apart: softmax entries underflow to exact 0 in the template
    bank = bank_with([[800.0, 0.0], [0.0, 800.0]], [0, 1])
    detector = fit_detector("klm", bank)
    assert (detector.templates == np.eye(2)).all()
    scores = detector.score(bank, np.array([[0.0, 0.0], [1.0, 0.0], [-3.0, 900.0]]))
    assert np.isfinite(scores).all()
