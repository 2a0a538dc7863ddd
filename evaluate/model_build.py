"""``build_model``: a classifier from a model spec and a weights file, checked before use.

``torchvision:<name>``, ``openood:resnet18_32x32`` (OpenOOD v1.5's ``ResNet18_32x32`` state-dict
layout mapped onto sio's ``resnet18_32`` classifier by ``openood_resnet18_32x32_to_sio``: the
same network, other key names) or ``sio:<backbone>``. The weights are read weights-only
(``sio.core.weights``); a head with another class count than the benchmark's, a state dict
that does not fit, or a parameter holding NaN or inf (``check_finite_parameters``) is one
``ModelError`` line naming the file, before any image is read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from sio.core.weights import WeightsError, load_weights
from sio.evaluate.adapter import ModelAdapter, ModelError


def check_finite_parameters(state: dict, source: str | Path) -> None:
    """A ``ModelError`` naming ``source`` (a checkpoint path, or a model) and the first
    floating-point tensor of ``state`` (a state dict) that holds NaN or inf: scores computed
    from it would be NaN, so it is refused before any image is read."""
    for name, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ModelError(
                    f"{source}: parameter {name} holds {bad} NaN or inf values of "
                    f"{tensor.numel()}; a model with non-finite weights cannot be evaluated"
                )


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
    check_finite_parameters(state, weights)
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
