"""``evaluate.parity: openood``: one switch that makes every detector compute as OpenOOD v1.5's
own code (its quirks written as float32 / float64 references from OpenOOD's formulas here), the
default keeping sio's departures; the CLI option and results.json record it."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sio.cli import get_cli
from sio.core.config import ConfigError
from sio.evaluate import ActivationBank
from sio.evaluate.config import EvaluateConfig, OpenMaxSettings, TempScaleSettings
from sio.evaluate.detectors import DETECTORS, fit_detector, needs_images
from sio.evaluate.detectors.parity import OPENOOD
from sio.pipeline.config import load_pipeline

PARITY = EvaluateConfig(parity="openood")


def bank_of(
    seed: int, classes: int = 4, width: int = 24, train: int = 700, scale: float = 1.0, val=90
):
    """|class mean + noise| features, an fc near the nearest-mean classifier times ``scale``
    (a large scale gives logit margins far above float32's softmax resolution)."""
    rng = np.random.default_rng(seed)
    means = np.abs(rng.normal(0, 1, (classes, width))) * 2

    def draw(n, centres=None):
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        centre = means[labels] if centres is None else centres
        return np.abs(centre + rng.normal(0, 0.6, (n, width))).astype(np.float32), labels

    (h_train, y_train), (h_val, y_val), (h_test, y_test) = draw(train), draw(val), draw(60)
    ood, _ = draw(50, centres=rng.uniform(0, 1.5, width))
    weight = (means + rng.normal(0, 0.05, means.shape)) * scale
    bias = (-0.5 * (means**2).sum(axis=1)) * scale
    return ActivationBank(
        weight.astype(np.float32),
        bias.astype(np.float32),
        {"train": h_train, "val": h_val, "test": h_test},
        {"train": y_train, "val": y_val, "test": y_test},
        {"near": {"ood": ood}},
    )


def test_the_switch_is_off_by_default_and_a_bad_value_is_refused(tmp_path):
    assert EvaluateConfig().parity == "off"
    (tmp_path / "p.yaml").write_text("evaluate:\n  parity: openood\n")
    assert load_pipeline(tmp_path / "p.yaml").evaluate.parity == "openood"
    (tmp_path / "bad.yaml").write_text("evaluate:\n  parity: pytorch-ood\n")
    with pytest.raises(ConfigError, match="parity"):
        load_pipeline(tmp_path / "bad.yaml")


def test_parity_sets_openoods_tempscale_fit_and_openmax_settings_over_the_config():
    config = dataclasses.replace(
        PARITY,
        tempscale=TempScaleSettings(fit="nll"),
        openmax=OpenMaxSettings(tail_size=7, alpha_rank=2),
    )
    bank = bank_of(0)
    tempscale = fit_detector("tempscale", bank, config)
    assert tempscale.fit_rule == "openood"
    openmax = DETECTORS.get("openmax").from_config(config)
    assert (openmax.tail_size, openmax.alpha_rank) == (20, 3)
    off = DETECTORS.get("openmax").from_config(dataclasses.replace(config, parity="off"))
    assert (off.tail_size, off.alpha_rank) == (7, 2)
    assert fit_detector("tempscale", bank, dataclasses.replace(config, parity="off")).fit_rule == (
        "nll"
    )


@pytest.mark.parametrize("seed", range(3))
def test_msp_and_gen_in_parity_are_openoods_float32_and_tie_where_it_ties(seed):
    """Logit margins of hundreds: OpenOOD's float32 softmax is exactly 1.0 for most ID rows
    (many ties), sio's default float64 keeps them apart; parity gives OpenOOD's values."""
    bank = bank_of(seed, scale=40.0)
    h = np.concatenate([bank.id_features["test"], bank.ood["near"]["ood"]])
    z = torch.from_numpy(h) @ torch.from_numpy(bank.fc_weight).T + torch.from_numpy(bank.fc_bias)
    p = torch.softmax(z, dim=1)  # OpenOOD: net(data) in float32, then torch.softmax
    msp = fit_detector("msp", bank, PARITY).score(h)
    np.testing.assert_array_equal(msp, p.max(dim=1).values.double().numpy())
    assert (msp == 1.0).sum() > 10  # the ties OpenOOD has
    default = fit_detector("msp", bank).score(h)
    assert len(np.unique(default)) > len(np.unique(msp))
    top = torch.sort(p, dim=1).values[:, -100:]  # OpenOOD: the M = 100 largest (all here)
    gen = -(top**0.1 * (1 - top) ** 0.1).sum(dim=1)
    np.testing.assert_array_equal(fit_detector("gen", bank, PARITY).score(h), gen.double().numpy())


def test_knn_in_parity_adds_openoods_epsilon_after_normalising():
    bank = bank_of(1)
    train = bank.id_features["train"].copy()
    train[::7, 2] = 0  # dead units, as after a ReLU
    bank = dataclasses.replace(bank, id_features={**bank.id_features, "train": train})
    h = bank.ood["near"]["ood"]

    def normalizer(x):  # OpenOOD's knn_postprocessor.normalizer, in float64
        x = x.astype(np.float64)
        return x / np.linalg.norm(x, axis=-1, keepdims=True) + 1e-10

    t, q = normalizer(train), normalizer(h)
    distances = ((q[:, None, :] - t[None, :, :]) ** 2).sum(axis=2)
    expected = -np.sort(distances, axis=1)[:, 49]
    config = dataclasses.replace(PARITY, knn=dataclasses.replace(PARITY.knn, backend="torch"))
    detector = fit_detector("knn", bank, config)
    np.testing.assert_allclose(detector.score(h), expected, atol=2e-6)
    # in float32 the 1e-10 survives only where an entry is 0 (|x| rounds it away elsewhere)
    zeros = train == 0
    assert zeros.any()
    reference = detector.search.reference.numpy()
    np.testing.assert_array_equal(reference[zeros], np.float32(1e-10))
    off = fit_detector("knn", bank, dataclasses.replace(config, parity="off"))
    np.testing.assert_array_equal(off.search.reference.numpy()[zeros], 0.0)


@pytest.mark.parametrize("train", [257, 700, 1999, 25_601, 51_300])
def test_nnguide_in_parity_banks_whole_256_row_batches_until_more_than_alpha_n(train):
    """OpenOOD: batches appended until len(batches) * 256 > int(N * alpha)."""
    rng = np.random.default_rng(train)
    bank = bank_of(2, train=train)
    alpha = float(rng.choice([0.01, 0.05, 0.2]))
    config = dataclasses.replace(
        PARITY, nnguide=dataclasses.replace(PARITY.nnguide, k=3, alpha=alpha)
    )
    detector = fit_detector("nnguide", bank, config)
    batches = math.floor(train * alpha) // 256 + 1
    assert detector.bank_size == min(train, 256 * batches)
    held = bank.id_features["train"][: detector.bank_size]
    unit = held / np.linalg.norm(held, axis=1, keepdims=True)
    energy = torch.logsumexp(torch.from_numpy(bank.logits(held)), dim=1).numpy()
    np.testing.assert_allclose(detector.guide.numpy(), unit * energy[:, None], rtol=1e-5)
    default = fit_detector("nnguide", bank, dataclasses.replace(config, parity="off"))
    assert default.bank_size == max(1, math.floor(alpha * train))


def test_residual_in_parity_fits_id_val_with_openoods_dim():
    """More val rows than 512, so that the top 512 principal directions are well defined."""
    bank = bank_of(3, width=530, classes=5, val=800)
    detector = fit_detector("residual", bank, PARITY)
    assert (detector.split, detector.dim) == ("val", 512)
    val = bank.id_features["val"].astype(np.float64)
    origin = -np.linalg.pinv(bank.fc_weight.astype(np.float64)) @ bank.fc_bias
    centred = val - origin
    values, vectors = np.linalg.eigh(centred.T @ centred / len(val))
    space = vectors[:, np.argsort(values)[::-1][512:]]
    h = bank.ood["near"]["ood"].astype(np.float64)
    expected = -np.linalg.norm((h - origin) @ space, axis=1)
    np.testing.assert_allclose(detector.score(bank.ood["near"]["ood"]), expected, rtol=1e-6)
    assert fit_detector("residual", bank).split == "train"


def test_every_quirk_names_a_registered_detector_and_its_constructor_takes_it():
    for name, arguments in OPENOOD.items():
        cls = DETECTORS.get(name)
        assert not needs_images(name)
        cls(**arguments)  # a quirk the class does not take would raise here


def test_sio_evaluate_parity_records_the_setting_and_uses_openoods_fits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "acts.npz"
    np.savez(path, **bank_of(4).to_npz_dict())
    results = {}
    for parity in ("off", "openood"):
        out = tmp_path / parity
        args = ["evaluate", "--activations", str(path), "--detectors", "tempscale,msp"]
        result = CliRunner().invoke(get_cli(), [*args, "--parity", parity, "--out", str(out)])
        assert result.exit_code == 0, result.output
        results[parity] = json.loads((out / "results.json").read_text())
    assert results["off"]["parity"] == "off" and results["openood"]["parity"] == "openood"
    assert results["off"]["detectors"]["tempscale"]["fit"] == "nll"
    assert results["openood"]["detectors"]["tempscale"]["fit"] == "openood"
