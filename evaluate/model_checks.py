"""``check_model_fits``: a model against a benchmark before any image is read.

The head's outputs against the benchmark's classes, every parameter finite, the normalisation
against the input channels (grey repeated for a 3-channel stem, said in one line) and one pass
on a black image of the benchmark's size; a mismatch is one ``ModelError`` line naming the
model, the layer and the benchmark. Also the normalisation rules (``normalisation``:
"train", "none" or six numbers) that ``sio evaluate --model`` and ``Evaluator`` share.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sio.evaluate.adapter import ModelAdapter, ModelError
from sio.evaluate.model_build import check_finite_parameters
from sio.shards import read_benchmark
from sio.shardset import read_manifest


def train_pixel_statistics(benchmark_dir: str | Path) -> tuple[list[float], list[float]]:
    """The ID train set's per-channel pixel mean and std in [0, 1] (its manifest's)."""
    manifest = read_manifest(read_benchmark(benchmark_dir).id_splits["train"])
    return list(manifest.pixel_mean), [max(s, 1e-3) for s in manifest.pixel_std]


def normalises_itself(model: nn.Module) -> bool:
    """True for sio's classifiers (``sio.train.Classifier``): they normalise with their own
    buffers, so ``Evaluator`` adds no normalisation of its own."""
    from sio.train import Classifier

    return isinstance(model, Classifier)


def normalisation(normalize: str, benchmark_dir: str | Path):
    """(mean, std) of ``normalize``: "train" (the benchmark's ID train statistics), "none"
    ((None, None): the model gets pixels in [0, 1]) or mean values then std values, comma
    separated (``sio evaluate --normalize`` and ``Evaluator``)."""
    if normalize == "train":
        return train_pixel_statistics(benchmark_dir)
    if normalize == "none":
        return None, None
    try:
        values = [float(v) for v in normalize.split(",")]
    except ValueError:
        values = []
    if len(values) % 2 or not values:
        raise ModelError(f"normalize {normalize!r}: train, none, or mean values then std values")
    half = len(values) // 2
    return values[:half], values[half:]


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """(name, module) of the model's first ``nn.Conv2d`` (its stem), or None."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _input_channels(adapter: ModelAdapter, bench, channels: int | None) -> list[str]:
    """Set the channel count ``adapter`` gives the model; a note when grey is repeated."""
    have = read_manifest(bench.id_splits["test"]).channels
    stem = first_conv(adapter.model)
    want = channels or (stem[1].in_channels if stem else have)
    where = f"layer {stem[0]}" if stem and not channels else "--channels"
    if want == have:
        return []
    if have != 1:
        raise ModelError(
            f"model {adapter.name}: {where} takes {want} input channels, but benchmark "
            f"{bench.name}'s images have {have} (only grey can be repeated)"
        )
    adapter.input_channels = want
    return [f"benchmark {bench.name} is grey: its channel is repeated {want} times for model "
            f"{adapter.name}'s {where}"]  # fmt: skip


def _probe(adapter: ModelAdapter, bench, device) -> None:
    """One forward pass on a black image of the benchmark's size: a layer that cannot take it
    (image size, channels, feature width) is named, before any image is read."""
    manifest = read_manifest(bench.id_splits["test"])
    shape = (1, manifest.channels, *manifest.image_size)
    entered: list[str] = []
    hooks = [
        module.register_forward_pre_hook(lambda m, args, name=name: entered.append(name))
        for name, module in adapter.model.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            adapter.features(torch.zeros(shape, dtype=torch.uint8, device=device))
    except (RuntimeError, ValueError) as err:
        layer = f"layer {entered[-1]}" if entered else "its first layer"
        cause = str(err).strip().splitlines()[0]
        raise ModelError(
            f"model {adapter.name}: {layer} fails on benchmark {bench.name}'s "
            f"{'x'.join(map(str, shape[1:]))} images: {cause}"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()


def check_model_fits(adapter: ModelAdapter, benchmark_dir, channels: int | None = None):
    """Check ``adapter`` against the benchmark before any image is read: the final layer's
    outputs against its classes, the normalisation's values against the input channels, and
    one pass on a black image of its size and channels (grey repeated for a 3-channel stem,
    or to ``channels``). A mismatch is a ``ModelError`` naming the model, the layer and the
    benchmark (a NaN or inf parameter: naming it); returns the notes to show (one line each)."""
    bench = read_benchmark(benchmark_dir)
    classes = len(bench.class_names)
    if adapter.fc.out_features != classes:
        raise ModelError(
            f"model {adapter.name}: layer {adapter.fc_name} has {adapter.fc.out_features} "
            f"outputs, but benchmark {bench.name} has {classes} classes"
        )
    check_finite_parameters(adapter.model.state_dict(), f"model {adapter.name}")
    notes = _input_channels(adapter, bench, channels)
    width = adapter.input_channels or read_manifest(bench.id_splits["test"]).channels
    if adapter.mean is not None and adapter.mean.numel() not in (1, width):
        raise ModelError(
            f"model {adapter.name}: the normalisation has {adapter.mean.numel()} values per "
            f"channel, but its input from benchmark {bench.name} has {width} channels"
        )
    _probe(adapter, bench, next(adapter.parameters(), torch.zeros(0)).device)
    return notes
