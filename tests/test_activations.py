"""The activations .npz format: load_activations round trip and its named errors."""

from __future__ import annotations

import numpy as np
import pytest

from sio.evaluate import ActivationBank, ActivationsError, load_activations


def make_bank(seed=0) -> ActivationBank:
    rng = np.random.default_rng(seed)
    k, d = 3, 4
    sizes = {"train": 12, "val": 5, "test": 7}
    return ActivationBank(
        fc_weight=rng.normal(size=(k, d)).astype(np.float32),
        fc_bias=rng.normal(size=k).astype(np.float32),
        id_features={s: rng.normal(size=(n, d)).astype(np.float32) for s, n in sizes.items()},
        id_labels={s: rng.integers(0, k, n).astype(np.int64) for s, n in sizes.items()},
        ood={
            "near": {"a": rng.normal(size=(6, d)).astype(np.float32)},
            "far": {
                "b": rng.normal(size=(3, d)).astype(np.float32),
                "c_d": rng.normal(size=(2, d)).astype(np.float32),
            },
        },
    )


def save(tmp_path, arrays, name="act.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_round_trip(tmp_path):
    bank = make_bank()
    loaded = load_activations(save(tmp_path, bank.to_npz_dict()))
    np.testing.assert_array_equal(loaded.fc_weight, bank.fc_weight)
    np.testing.assert_array_equal(loaded.fc_bias, bank.fc_bias)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(loaded.id_features[split], bank.id_features[split])
        np.testing.assert_array_equal(loaded.id_labels[split], bank.id_labels[split])
        assert loaded.id_labels[split].dtype == np.int64
    assert {g: sorted(s) for g, s in loaded.ood.items()} == {"near": ["a"], "far": ["b", "c_d"]}
    for group, sets in bank.ood.items():
        for name, feats in sets.items():
            np.testing.assert_array_equal(loaded.ood[group][name], feats)
    # logits are h @ W.T + b
    h = bank.id_features["test"]
    expected = h.astype(np.float64) @ bank.fc_weight.T.astype(np.float64) + bank.fc_bias
    np.testing.assert_allclose(loaded.logits(h), expected, rtol=1e-6)


def test_only_far_sets_is_enough(tmp_path):
    arrays = make_bank().to_npz_dict()
    del arrays["ood.near.a.features"]
    loaded = load_activations(save(tmp_path, arrays))
    assert loaded.ood["near"] == {} and sorted(loaded.ood["far"]) == ["b", "c_d"]


def test_missing_file(tmp_path):
    with pytest.raises(ActivationsError, match="no such activations file"):
        load_activations(tmp_path / "absent.npz")


@pytest.mark.parametrize(
    "key", ["fc.weight", "fc.bias", "id.train.features", "id.val.labels", "id.test.features"]
)
def test_missing_key_is_named(tmp_path, key):
    arrays = make_bank().to_npz_dict()
    del arrays[key]
    with pytest.raises(ActivationsError, match=rf"missing key '{key}'"):
        load_activations(save(tmp_path, arrays))


@pytest.mark.parametrize(
    "key", ["id.train.features", "id.test.features", "ood.near.a.features", "ood.far.c_d.features"]
)
def test_feature_width_mismatch_is_named(tmp_path, key):
    arrays = make_bank().to_npz_dict()
    arrays[key] = np.zeros((len(arrays[key]), 5), np.float32)  # fc.weight is 3 x 4
    with pytest.raises(ActivationsError, match=rf"{key} is \(\d+, 5\), expected N x 4") as err:
        load_activations(save(tmp_path, arrays))
    assert "fc.weight" in str(err.value)


def test_one_dimensional_features_rejected(tmp_path):
    arrays = make_bank().to_npz_dict()
    arrays["ood.far.b.features"] = np.zeros(4, np.float32)
    with pytest.raises(ActivationsError, match=r"ood\.far\.b\.features"):
        load_activations(save(tmp_path, arrays))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_label_length_mismatch_is_named(tmp_path, split):
    arrays = make_bank().to_npz_dict()
    n = len(arrays[f"id.{split}.features"])
    arrays[f"id.{split}.labels"] = np.zeros(n + 1, np.int64)
    with pytest.raises(
        ActivationsError, match=rf"id\.{split}\.labels is \({n + 1},\), expected \({n},\)"
    ):
        load_activations(save(tmp_path, arrays))


def test_bias_shape_mismatch(tmp_path):
    arrays = make_bank().to_npz_dict()
    arrays["fc.bias"] = np.zeros(2, np.float32)  # K = 3
    with pytest.raises(ActivationsError, match="fc.bias"):
        load_activations(save(tmp_path, arrays))


@pytest.mark.parametrize(
    "bad_key",
    ["ood.mid.a.features", "ood.near.a.logits", "ood.near.a", "ood.near.a.b.features", "ood"],
)
def test_malformed_ood_key(tmp_path, bad_key):
    arrays = make_bank().to_npz_dict()
    arrays[bad_key] = np.zeros((2, 4), np.float32)
    with pytest.raises(ActivationsError, match=r"is not ood\.near\|far\.<name>\.features") as err:
        load_activations(save(tmp_path, arrays))
    assert repr(bad_key) in str(err.value)


def test_no_ood_sets(tmp_path):
    arrays = {k: v for k, v in make_bank().to_npz_dict().items() if not k.startswith("ood.")}
    path = save(tmp_path, arrays)
    with pytest.raises(ActivationsError, match="no ood.near") as err:
        load_activations(path)
    assert str(path) in str(err.value)


def test_unknown_key_is_refused(tmp_path):
    arrays = {**make_bank().to_npz_dict(), "id.test.logits": np.zeros((3, 2))}
    path = save(tmp_path, arrays)
    with pytest.raises(ActivationsError, match="id.test.logits"):
        load_activations(path)
