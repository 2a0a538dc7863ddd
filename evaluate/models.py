"""Evaluate any PyTorch classifier, not only sio's checkpoints.

- ``ModelAdapter`` gives any ``nn.Module`` the interface the evaluation uses: ``forward`` and
  ``features`` take uint8 images (or pixels in [0, 1], for ODIN's input gradients), normalise
  them with ``mean``/``std`` (none: the model gets pixels in [0, 1]) and return the logits or
  the penultimate features h; ``fc`` is the final linear layer. h is found in one of three ways:
  the model's own ``features(x)`` method with ``fc`` (sio's classifiers), the input of the
  final linear layer named ``fc_name`` (a forward pre-hook: torchvision's ``fc``), or the
  output, flattened, of the module named ``layer`` (a forward hook). ``name`` names the model
  in errors; ``input_channels``, when set, repeats a grey image's channel to that many.
- ``check_model_fits``: before any image is read, the head's outputs against the benchmark's
  classes, the normalisation against the input channels (grey repeated for a 3-channel stem,
  said in one line) and one pass on a black image of the benchmark's size; a mismatch is one
  ``ModelError`` line naming the model, the layer and the benchmark.
- ``Evaluator(model, benchmark=..., detectors=[...])`` checks the model (as above), extracts the
  activations of every split once (kept in ``out/activations.npz`` before any detector runs),
  fits the activation detectors, scores ODIN (and other image detectors) with the model, and
  writes the same results.json as ``sio evaluate --model``, whose normalisation default
  ("train") it shares.
- ``build_model("torchvision:resnet18" | "openood:resnet18_32x32" | "sio:resnet18_32", ...)``
  and ``openood_resnet18_32x32_to_sio``: OpenOOD v1.5's ``ResNet18_32x32`` state-dict layout
  mapped onto sio's ``resnet18_32`` classifier (the same network, other key names).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from sio.core.lock import hold_folder
from sio.core.weights import WeightsError, load_weights
from sio.evaluate.activations import (
    ActivationBank,
    benchmark_key,
    benchmark_record,
    cached_bank,
    model_activations,
)
from sio.evaluate.config import EvaluateConfig
from sio.evaluate.image_scoring import ModelInputs
from sio.shards import read_benchmark
from sio.shardset import read_manifest


class ModelError(ValueError):
    """A model that does not fit the evaluation; the message names the model, layer or key."""


class ModelAdapter(nn.Module):
    """``model`` behind sio's classifier interface (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        fc_name: str = "fc",
        layer: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        name: str | None = None,
    ):
        super().__init__()
        self.model = model.eval()
        self.name = name or type(model).__name__
        self.input_channels: int | None = None  # set: a grey image's channel is repeated to it
        modules = dict(model.named_modules())
        if fc_name not in modules or not isinstance(modules[fc_name], nn.Linear):
            linear = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
            raise ModelError(
                f"the model has no nn.Linear named {fc_name!r} for its final layer; its linear "
                f"layers: {linear or 'none'} (pass fc_name=...)"
            )
        self.fc_name = fc_name
        self.layer = layer
        if layer is not None and layer not in modules:
            raise ModelError(f"the model has no module named {layer!r} (layer=...)")
        self.own_features = (
            layer is None
            and callable(getattr(model, "features", None))
            and not isinstance(model.features, nn.Module)
            and fc_name == "fc"
        )
        shape = (1, -1, 1, 1)
        self.register_buffer(
            "mean", None if mean is None else torch.tensor(mean, dtype=torch.float32).view(shape)
        )
        self.register_buffer(
            "std", None if std is None else torch.tensor(std, dtype=torch.float32).view(shape)
        )

    @property
    def fc(self) -> nn.Linear:
        return dict(self.model.named_modules())[self.fc_name]

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        if self.input_channels is not None and x.shape[1] == 1 < self.input_channels:
            x = x.expand(-1, self.input_channels, -1, -1)  # grey to the stem's channels
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.pixels(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pixels(images)
        if self.own_features:
            return self.model.features(x)
        captured = []
        if self.layer is None:
            handle = self.fc.register_forward_pre_hook(
                lambda module, args: captured.append(args[0])
            )
        else:
            target = dict(self.model.named_modules())[self.layer]
            handle = target.register_forward_hook(
                lambda module, args, output: captured.append(output)
            )
        try:
            self.model(x)
        finally:
            handle.remove()
        if not captured:
            where = self.layer or self.fc_name
            raise ModelError(f"the model's forward pass never ran its module {where!r}")
        features = captured[-1].flatten(1)
        if features.shape[1] != self.fc.in_features:
            raise ModelError(
                f"the features of {self.layer or self.fc_name!r} have width "
                f"{features.shape[1]}, but {self.fc_name} takes {self.fc.in_features}"
            )
        return features


# OpenOOD v1.5 openood/networks/resnet18_32x32.py -> sio's resnet18_32 under a Classifier
_OPENOOD_STEM = {"conv1.": "backbone.stem.0.", "bn1.": "backbone.stem.1."}
_OPENOOD_BLOCK = re.compile(r"^layer([1-4])\.([01])\.(.+)$")


def openood_resnet18_32x32_to_sio(state: dict) -> dict:
    """OpenOOD v1.5's ``ResNet18_32x32`` state dict with sio's ``resnet18_32`` key names:
    conv1/bn1 -> backbone.stem.0/1, layer{L}.{B} -> backbone.layers.{2(L - 1) + B}, fc -> fc
    (a DataParallel ``module.`` prefix is dropped). Unknown keys are an error naming them."""
    mapped = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        block = _OPENOOD_BLOCK.match(name)
        if block:
            layer, index, rest = block.groups()
            mapped[f"backbone.layers.{2 * (int(layer) - 1) + int(index)}.{rest}"] = value
        elif name.startswith("fc."):
            mapped[name] = value
        else:
            for old, new in _OPENOOD_STEM.items():
                if name.startswith(old):
                    mapped[new + name[len(old) :]] = value
                    break
            else:
                raise ModelError(f"key {key!r} is not part of OpenOOD's ResNet18_32x32")
    return mapped


def _state_dict(weights: str | Path) -> dict:
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        state = load_weights(path, what="PyTorch state dict")
    except WeightsError as err:  # refused or unreadable: one line naming it
        raise ModelError(str(err)) from None
    for wrapper in ("state_dict", "model_state", "net", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    return state


def _load(model: nn.Module, state: dict, weights) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).split("\n\t")[1:2] or [str(err)]
        raise ModelError(f"{weights}: the state dict does not fit the model: {first[0]}") from None
    missing = [k for k in result.missing_keys if k not in ("mean", "std")]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"{weights}: the state dict does not fit the model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
        )


def _per_channel(values: Sequence[float] | None, channels: int, default: float) -> list[float]:
    """One value per input channel: ``default`` when none, a single value repeated."""
    values = [default] if values is None else list(values)
    return values * channels if len(values) == 1 else values


def build_model(
    spec: str,
    weights: str | Path,
    num_classes: int,
    *,
    channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    fc_name: str = "fc",
    layer: str | None = None,
    benchmark: str = "the benchmark",
) -> ModelAdapter:
    """A ``ModelAdapter`` for ``spec``: ``torchvision:<name>`` (built with ``num_classes``),
    ``openood:resnet18_32x32`` (OpenOOD v1.5's checkpoint layout, mapped onto sio's network),
    or ``sio:<backbone>`` (sio's registry), with the weights of ``weights``; a final layer in
    ``weights`` with another number of outputs than ``num_classes`` (the classes of
    ``benchmark``) is one line naming the model, the layer and the benchmark."""
    kind, _, name = spec.partition(":")
    state = _state_dict(weights)
    head = state.get(f"module.{fc_name}.weight", state.get(f"{fc_name}.weight"))
    if head is not None and head.ndim == 2 and head.shape[0] != num_classes:
        raise ModelError(
            f"model {spec}: layer {fc_name} has {head.shape[0]} outputs in {weights}, but "
            f"{benchmark} has {num_classes} classes"
        )
    if kind == "torchvision":
        import torchvision

        try:
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        except ValueError as err:
            raise ModelError(f"--model {spec}: {err}") from None
        _load(model, state, weights)
        return ModelAdapter(model, fc_name=fc_name, layer=layer, mean=mean, std=std, name=spec)
    if kind in ("openood", "sio"):
        from sio.train import build_classifier

        backbone = {"openood": {"resnet18_32x32": "resnet18_32"}}.get(kind, {}).get(name, name)
        if kind == "openood" and name != "resnet18_32x32":
            raise ModelError(f"--model {spec}: the OpenOOD layout known is resnet18_32x32")
        if kind == "openood":
            state = openood_resnet18_32x32_to_sio(state)
        # the classifier normalises with its own buffers: identity unless mean/std are given
        model = build_classifier(
            backbone,
            in_channels=channels,
            num_classes=num_classes,
            mean=_per_channel(mean, channels, 0.0),
            std=_per_channel(std, channels, 1.0),
        )
        _load(model, state, weights)
        return ModelAdapter(model, fc_name=fc_name, layer=layer, name=spec)
    raise ModelError(
        f"--model {spec}: expected torchvision:<name>, openood:resnet18_32x32 or sio:<backbone>"
    )


class Evaluator:
    """Score ``model`` on a benchmark with ``detectors`` (default: all of ``config.methods``).

    ``model`` is any ``nn.Module``, wrapped in a ``ModelAdapter`` with ``fc_name``, ``layer``
    and the normalisation (``mean``/``std`` if given, else ``normalize``: "train", the
    benchmark's ID train pixel statistics, as ``sio evaluate --model``; "none"; or six numbers
    as text; none for sio's classifiers, which normalise themselves) unless it is one already.
    Before any image is read (``check_model_fits``) its input channels, class count, image
    size and normalisation are checked against the benchmark; a grey benchmark's channel is
    repeated for a 3-channel stem (said in one line on stderr; ``channels`` forces the count
    the model gets). ``activations(out)`` extracts (once) the ``ActivationBank``;
    ``evaluate(out)`` fits and scores every detector, ODIN with the model and the images, and
    writes results.json and results.md to ``out`` when given."""

    def __init__(
        self,
        model: nn.Module,
        *,
        benchmark: str | Path,
        detectors: Sequence[str] | None = None,
        config: EvaluateConfig | None = None,
        fc_name: str = "fc",
        layer: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: str = "train",
        channels: int | None = None,
        device: str = "cpu",
    ):
        import dataclasses

        config = config or EvaluateConfig()
        if detectors is not None:
            config = dataclasses.replace(config, methods=tuple(detectors))
        self.config = config
        self.benchmark_dir = Path(benchmark)
        self.benchmark = read_benchmark(self.benchmark_dir)
        if not isinstance(model, ModelAdapter):
            if mean is None and std is None and not normalises_itself(model):
                mean, std = normalisation(normalize, self.benchmark_dir)
            model = ModelAdapter(model, fc_name=fc_name, layer=layer, mean=mean, std=std)
        self.model = model.to(device).eval()
        self.device = device
        self.notes = check_model_fits(self.model, self.benchmark_dir, channels)
        for note in self.notes:
            sys.stderr.write(f"evaluate: {note}\n")
        self._bank: ActivationBank | None = None

    def activations(self, out: str | Path | None = None) -> ActivationBank:
        """The ``ActivationBank`` of every split, extracted once; with ``out``, kept in
        ``out/activations.npz`` (written before any detector runs, reused by a later call
        with the same model weights, normalisation and benchmark)."""

        def compute():
            if self._bank is not None:  # extracted before, in memory
                return self._bank
            return model_activations(
                self.model,
                self.benchmark_dir,
                batch_size=self.config.batch_size,
                device=self.device,
            )

        if out is not None:
            key = {"model": model_key(self.model), "benchmark": benchmark_key(self.benchmark_dir)}
            self._bank = cached_bank(Path(out) / "activations.npz", key, compute)
        elif self._bank is None:
            self._bank = compute()
        return self._bank

    def evaluate(self, out: str | Path | None = None, *, save_scores: bool = False) -> dict:
        """Every detector's results; written to ``out`` when given (which another job writing
        it refuses: ``FolderBusy``), with the activations first (``activations``) and, with
        ``save_scores``, every detector's per-sample scores (scores.npz)."""
        from sio.evaluate.evaluate import check_methods, evaluate_bank, write_results

        check_methods(self.config.methods)
        with nullcontext() if out is None else hold_folder(out):  # one job writes a folder
            inputs = ModelInputs(
                None, self.benchmark_dir, self.config.batch_size, self.device, model=self.model
            )
            scores = {} if save_scores else None
            results = evaluate_bank(
                self.activations(out),
                self.config.methods,
                self.config.fpr_convention,
                config=self.config,
                inputs=inputs,
                class_names=self.benchmark.class_names,
                scores=scores,
            )
            results["benchmark"] = benchmark_record(self.benchmark_dir)
            if out is not None:
                write_results(results, out, scores)
        return results


def model_key(model: nn.Module) -> dict:
    """What an activations file of ``model`` depends on: its class, the sha256 of its state
    dict (names, dtypes, shapes and bytes; a ``ModelAdapter``'s normalisation included) and,
    for an adapter, where the features are taken."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    inner = model.model if isinstance(model, ModelAdapter) else model
    return {
        "class": f"{type(inner).__module__}.{type(inner).__qualname__}",
        "state_sha256": digest.hexdigest(),
        "fc_name": getattr(model, "fc_name", "fc"),
        "layer": getattr(model, "layer", None),
        "input_channels": getattr(model, "input_channels", None),
    }


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
    benchmark; returns the notes to show (one line each)."""
    bench = read_benchmark(benchmark_dir)
    classes = len(bench.class_names)
    if adapter.fc.out_features != classes:
        raise ModelError(
            f"model {adapter.name}: layer {adapter.fc_name} has {adapter.fc.out_features} "
            f"outputs, but benchmark {bench.name} has {classes} classes"
        )
    notes = _input_channels(adapter, bench, channels)
    width = adapter.input_channels or read_manifest(bench.id_splits["test"]).channels
    if adapter.mean is not None and adapter.mean.numel() not in (1, width):
        raise ModelError(
            f"model {adapter.name}: the normalisation has {adapter.mean.numel()} values per "
            f"channel, but its input from benchmark {bench.name} has {width} channels"
        )
    _probe(adapter, bench, next(adapter.parameters(), torch.zeros(0)).device)
    return notes


__all__ = [
    "Evaluator",
    "check_model_fits",
    "ModelAdapter",
    "ModelError",
    "build_model",
    "normalisation",
    "openood_resnet18_32x32_to_sio",
    "train_pixel_statistics",
]
