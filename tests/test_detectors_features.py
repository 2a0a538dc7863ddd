"""GradNorm, ReAct, DICE, VIM and KNN against hand-derived values and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from sio.evaluate import ActivationBank, DetectorError
from sio.evaluate.detectors import fit_detector
from sio.evaluate.detectors import knn as knn_module
from sio.evaluate.detectors.features import DICE, VIM, ReAct, vim_dim
from sio.evaluate.detectors.knn import KNN, TorchSearch, faiss_available, unit_rows


def make_bank(train, *, val=None, weight=None, bias=None, labels=None) -> ActivationBank:
    train = np.asarray(train, np.float32)
    val = train if val is None else np.asarray(val, np.float32)
    dim = train.shape[1]
    weight = np.eye(2, dim, dtype=np.float32) if weight is None else np.asarray(weight, np.float32)
    bias = np.zeros(len(weight), np.float32) if bias is None else np.asarray(bias, np.float32)
    labels = np.zeros(len(train), np.int64) if labels is None else np.asarray(labels, np.int64)
    features = {"train": train, "val": val, "test": train}
    split_labels = {"train": labels, "val": np.zeros(len(val), np.int64), "test": labels}
    return ActivationBank(weight, bias, features, split_labels, {"near": {}})


def test_gradnorm_by_hand():
    # h = [1, 2], W = I: p = [1, e] / (1 + e); C p - 1 = [(1 - e), (e - 1)] / (1 + e), whose
    # L1 norm is 2 (e - 1) / (e + 1); ||h||_1 = 3.
    bank = make_bank([[1.0, 2.0]])
    score = fit_detector("gradnorm", bank).score(bank, np.array([[1.0, 2.0]]))
    e = math.e
    np.testing.assert_allclose(score, [6 * (e - 1) / (e + 1)], rtol=1e-12)


def test_gradnorm_equals_the_per_sample_backward_pass():
    # OpenOOD's definition: L = -sum_k log_softmax(W h + b)_k, score = sum |dL/dW|
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(4, 6)), rng.normal(size=4)
    h = np.abs(rng.normal(size=(5, 6)))
    bank = make_bank(h, weight=weight, bias=bias)
    expected = []
    for row in h:
        w = torch.tensor(weight, requires_grad=True)
        z = w @ torch.tensor(row) + torch.tensor(bias)
        (-torch.log_softmax(z, 0).sum()).backward()
        expected.append(w.grad.abs().sum().item())
    score = fit_detector("gradnorm", bank).score(bank, h)
    np.testing.assert_allclose(score, expected, rtol=1e-5)


def test_react_clips_at_the_val_percentile():
    # val activations 0..9: np.percentile(., 90) interpolates to 8.1; h = [9, 1] -> [8.1, 1]
    bank = make_bank([[0.0, 0.0]], val=np.arange(10.0).reshape(5, 2))
    detector = fit_detector("react", bank)
    assert detector.threshold == pytest.approx(8.1)
    score = detector.score(bank, np.array([[9.0, 1.0]]))
    np.testing.assert_allclose(score, [math.log(math.exp(8.1) + math.e)])
    low = ReAct(50).fit(bank)  # median of 0..9 = 4.5
    assert low.threshold == pytest.approx(4.5)


def test_dice_keeps_the_largest_contributions():
    # mean train h = [1, 2, 3, 4]; W = ones(2, 4): contributions [1, 2, 3, 4] per row, whose
    # 50th percentile over all 8 entries is 2.5 -> keep columns 2 and 3. h = ones: z = [2, 2]
    # (+ b = [0, 1]) -> logsumexp(2, 3).
    train = np.array([[1.0, 2.0, 3.0, 4.0]] * 3)
    bank = make_bank(train, weight=np.ones((2, 4)), bias=[0.0, 1.0])
    detector = DICE(50).fit(bank)
    np.testing.assert_array_equal(detector.weight, [[0, 0, 1, 1], [0, 0, 1, 1]])
    score = detector.score(bank, np.ones((1, 4)))
    np.testing.assert_allclose(score, [logsumexp([2.0, 3.0])])
    assert fit_detector("dice", bank).info()["percentile"] == 90.0


VIM_TRAIN = np.array([[2, 0, 0.5], [0, 2, -0.5], [-2, 0, 0.5], [0, -2, -0.5]])


def test_vim_by_hand():
    # W = [[1,0,0],[0,1,0]], b = 0 -> u = 0. Uncentred covariance of the train rows is
    # diag(2, 2, 0.25): the principal space (dim 2) is x-y and the residual is |h_z| = 0.5.
    # Max logits 2, 2, 0, 0 -> mean 1; alpha = 1 / 0.5 = 2. h = [1, 0, 3]: log(e + 1) - 2 * 3.
    bank = make_bank(VIM_TRAIN)
    detector = VIM(dim=2).fit(bank)
    assert detector.alpha == pytest.approx(2.0)
    np.testing.assert_allclose(detector.origin, 0.0, atol=1e-12)
    score = detector.score(bank, np.array([[1.0, 0.0, 3.0]]))
    np.testing.assert_allclose(score, [math.log(math.e + 1) - 6])


def test_vim_origin_has_zero_logits():
    # u = -pinv(W) b satisfies W u + b = 0 for a full-row-rank W
    bank = make_bank(VIM_TRAIN, bias=[1.0, -3.0])
    detector = VIM(dim=2).fit(bank)
    np.testing.assert_allclose(bank.logits(detector.origin[None]), [[0.0, 0.0]], atol=1e-12)


def test_vim_dim_rule():
    assert vim_dim(None, 512) == 256 and vim_dim(None, 2048) == 256
    assert vim_dim(None, 128) == 64 and vim_dim(None, 3) == 1
    assert vim_dim(42, 512) == 42


@pytest.mark.parametrize("dim", [3, 1000])
def test_vim_dim_not_below_width_is_an_error(dim):
    # OpenOOD: an empty residual space gives alpha = x / 0 and score 0 * inf = NaN
    with pytest.raises(DetectorError, match=rf"vim on id\.train: dim {dim} must be in \[1, D\)"):
        VIM(dim=dim).fit(make_bank(VIM_TRAIN))


def test_vim_without_residual_is_an_error():
    flat = VIM_TRAIN.copy()
    flat[:, 2] = 0.0  # all of ID train lies in the principal plane
    with pytest.raises(DetectorError, match=r"vim on id\.train.*no component outside"):
        VIM(dim=2).fit(make_bank(flat))


def test_vim_covariance_overflow_is_an_error_naming_vim():
    # finite float32 features whose squares overflow float32: the covariance is inf, which
    # no eigendecomposition can take; the error names VIM and id.train, never a NaN score
    huge = np.full((4, 3), 3e19) * np.array([[1.0, 0.5, 0.25]])
    with pytest.raises(DetectorError, match=r"vim on id\.train: the covariance .* overflows"):
        VIM(dim=1).fit(make_bank(huge))


def test_knn_by_hand_with_zero_vectors():
    # unit train vectors [1,0], [0,1], [-1,0] and a zero vector. Query [2, 0] -> [1, 0]:
    # squared distances 0, 2, 4, 1 -> 2nd nearest 1. Query [0, 0] stays 0 (OpenOOD: NaN):
    # distance 1 to every unit vector, 0 to the zero one -> 2nd nearest 1. Query [0, -3]:
    # [0, -1] -> 2, 4, 2, 1 -> 2nd nearest 2.
    train = [[1, 0], [0, 1], [-1, 0], [0, 0]]
    bank = make_bank(train)
    detector = KNN(k=2, backend="torch").fit(bank)
    scores = detector.score(bank, np.array([[2.0, 0.0], [0.0, 0.0], [0.0, -3.0]]))
    np.testing.assert_allclose(scores, [-1.0, -1.0, -2.0], atol=1e-6)
    assert detector.info() == {"k": 2, "backend": "torch"}


def brute_force_kth(train, queries, k):
    t, q = unit_rows(train).astype(np.float64), unit_rows(queries).astype(np.float64)
    sq = ((q[:, None, :] - t[None, :, :]) ** 2).sum(axis=2)
    return np.sort(sq, axis=1)[:, k - 1]


def test_knn_torch_search_matches_brute_force_across_chunks(monkeypatch):
    monkeypatch.setattr(knn_module, "QUERY_CHUNK", 7)
    rng = np.random.default_rng(1)
    train, queries = rng.normal(size=(60, 5)), rng.normal(size=(23, 5))
    found = TorchSearch(unit_rows(train)).kth_sq_distance(unit_rows(queries), 4)
    np.testing.assert_allclose(found, brute_force_kth(train, queries, 4), atol=1e-5)


def test_knn_faiss_matches_torch():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    bank = make_bank(rng.normal(size=(80, 6)))
    queries = rng.normal(size=(30, 6))
    by_faiss = KNN(k=5, backend="faiss").fit(bank).score(bank, queries)
    by_torch = KNN(k=5, backend="torch").fit(bank).score(bank, queries)
    np.testing.assert_allclose(by_faiss, by_torch, atol=1e-5)


def test_knn_errors_name_the_cause():
    bank = make_bank(np.ones((3, 2)))
    with pytest.raises(DetectorError, match=r"knn on id\.train: k = 5 exceeds the 3"):
        KNN(k=5).fit(bank)
    if not faiss_available():
        with pytest.raises(DetectorError, match="faiss is not installed"):
            KNN(k=1, backend="faiss").fit(bank)
    with pytest.raises(ValueError, match="backend"):
        KNN(backend="annoy")
