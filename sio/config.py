"""``pipeline.yaml`` parsed once into typed, frozen dataclasses.

Unknown keys are rejected and every error names the file and the field path
(``pipeline.yaml: train.batch_size: expected an integer, got 'big' (str)``). There is no
inheritance and no templating: what the file says, plus these defaults, is what runs, and the
resolved config (``to_dict``) is saved next to every output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config value that cannot be used; the message starts with its source and field path."""


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field_name}: {message}")


@dataclass(frozen=True)
class DigitsConfig:
    """The embedded benchmark built from scikit-learn's digits and scikit-image's images."""

    id_classes: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    near_ood_classes: tuple[int, ...] = (6, 7, 8, 9)
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    far_ood_images_per_set: int = 500

    def __post_init__(self):
        classes = set(self.id_classes) | set(self.near_ood_classes)
        _check(all(0 <= c <= 9 for c in classes), "id_classes", "digit classes are 0..9")
        _check(len(self.id_classes) >= 2, "id_classes", "needs at least two classes")
        _check(
            not set(self.id_classes) & set(self.near_ood_classes),
            "near_ood_classes",
            "must not overlap id_classes",
        )
        _check(0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)")
        _check(0 < self.test_fraction < 1, "test_fraction", "must be in (0, 1)")
        _check(self.val_fraction + self.test_fraction < 1, "test_fraction", "val + test < 1")
        _check(self.far_ood_images_per_set > 0, "far_ood_images_per_set", "must be positive")


@dataclass(frozen=True)
class ShardConfig:
    benchmark: Literal["digits"] = "digits"
    seed: int = 0
    shard_size: int = 256
    digits: DigitsConfig = field(default_factory=DigitsConfig)

    def __post_init__(self):
        _check(self.shard_size > 0, "shard_size", "must be positive")


@dataclass(frozen=True)
class DDPMModelConfig:
    """A diffusers ``UNet2DModel`` with a class embedding; see generate/ddpm.py."""

    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention: bool = False


@dataclass(frozen=True)
class DDPMTrainConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    ema_decay: float = 0.995
    seed: int = 0

    def __post_init__(self):
        _check(self.steps > 0, "steps", "must be positive")
        _check(self.batch_size > 0, "batch_size", "must be positive")
        _check(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")


@dataclass(frozen=True)
class SamplerConfig:
    """DDIM sampling; ``guidance`` is the classifier-free guidance weight (1 = conditional only)."""

    steps: int = 20
    eta: float = 0.0
    guidance: float = 1.0

    def __post_init__(self):
        _check(self.steps > 0, "steps", "must be positive")
        _check(0 <= self.eta <= 1, "eta", "must be in [0, 1]")
        _check(self.guidance >= 0, "guidance", "must be >= 0")


@dataclass(frozen=True)
class GeneratorConfig:
    name: Literal["ddpm"] = "ddpm"
    model: DDPMModelConfig = field(default_factory=DDPMModelConfig)
    train: DDPMTrainConfig = field(default_factory=DDPMTrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


@dataclass(frozen=True)
class GenerateConfig:
    num_images: int = 6000
    batch_size: int = 500
    shard_size: int = 1000
    seed: int = 0

    def __post_init__(self):
        _check(self.num_images > 0, "num_images", "must be positive")
        _check(self.batch_size > 0, "batch_size", "must be positive")
        _check(self.shard_size > 0, "shard_size", "must be positive")


@dataclass(frozen=True)
class TrainConfig:
    """SIO's recipe: SGD with Nesterov momentum and a per-step cosine schedule to zero."""

    model: str = "small_cnn"
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    num_workers: int = 2
    shuffle_buffer: int = 1000
    crop_padding: int = 1
    hflip: bool = False

    def __post_init__(self):
        _check(self.epochs > 0, "epochs", "must be positive")
        _check(self.batch_size > 0, "batch_size", "must be positive")
        _check(self.lr > 0, "lr", "must be positive")
        _check(self.num_workers >= 0, "num_workers", "must be >= 0")
        _check(self.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1")
        _check(self.crop_padding >= 0, "crop_padding", "must be >= 0")


@dataclass(frozen=True)
class EvaluateConfig:
    methods: tuple[str, ...] = ("msp", "mls", "ebo")
    fpr_convention: Literal["id", "ood"] = "id"
    batch_size: int = 512


def check_alpha(alpha: float, field_name: str = "alpha") -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(
            f"{field_name}: must be in [0, 1] (the real fraction of each batch), got {alpha}"
        )
    return alpha


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ``sio run`` does: baseline (alpha = 1) against +SIO (``sio_alpha``) over seeds."""

    output_dir: str = "runs/digits"
    seeds: tuple[int, ...] = (0, 1, 2)
    sio_alpha: float = 0.8
    shard: ShardConfig = field(default_factory=ShardConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def __post_init__(self):
        check_alpha(self.sio_alpha, "sio_alpha")
        _check(len(self.seeds) >= 1, "seeds", "needs at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", "must be distinct")


# --- parsing ---------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r} ({type(value).__name__})")
        (item_type, _) = typing.get_args(tp)
        return tuple(_coerce(item_type, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is float:
        return _coerce_float(value, path)
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        got = f"{value!r} ({type(value).__name__})"
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {got}")
    return value


def _coerce_float(value: Any, path: str) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):  # PyYAML reads ``5e-4`` (no dot) as a string
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None or not math.isfinite(number):
        raise ConfigError(
            f"{path}: expected a finite number, got {value!r} ({type(value).__name__})"
        )
    return number


def parse_dataclass(cls: type, data: Any, path: str):
    """Build ``cls`` from a mapping, rejecting unknown keys; errors carry ``path``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}expected a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            raise ConfigError(f"{path}.{key}: unknown key; known keys: {', '.join(known)}")
    kwargs = {key: _coerce(hints[key], value, f"{path}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path}.{err}") from None


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file; every error names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: pipeline file not found. sio run reads a YAML file with the sections "
            "shard, generator, generate, train and evaluate; the repository's pipeline.yaml "
            "is a complete example."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return parse_dataclass(PipelineConfig, data, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {str(err).lstrip('.')}") from None


def to_dict(config: Any) -> dict:
    """The resolved config as JSON-ready data (tuples become lists)."""

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))
