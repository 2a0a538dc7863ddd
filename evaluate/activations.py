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

from sio.core.definition import differences
from sio.core.files import atomic_path, sha256_file, write_json_atomic
from sio.core.progress import progress
from sio.shards import read_benchmark
from sio.shardset import MANIFEST, iter_batches, read_manifest
from sio.train import load_classifier

ID_SPLITS = ("train", "val", "test")
BENCHMARK_FILE = "benchmark.json"  # what `sio shard` writes last into a benchmark folder


class ActivationsError(ValueError):
    """An activations file that does not follow the format; the message names the key."""


def _onednn_linear():
    """oneDNN's inner product as torch exposes it (``torch.ops.mkldnn._linear_pointwise``,
    the kernel torch.compile's CPU backend emits for ``nn.Linear``), or None without it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


ONEDNN_LINEAR = _onednn_linear()
# below this many rows oneDNN's per-call setup (~15 us) outweighs its faster kernel: the
# N x 512 x 10 product broke even at ~2,000 rows on the reference machine (0.81x at 16,384)
ONEDNN_MIN_ROWS = 2048


def linear(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``h @ weight.T`` for N x D rows and an M x D weight. float32 on the CPU, from
    ``ONEDNN_MIN_ROWS`` rows, goes through oneDNN's inner product: for the N x 512 x 10 logits
    of 10,000 rows 0.70x the time of torch's MKL GEMM on the reference machine, still
    float32 throughout (rounding of the same size, 1e-6 relative); fewer rows, other dtypes
    (oneDNN has no float64), devices, a torch without the op or one told not to use oneDNN
    take the GEMM."""
    if (
        ONEDNN_LINEAR is not None
        and torch.backends.mkldnn.enabled  # torch.backends.mkldnn.flags(enabled=False) is heard
        and len(h) >= ONEDNN_MIN_ROWS
        and h.dtype == weight.dtype == torch.float32
        and h.device.type == weight.device.type == "cpu"
    ):
        return ONEDNN_LINEAR(h.contiguous(), weight.contiguous(), None, "none", [], "")
    return h @ weight.T


def fc_logits(weight: np.ndarray, bias: np.ndarray, features: np.ndarray) -> np.ndarray:
    """``h @ W.T + b`` as float64. float32 features (the activations file's format, what the
    network computes) are multiplied in float32 (``linear``), as the network's own last layer
    does, and only the N x K product is widened: no float64 copy of the features (that copy
    was most of the logit detectors' time). Other float features are multiplied in float64."""
    features = np.ascontiguousarray(features)
    dtype = np.float32 if features.dtype == np.float32 else np.float64
    h = torch.from_numpy(features.astype(dtype, copy=False))
    return widened(linear(h, torch.from_numpy(np.ascontiguousarray(weight, dtype))), bias)


def widened(product: torch.Tensor, bias: np.ndarray) -> np.ndarray:
    """The logits from a product h W^T: each entry widened to float64 and b added, in one
    pass (torch's type promotion; the same values as widening first); in torch, a third of
    numpy's astype + add."""
    return torch.add(product, torch.tensor(np.asarray(bias), dtype=torch.float64)).numpy()


def _first_bad_row(array: np.ndarray) -> int | None:
    finite = np.isfinite(array)
    if finite.all():
        return None
    rows = ~finite.reshape(len(array), -1).all(axis=1)
    return int(np.argmax(rows))


def _check_floats(key: str, array, shape_text: str, ndim: int) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != ndim:
        raise ActivationsError(f"{key} is {array.shape}, expected {shape_text}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ActivationsError(f"{key} has dtype {array.dtype}, expected float32 (floats)")
    bad = _first_bad_row(array)
    if bad is not None:
        what = "NaN" if np.isnan(array[bad]).any() else "inf"
        where = f"row {bad}" if ndim == 2 else f"entry {bad}"
        raise ActivationsError(f"{key} {where} holds {what}; every value must be finite")
    return array


def _check_features(key: str, features, dim: int) -> np.ndarray:
    features = _check_floats(key, features, f"N x {dim} (the width of fc.weight)", 2)
    if features.shape[1] != dim:
        raise ActivationsError(
            f"{key} is {features.shape}, expected N x {dim} (the width of fc.weight)"
        )
    return features


def _check_labels(key: str, labels, rows: int, classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (rows,):
        features_key = key.rsplit(".", 1)[0] + ".features"
        raise ActivationsError(
            f"{key} is {labels.shape}, expected ({rows},) to match {features_key}"
        )
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ActivationsError(f"{key} has dtype {labels.dtype}; class labels are integers")
    outside = (labels < 0) | (labels >= classes)
    if outside.any():
        row = int(np.argmax(outside))
        raise ActivationsError(
            f"{key} row {row} is {labels[row]}, outside [0, {classes}) (fc.weight has "
            f"{classes} classes)"
        )
    return labels.astype(np.int64, copy=False)


@dataclass(frozen=True)
class ActivationBank:
    """The last layer and the penultimate features of every split, checked once when made:
    shapes, float dtypes, every value finite, labels integers in [0, K), and an ID test set and
    every OOD set with at least one row; errors name the array and the row. Detectors trust it.
    """

    fc_weight: np.ndarray
    fc_bias: np.ndarray
    id_features: dict[str, np.ndarray]
    id_labels: dict[str, np.ndarray]
    ood: dict[str, dict[str, np.ndarray]]  # {"near": {name: features}, "far": {...}}

    def __post_init__(self):
        weight = _check_floats("fc.weight", self.fc_weight, "K x D", 2)
        classes, dim = weight.shape
        if classes < 1 or dim < 1:
            raise ActivationsError(f"fc.weight is {weight.shape}; K and D must be >= 1")
        bias = _check_floats("fc.bias", self.fc_bias, f"({classes},)", 1)
        if bias.shape != (classes,):
            raise ActivationsError(
                f"fc.weight is {weight.shape} and fc.bias {bias.shape}; expected K x D and K"
            )
        features, labels = {}, {}
        for split in ID_SPLITS:
            if split not in self.id_features or split not in self.id_labels:
                raise ActivationsError(f"id.{split}: missing (the ID splits are {ID_SPLITS})")
            key = f"id.{split}"
            features[split] = _check_features(f"{key}.features", self.id_features[split], dim)
            labels[split] = _check_labels(
                f"{key}.labels", self.id_labels[split], len(features[split]), classes
            )
        if len(features["test"]) == 0:
            raise ActivationsError("id.test.features has 0 rows; the metrics need ID test data")
        ood = {}
        for group, sets in self.ood.items():
            if group not in ("near", "far"):
                raise ActivationsError(f"OOD group {group!r} is not near or far")
            ood[group] = {}
            for name, value in sets.items():
                key = f"ood.{group}.{name}.features"
                ood[group][name] = _check_features(key, value, dim)
                if len(value) == 0:
                    raise ActivationsError(f"{key} has 0 rows; an OOD set needs samples")
        for attribute, value in (
            ("fc_weight", weight),
            ("fc_bias", bias),
            ("id_features", features),
            ("id_labels", labels),
            ("ood", ood),
        ):
            object.__setattr__(self, attribute, value)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return fc_logits(self.fc_weight, self.fc_bias, features)

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
    """Read and check an activations file (see ``ActivationBank``); errors name the file, the
    key and, for values, the row."""
    path = Path(path)
    if not path.is_file():
        raise ActivationsError(f"{path}: no such activations file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise ActivationsError(f"{path}: not a readable .npz file ({err})") from None

    def need(key: str) -> np.ndarray:
        if key not in arrays:
            raise ActivationsError(f"{path}: missing key {key!r}")
        return arrays[key]

    weight, bias = need("fc.weight"), need("fc.bias")
    id_features = {split: need(f"id.{split}.features") for split in ID_SPLITS}
    id_labels = {split: need(f"id.{split}.labels") for split in ID_SPLITS}
    ood: dict[str, dict[str, np.ndarray]] = {"near": {}, "far": {}}
    known = {"fc.weight", "fc.bias"} | {
        f"id.{split}.{what}" for split in ID_SPLITS for what in ("features", "labels")
    }
    for key, value in arrays.items():
        parts = key.split(".")
        if parts[0] == "ood":
            if len(parts) != 4 or parts[1] not in ood or parts[3] != "features":
                raise ActivationsError(f"{path}: key {key!r} is not ood.near|far.<name>.features")
            ood[parts[1]][parts[2]] = value
        elif key not in known:
            raise ActivationsError(f"{path}: unknown key {key!r} (format: docs/formats.md)")
    if not ood["near"] and not ood["far"]:
        raise ActivationsError(f"{path}: no ood.near.<name>.features or ood.far.<name>.features")
    try:
        return ActivationBank(weight, bias, id_features, id_labels, ood)
    except ActivationsError as err:
        raise ActivationsError(f"{path}: {err}") from None


def benchmark_record(benchmark_dir: str | Path) -> dict:
    """{"name", "sha256"}: which benchmark (its benchmark.json) a result was computed on."""
    benchmark = read_benchmark(benchmark_dir)
    return {
        "name": benchmark.name,
        "sha256": sha256_file(Path(benchmark_dir) / BENCHMARK_FILE),
    }


def benchmark_image_size(benchmark) -> tuple[int, int]:
    return tuple(read_manifest(benchmark.id_splits["test"]).image_size)


def check_classifier_fits(info, benchmark_dir: str | Path) -> None:
    """Refuse a checkpoint (``RunInfo``) trained on another image size or class list than the
    benchmark's (``RunInfo.check_fits``)."""
    benchmark = read_benchmark(benchmark_dir)
    info.check_fits(
        f"benchmark {benchmark.name} ({benchmark_dir})",
        benchmark_image_size(benchmark),
        benchmark.class_names,
    )


def batch_features(model, batches, device, desc: str = "extract", total: int | None = None):
    """(features, labels) of every (images, labels) batch of ``batches`` (a shard set's batches
    or any DataLoader): ``model.features(images)`` as float32 rows, the labels as int64;
    ``total``: the number of batches (else ``len(batches)``), for the bar."""
    feats, labels = [], []
    with torch.no_grad():
        for images, batch_labels in progress(batches, desc=desc, total=total, unit="batch"):
            feats.append(model.features(images.to(device)).float().cpu().numpy())
            labels.append(np.asarray(batch_labels, dtype=np.int64).reshape(-1))
    if not feats:
        return np.zeros((0, model.fc.in_features), np.float32), np.zeros(0, np.int64)
    return np.concatenate(feats), np.concatenate(labels)


def _features_of(model, shard_set: Path, batch_size: int, device):
    """(features, labels) of every sample of ``shard_set``: ``model.features(uint8 images)``."""
    batches = -(-read_manifest(shard_set).num_samples // batch_size)
    return batch_features(
        model, iter_batches(shard_set, batch_size), device, f"extract {shard_set.name}", batches
    )


def benchmark_key(benchmark_dir: str | Path) -> dict:
    """The sha256 of every shard set's manifest of the benchmark: part of an activations
    file's key."""
    benchmark = read_benchmark(benchmark_dir)
    sets = {**benchmark.id_splits, **benchmark.near, **benchmark.far}
    return {name: sha256_file(path / MANIFEST) for name, path in sets.items()}


def cached_bank(out: Path, key: dict, compute) -> ActivationBank:
    """The activations file ``out`` when its JSON sidecar records ``key``; else ``compute()``,
    written (atomically, the sidecar last) before it is returned, so that no detector's
    failure loses it and a rerun reuses it."""
    out = Path(out)
    sidecar = out.with_suffix(".json")
    if (
        out.is_file()
        and sidecar.is_file()
        and not differences(json.loads(sidecar.read_text()), key)
    ):
        return load_activations(out)
    bank = compute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".npz") as tmp:
        np.savez(tmp, **bank.to_npz_dict())
    write_json_atomic(sidecar, key)
    return bank


def extract_activations(
    checkpoint: Path, benchmark_dir: Path, out: Path, *, batch_size: int, device: str = "cpu"
) -> ActivationBank:
    """Run the checkpoint's classifier over every split of the benchmark, once; cache as npz.

    A JSON sidecar records the checkpoint's and shard sets' checksums; a cache whose sidecar
    matches is reused, any other is recomputed.
    """
    key = {"checkpoint_sha256": sha256_file(checkpoint), "benchmark": benchmark_key(benchmark_dir)}

    def compute():
        model, info = load_classifier(checkpoint, device)
        check_classifier_fits(info, benchmark_dir)
        return model_activations(model, benchmark_dir, batch_size=batch_size, device=device)

    return cached_bank(out, key, compute)


def model_activations(model, benchmark_dir: Path, *, batch_size: int, device="cpu"):
    """The ``ActivationBank`` of ``model`` (``features(uint8 images)`` and an ``fc`` linear
    layer: sio's classifiers, or any model wrapped in ``sio.evaluate.ModelAdapter``) on every
    split of the benchmark, kept in memory."""
    benchmark = read_benchmark(benchmark_dir)
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
    weight = model.fc.weight.detach().float().cpu().numpy()
    bias = model.fc.bias
    return ActivationBank(
        weight,
        np.zeros(len(weight), np.float32) if bias is None else bias.detach().float().cpu().numpy(),
        id_features,
        id_labels,
        ood,
    )
