"""The products under every detector: ``linear`` (oneDNN's float32 inner product, else the
GEMM), VIM's ``centred_gram`` and ``row_blocks``, as properties over seeds and odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sio.evaluate import activations
from sio.evaluate.activations import linear
from sio.evaluate.detectors.features import centred_gram, row_blocks

EPS32 = float(np.finfo(np.float32).eps)


def rectified(rng, shape, shift=0.3) -> np.ndarray:
    return np.maximum(rng.normal(shift, 1.0, shape), 0).astype(np.float32)


def rounding_excess(got: np.ndarray, h: np.ndarray, w: np.ndarray) -> float:
    """max |got - exact| over sqrt(D) eps32 sum_i |h_i w_i|: below 1 for a float32 product
    (0.3 at worst over many sizes), hundreds for one rounded through bfloat16."""
    exact = h.astype(np.float64) @ w.astype(np.float64).T
    scale = np.abs(h).astype(np.float64) @ np.abs(w).astype(np.float64).T
    bound = np.sqrt(h.shape[1]) * EPS32 * scale
    return float((np.abs(np.asarray(got, np.float64) - exact) / np.maximum(bound, 1e-300)).max())


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("rows", [0, 1, 2, 7, 13, 2047, 2048, 2053, 4099, 6151])
def test_linear_is_a_float32_product_within_float32_rounding(rows, seed):
    # both sides of ONEDNN_MIN_ROWS (the GEMM below, oneDNN from 2,048 rows)
    rng = np.random.default_rng([seed, rows])
    width, outputs = int(rng.integers(1, 700)), int(rng.integers(1, 300))
    h, w = rectified(rng, (rows, width)), rng.normal(0, 1, (outputs, width)).astype(np.float32)
    got = linear(torch.from_numpy(h), torch.from_numpy(w))
    assert got.dtype == torch.float32 and got.shape == (rows, outputs)
    if rows:
        assert rounding_excess(got.numpy(), h, w) < 1.0


def test_the_rounding_bound_rejects_a_bfloat16_product():
    # what the property above would catch: a product that rounds its inputs to bfloat16 (as
    # oneDNN may when told a lower fp32 precision) is hundreds of times outside the bound
    rng = np.random.default_rng(0)
    h, w = rectified(rng, (300, 512)), rng.normal(0, 1, (10, 512)).astype(np.float32)
    bf16 = torch.from_numpy(h).bfloat16().float() @ torch.from_numpy(w).bfloat16().float().T
    assert rounding_excess(bf16.numpy(), h, w) > 50


@pytest.mark.parametrize("seed", range(4))
def test_linear_of_float64_is_the_gemm_bitwise(seed):
    rng = np.random.default_rng(seed)
    h = torch.from_numpy(rng.normal(0, 1, (int(rng.integers(1, 900)), 37)))
    w = torch.from_numpy(rng.normal(0, 1, (11, 37)))
    assert torch.equal(linear(h, w), h @ w.T)


def test_onednn_is_found_wherever_torch_has_it():
    # the pinned torch has oneDNN and the op: losing it (the GEMM everywhere) fails here
    assert (activations.ONEDNN_LINEAR is not None) == torch.backends.mkldnn.is_available()


# torch's mkldnn.flags() warns that this CPU build has no Intel-GPU TF32: not ours to fix
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_linear_takes_onednn_for_float32_only_from_its_row_threshold(monkeypatch):
    calls = []

    def spy(h, weight, *_):
        calls.append(h.shape)
        return h @ weight.T

    monkeypatch.setattr(activations, "ONEDNN_LINEAR", spy)
    rows = activations.ONEDNN_MIN_ROWS
    linear(torch.ones(rows, 3), torch.ones(2, 3))
    linear(torch.ones(rows, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64))
    linear(torch.ones(rows - 1, 3), torch.ones(2, 3))
    with torch.backends.mkldnn.flags(enabled=False):
        linear(torch.ones(rows, 3), torch.ones(2, 3))
    # float32 only (oneDNN has no float64 inner product), only from ONEDNN_MIN_ROWS rows, and
    # not when torch is told not to use oneDNN
    assert calls == [(rows, 3)]


def float64_centred(h: np.ndarray, origin: np.ndarray) -> np.ndarray:
    centred = h.astype(np.float64) - origin
    return centred.T @ centred


@pytest.mark.parametrize("seed", range(8))
def test_centred_gram_is_the_gram_of_the_centred_rows(seed):
    rng = np.random.default_rng(seed)
    rows, width = int(rng.integers(2, 3000)), int(rng.integers(1, 300))
    h = rectified(rng, (rows, width))
    origin = rng.normal(0, rng.choice([0.0, 0.1, 1.0]), width)
    got, exact = centred_gram(torch.from_numpy(h), origin), float64_centred(h, origin)
    assert relative_error(got, exact) < 1e-5
    np.testing.assert_allclose(got, got.T)


def relative_error(got: np.ndarray, exact: np.ndarray) -> float:
    """max_ij |got - exact| / sqrt(exact_ii exact_jj): each entry against its own columns."""
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    return float((np.abs(got - exact) / np.maximum(scale, 1e-300)).max())


def test_centred_gram_guards_a_single_moderately_dominated_column():
    # one column at u = 50 with spread 0.2 (uncentred/centred ~6e4, the others ~1): the
    # guard must centre; the expansion would lose that column to 1e-2 relative
    rng = np.random.default_rng(0)
    h = rectified(rng, (5000, 64))
    origin = np.zeros(64)
    origin[0] = 50.0
    h[:, 0] = 50 + rng.normal(0, 0.2, 5000)
    got = centred_gram(torch.from_numpy(h), origin)
    assert relative_error(got, float64_centred(h, origin)) < 1e-5


def test_centred_gram_centres_first_where_the_gram_of_h_overflows():
    # h^T h overflows float32 (3e18^2 x 200 > 3.4e38) while (h - u)^T (h - u) does not: the
    # expansion has no finite answer, so h is centred first, as VIM did before the expansion
    rng = np.random.default_rng(1)
    origin = np.zeros(8)
    origin[0] = 3e18
    h = rectified(rng, (200, 8))
    h[:, 0] = (3e18 + rng.normal(0, 1e12, 200)).astype(np.float32)
    rows = torch.from_numpy(h)
    shifted = rows - torch.from_numpy(origin).float()
    got = centred_gram(rows, origin)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, (shifted.T @ shifted).double().numpy())


def test_centred_gram_centres_first_where_the_origin_dominates():
    # rows close to a large origin: h^T h is 1e7 times (h - u)^T (h - u), so the expansion
    # h^T h - s u^T - u s^T + n u u^T leaves float32 rounding as the answer; centring first
    # keeps it to float32 accuracy
    rng = np.random.default_rng(3)
    origin = np.full(16, 50.0)
    h = (origin + rng.normal(0, 0.01, (2000, 16))).astype(np.float32)
    exact = float64_centred(h, origin)
    rows = torch.from_numpy(h)
    cross = np.outer(rows.sum(dim=0).double().numpy(), origin)
    expanded = (rows.T @ rows).double().numpy() - cross - cross.T + 2000 * np.outer(origin, origin)
    assert np.abs(expanded - exact).max() > 0.1 * np.abs(exact).max()
    got = centred_gram(rows, origin)
    assert np.abs(got - exact).max() < 1e-5 * np.abs(exact).max()


@pytest.mark.parametrize("rows", [0, 1, 6, 7, 8, 13, 4096, 4097])
@pytest.mark.parametrize("block", [1, 7, 4096])
def test_row_blocks_cover_the_rows_once_in_order(rows, block):
    blocks = list(row_blocks(rows, block))
    assert [i for b in blocks for i in range(rows)[b]] == list(range(rows))
    assert all(0 < b.stop - b.start <= block for b in blocks)
