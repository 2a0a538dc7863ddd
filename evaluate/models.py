"""Evaluate any PyTorch classifier, not only sio's checkpoints.

- ``ModelAdapter`` gives any ``nn.Module`` the interface the evaluation uses: ``forward`` and
  ``features`` take uint8 images (or pixels in [0, 1], for ODIN's input gradients), normalise
  them with ``mean``/``std`` (none: the model gets pixels in [0, 1]) and return the logits or
  the penultimate features h; ``fc`` is the final linear layer. h is found in one of three ways:
  the model's own ``features(x)`` method with ``fc`` (sio's classifiers), the input of the
  final linear layer named ``fc_name`` (a forward pre-hook: torchvision's ``fc``), or the
  output, flattened, of the module named ``layer`` (a forward hook).
- ``Evaluator(model, benchmark=..., detectors=[...])`` extracts the activations of every split
  once, fits the activation detectors, scores ODIN (and other image detectors) with the model,
  and writes the same results.json as ``sio evaluate``.
- ``build_model("torchvision:resnet18" | "openood:resnet18_32x32" | "sio:resnet18_32", ...)``
  and ``openood_resnet18_32x32_to_sio``: OpenOOD v1.5's ``ResNet18_32x32`` state-dict layout
  mapped onto sio's ``resnet18_32`` classifier (the same network, other key names).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from sio.core.lock import hold_folder
from sio.core.weights import WeightsError, load_weights
from sio.evaluate.activations import ActivationBank, benchmark_record, model_activations
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
    ):
        super().__init__()
        self.model = model.eval()
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
) -> ModelAdapter:
    """A ``ModelAdapter`` for ``spec``: ``torchvision:<name>`` (built with ``num_classes``),
    ``openood:resnet18_32x32`` (OpenOOD v1.5's checkpoint layout, mapped onto sio's network),
    or ``sio:<backbone>`` (sio's registry), with the weights of ``weights``."""
    kind, _, name = spec.partition(":")
    state = _state_dict(weights)
    if kind == "torchvision":
        import torchvision

        try:
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        except ValueError as err:
            raise ModelError(f"--model {spec}: {err}") from None
        _load(model, state, weights)
        return ModelAdapter(model, fc_name=fc_name, layer=layer, mean=mean, std=std)
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
            mean=list(mean) if mean is not None else [0.0] * channels,
            std=list(std) if std is not None else [1.0] * channels,
        )
        _load(model, state, weights)
        return ModelAdapter(model, fc_name=fc_name, layer=layer)
    raise ModelError(
        f"--model {spec}: expected torchvision:<name>, openood:resnet18_32x32 or sio:<backbone>"
    )


class Evaluator:
    """Score ``model`` on a benchmark with ``detectors`` (default: all of ``config.methods``).

    ``model`` is any ``nn.Module`` (wrapped in a ``ModelAdapter`` with ``fc_name``, ``layer``,
    ``mean`` and ``std`` unless it is one already); its final linear layer must have one output
    per class of the benchmark. ``activations()`` extracts (once) the ``ActivationBank``;
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
            model = ModelAdapter(model, fc_name=fc_name, layer=layer, mean=mean, std=std)
        self.model = model.to(device).eval()
        self.device = device
        classes = len(self.benchmark.class_names)
        if self.model.fc.out_features != classes:
            raise ModelError(
                f"the model's {self.model.fc_name} has {self.model.fc.out_features} outputs, "
                f"but benchmark {self.benchmark.name} has {classes} classes"
            )
        self._bank: ActivationBank | None = None

    def activations(self) -> ActivationBank:
        if self._bank is None:
            self._bank = model_activations(
                self.model,
                self.benchmark_dir,
                batch_size=self.config.batch_size,
                device=self.device,
            )
        return self._bank

    def evaluate(self, out: str | Path | None = None) -> dict:
        """Every detector's results; written to ``out`` when given (which another job writing
        it refuses: ``FolderBusy``)."""
        from sio.evaluate.evaluate import check_methods, evaluate_bank, write_results

        check_methods(self.config.methods)
        with nullcontext() if out is None else hold_folder(out):  # one job writes a folder
            inputs = ModelInputs(
                None, self.benchmark_dir, self.config.batch_size, self.device, model=self.model
            )
            results = evaluate_bank(
                self.activations(),
                self.config.methods,
                self.config.fpr_convention,
                config=self.config,
                inputs=inputs,
            )
            results["benchmark"] = benchmark_record(self.benchmark_dir)
            if out is not None:
                write_results(results, out)
        return results


def train_pixel_statistics(benchmark_dir: str | Path) -> tuple[list[float], list[float]]:
    """The ID train set's per-channel pixel mean and std in [0, 1] (its manifest's)."""
    manifest = read_manifest(read_benchmark(benchmark_dir).id_splits["train"])
    return list(manifest.pixel_mean), [max(s, 1e-3) for s in manifest.pixel_std]


__all__ = [
    "Evaluator",
    "ModelAdapter",
    "ModelError",
    "build_model",
    "openood_resnet18_32x32_to_sio",
    "train_pixel_statistics",
]
