"""ODIN: the input perturbation by hand on a linear model, and its two routes through evaluate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sio.cli import get_cli
from sio.evaluate import DetectorError, evaluate_checkpoint
from sio.evaluate.config import EvaluateConfig
from sio.evaluate.detectors import fit_detector
from sio.evaluate.detectors.odin import ODIN

from .tiny_run import write_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


class Linear(nn.Module):
    """logits = A @ flatten(x): the input gradient of CE(z / T, y) is A^T (p - e_y) / T."""

    def __init__(self, matrix):
        super().__init__()
        self.matrix = torch.tensor(matrix, dtype=torch.float32)

    def forward(self, x):
        return x.flatten(1) @ self.matrix.T


def test_odin_perturbation_and_score_by_hand():
    # A = [[1,0,0],[0,1,0]]: y = 0 for x = [0.5, 0.2, 0.7]; grad = [(p0 - 1), p1, 0] / T has
    # signs [-, +, 0]; sign(0) counts as + (OpenOOD), so x' = x - eps * [-1, 1, 1]
    # = [0.6, 0.1, 0.6] at eps 0.1, and the score is max softmax(z(x') / T) = s((0.6 - 0.1) / T).
    model = Linear([[1, 0, 0], [0, 1, 0]])
    odin = ODIN(temperature=2.0, epsilon=0.1)
    x = torch.tensor([[[[0.5, 0.2, 0.7]]]])
    np.testing.assert_allclose(odin.perturb(model, x).numpy().ravel(), [0.6, 0.1, 0.6], atol=1e-6)
    score = odin.score_batch(model, x)
    np.testing.assert_allclose(score, [1 / (1 + math.exp(-0.5 / 2.0))], rtol=1e-6)


def test_odin_reads_uint8_images_as_pixels_in_unit_range():
    model = Linear([[1, 0, 0], [0, 1, 0]])
    odin = ODIN(temperature=2.0, epsilon=0.0)
    images = torch.tensor([[[[255, 0, 51]]]], dtype=torch.uint8)  # -> [1, 0, 0.2]
    np.testing.assert_allclose(odin.score_batch(model, images), [1 / (1 + math.exp(-0.5))])


def test_odin_defaults_are_openood_v15():
    odin = ODIN.from_config(EvaluateConfig())
    assert (odin.temperature, odin.epsilon) == (1000.0, 0.0014)


def test_odin_cannot_be_fitted_on_activations():
    with pytest.raises(DetectorError, match=r"odin.*needs the model.*--run"):
        fit_detector("odin", None)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("odin"), shard_size=512)


@pytest.mark.slow
def test_evaluate_checkpoint_runs_odin_with_the_model(tiny_run):
    config = EvaluateConfig(detectors=("odin", "msp", "vim"), batch_size=64)
    out = tiny_run / "eval"
    results = evaluate_checkpoint(tiny_run / "run", tiny_run / "bench", out, config)
    assert list(results["metrics"]) == ["odin", "msp", "vim"]
    assert results["skipped"] == {}
    assert results["detectors"]["odin"] == {"temperature": 1000.0, "epsilon": 0.0014}
    assert set(results["metrics"]["odin"]) == {"near", "far"}
    assert results["detectors"]["vim"]["dim"] == 64  # small_cnn: D = 128 -> D / 2
    assert json.loads((out / "run.json").read_text())["seed"] == 7
    assert (out / "activations.npz").is_file()


@pytest.mark.slow
def test_activations_file_skips_odin_with_a_note(tiny_run):
    out = tiny_run / "eval"
    if not (out / "activations.npz").is_file():
        evaluate_checkpoint(tiny_run / "run", tiny_run / "bench", out, EvaluateConfig())
    result = CliRunner().invoke(
        get_cli(),
        [
            "evaluate",
            "--activations",
            str(out / "activations.npz"),
            "--detectors",
            "odin,mls",
            "--out",
            str(tiny_run / "again"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "skipped (odin: needs the model and the images: use sio evaluate --run)" in result.output
    saved = json.loads((tiny_run / "again" / "results.json").read_text())
    assert saved["skipped"] == {"odin": "needs the model and the images: use sio evaluate --run"}
    assert list(saved["metrics"]) == ["mls"]
