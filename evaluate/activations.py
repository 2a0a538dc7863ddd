"""Cached activations: extract once per checkpoint and benchmark, score with every detector.

The file is an ``.npz`` with exactly these keys (logits are ``h @ fc.weight.T + fc.bias``)::

    fc.weight                     K x D float32, the last layer
    fc.bias                       K
    id.train.features / .labels   N x D float32 / N int64 (also id.val, id.test)
    ood.near.<name>.features      M x D, one per near-OOD set
    ood.far.<name>.features       one per far-OOD set
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sio.core.definition import differences
from sio.core.files import atomic_path, sha256_file, write_json_atomic
from sio.shards import read_benchmark
from sio.shardset import MANIFEST, iter_batches
from sio.train import load_classifier

ID_SPLITS = ("train", "val", "test")


class ActivationsError(ValueError):
    """An activations file that does not follow the format; the message names the key."""


@dataclass(frozen=True)
class ActivationBank:
    fc_weight: np.ndarray
    fc_bias: np.ndarray
    id_features: dict[str, np.ndarray]
    id_labels: dict[str, np.ndarray]
    ood: dict[str, dict[str, np.ndarray]]  # {"near": {name: features}, "far": {...}}

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features.astype(np.float64) @ self.fc_weight.T.astype(np.float64) + self.fc_bias

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        arrays = {"fc.weight": self.fc_weight, "fc.bias": self.fc_bias}
        for split in ID_SPLITS:
            arrays[f"id.{split}.features"] = self.id_features[split]
            arrays[f"id.{split}.labels"] = self.id_labels[split]
        for group, sets in self.ood.items():
            for name, features in sets.items():
                arrays[f"ood.{group}.{name}.features"] = features
        return arrays


def load_activations(path: str | Path) -> ActivationBank:
    """Read and check an activations file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ActivationsError(f"{path}: no such activations file")
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}

    def need(key: str) -> np.ndarray:
        if key not in arrays:
            raise ActivationsError(f"{path}: missing key {key!r}")
        return arrays[key]

    weight, bias = need("fc.weight"), need("fc.bias")
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ActivationsError(
            f"{path}: fc.weight is {weight.shape} and fc.bias {bias.shape}; expected K x D and K"
        )
    dim = weight.shape[1]
    id_features, id_labels = {}, {}
    for split in ID_SPLITS:
        feats, labels = need(f"id.{split}.features"), need(f"id.{split}.labels")
        _check_features(path, f"id.{split}.features", feats, dim)
        if labels.shape != (len(feats),):
            raise ActivationsError(
                f"{path}: id.{split}.labels is {labels.shape}, expected "
                f"({len(feats)},) to match id.{split}.features"
            )
        id_features[split], id_labels[split] = feats, labels.astype(np.int64)
    ood: dict[str, dict[str, np.ndarray]] = {"near": {}, "far": {}}
    known = {"fc.weight", "fc.bias"} | {
        f"id.{split}.{what}" for split in ID_SPLITS for what in ("features", "labels")
    }
    for key, value in arrays.items():
        parts = key.split(".")
        if parts[0] == "ood":
            if len(parts) != 4 or parts[1] not in ood or parts[3] != "features":
                raise ActivationsError(f"{path}: key {key!r} is not ood.near|far.<name>.features")
            _check_features(path, key, value, dim)
            ood[parts[1]][parts[2]] = value
        elif key not in known:
            raise ActivationsError(f"{path}: unknown key {key!r} (the format is in the README)")
    if not ood["near"] and not ood["far"]:
        raise ActivationsError(f"{path}: no ood.near.<name>.features or ood.far.<name>.features")
    return ActivationBank(weight, bias, id_features, id_labels, ood)


def _check_features(path, key, features, dim):
    if features.ndim != 2 or features.shape[1] != dim:
        raise ActivationsError(
            f"{path}: {key} is {features.shape}, expected N x {dim} (the width of fc.weight)"
        )


def _features_of(model, shard_set: Path, batch_size: int, device):
    feats, labels = [], []
    with torch.no_grad():
        for images, batch_labels in tqdm(
            iter_batches(shard_set, batch_size),
            desc=f"extract {shard_set.name}",
            unit="batch",
            leave=False,
        ):
            feats.append(model.features(images.to(device)).float().cpu().numpy())
            labels.append(batch_labels.numpy())
    return np.concatenate(feats), np.concatenate(labels)


def extract_activations(
    checkpoint: Path, benchmark_dir: Path, out: Path, *, batch_size: int, device: str = "cpu"
) -> ActivationBank:
    """Run the checkpoint's classifier over every split of the benchmark, once; cache as npz.

    A JSON sidecar records the checkpoint's and shard sets' checksums; a cache whose sidecar
    matches is reused, any other is recomputed.
    """
    benchmark = read_benchmark(benchmark_dir)
    key = {
        "checkpoint_sha256": sha256_file(checkpoint),
        "benchmark": {
            name: sha256_file(path / MANIFEST)
            for name, path in {**benchmark.id_splits, **benchmark.near, **benchmark.far}.items()
        },
    }
    sidecar = out.with_suffix(".json")
    if (
        out.is_file()
        and sidecar.is_file()
        and not differences(json.loads(sidecar.read_text()), key)
    ):
        return load_activations(out)
    model, _ = load_classifier(checkpoint, device)
    id_features, id_labels = {}, {}
    for split in ID_SPLITS:
        id_features[split], id_labels[split] = _features_of(
            model, benchmark.id_splits[split], batch_size, device
        )
    ood = {
        group: {
            name: _features_of(model, path, batch_size, device)[0] for name, path in sets.items()
        }
        for group, sets in (("near", benchmark.near), ("far", benchmark.far))
    }
    bank = ActivationBank(
        model.fc.weight.detach().cpu().numpy(),
        model.fc.bias.detach().cpu().numpy(),
        id_features,
        id_labels,
        ood,
    )
    with atomic_path(out, suffix=".npz") as tmp:
        np.savez(tmp, **bank.to_npz_dict())
    write_json_atomic(sidecar, key)
    return bank
