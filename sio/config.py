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
import re
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
    """``benchmark``: ``digits`` (built in code), a benchmark file shipped in sio/shards/benchmarks
    (``cifar10``, ``cifar100``, ``imagenet10``, ``imagenet-dogs``, ``mnist5k``) or the path of
    one's own ``.yaml``; ``data_root``: the folder its dataset paths are relative to."""

    benchmark: str = "digits"
    seed: int = 0
    shard_size: int = 256
    data_root: str | None = None
    digits: DigitsConfig = field(default_factory=DigitsConfig)

    def __post_init__(self):
        _check(bool(self.benchmark), "benchmark", "must name a benchmark or a .yaml file")
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
    """Diffusion sampling: ``kind`` ddim or ddpm, ``steps`` denoising steps, DDIM's ``eta``, and
    the classifier-free guidance weight ``guidance`` (1 = plain conditional; needs a null class)."""

    kind: Literal["ddim", "ddpm"] = "ddim"
    steps: int = 20
    eta: float = 0.0
    guidance: float = 1.0

    def __post_init__(self):
        _check(self.steps > 0, "steps", "must be positive")
        _check(0 <= self.eta <= 1, "eta", "must be in [0, 1]")
        _check(self.guidance >= 0, "guidance", "must be >= 0")


@dataclass(frozen=True)
class BigGANSettings:
    """pytorch-pretrained-biggan: ``imagenet_classes[k]`` is the ImageNet index of class k."""

    truncation: float = 0.4
    imagenet_classes: tuple[int, ...] = ()

    def __post_init__(self):
        _check(0 < self.truncation <= 1, "truncation", "must be in (0, 1]")
        _check(
            all(0 <= c < 1000 for c in self.imagenet_classes),
            "imagenet_classes",
            "ImageNet class indices are 0..999",
        )


@dataclass(frozen=True)
class StyleGAN2Settings:
    """stylegan2-ada-pytorch generators: truncation ``w' = w_avg + ψ (w − w_avg)`` (ψ = 1: none)
    and the noise inputs: ``const`` (the network's stored noise), ``random`` (drawn from the
    batch seed) or ``none``."""

    truncation_psi: float = 1.0
    noise_mode: Literal["const", "random", "none"] = "const"

    def __post_init__(self):
        _check(0 < self.truncation_psi <= 1, "truncation_psi", "must be in (0, 1]")


@dataclass(frozen=True)
class LabelConfig:
    """Pseudo-labels for unconditional generators: ``argmax f(x)`` of a real-trained classifier,
    kept only with confidence >= ``min_confidence``; with ``quota`` every class gets its balanced
    share of each shard (sampling goes on until it is filled)."""

    min_confidence: float = 0.0
    quota: bool = True

    def __post_init__(self):
        _check(0 <= self.min_confidence < 1, "min_confidence", "must be in [0, 1)")


@dataclass(frozen=True)
class GeneratorConfig:
    """``path``: a pretrained generator folder on disk; empty = train the built-in DDPM.
    ``label`` names the generator in a study's folders and plots (default: ``name``)."""

    name: Literal["ddpm", "biggan", "stylegan2-ada"] = "ddpm"
    label: str = ""
    path: str = ""
    model: DDPMModelConfig = field(default_factory=DDPMModelConfig)
    train: DDPMTrainConfig = field(default_factory=DDPMTrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    biggan: BigGANSettings = field(default_factory=BigGANSettings)
    stylegan2: StyleGAN2Settings = field(default_factory=StyleGAN2Settings)
    labels: LabelConfig = field(default_factory=LabelConfig)

    def __post_init__(self):
        _check(
            self.name == "ddpm" or self.path,
            "path",
            f"the {self.name} generator is loaded from a folder: set generator.path",
        )
        _check(
            re.fullmatch(r"[A-Za-z0-9_.+-]*", self.label) is not None,
            "label",
            f"{self.label!r}: a folder name (letters, digits, _ . + -)",
        )

    @property
    def key(self) -> str:
        """The generator's name in a study: its label, else its kind."""
        return self.label or self.name


@dataclass(frozen=True)
class GenerateConfig:
    """The generation job. Shard i is sampled from seed (seed, i) alone; on a GPU, ``precision``
    bf16 runs the network under autocast and ``compile`` wraps it in torch.compile.
    ``encoding``: png (a PNG per sample, ``encode_threads`` encoders) or records (one batched
    uint8 record per sampled batch: no image encoding, for generators faster than PNG)."""

    num_images: int = 6000
    batch_size: int = 500
    shard_size: int = 1000
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    encode_threads: int = 2
    encoding: Literal["png", "records"] = "png"

    def __post_init__(self):
        _check(self.num_images > 0, "num_images", "must be positive")
        _check(self.batch_size > 0, "batch_size", "must be positive")
        _check(self.shard_size > 0, "shard_size", "must be positive")
        _check(self.encode_threads >= 1, "encode_threads", "must be >= 1")


# The fields a preset may set, with their values when neither the preset nor the file sets them.
TRAIN_DEFAULTS: dict[str, Any] = {
    "model": "small_cnn",
    "epochs": 40,
    "batch_size": 128,
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "crop_padding": 1,
    "hflip": False,
    "resized_crop": 0,
}

# Named recipes. ``train.preset: cifar`` fills every field the file leaves unset (or null) from
# here; fields the file sets win. The resolved config (to_dict) holds the expanded values.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # SIO / OpenOOD CIFAR: ResNet-18 (CIFAR stem), 200 epochs, pad-4 crop + flip.
    "cifar": {
        **TRAIN_DEFAULTS,
        "model": "resnet18_32",
        "epochs": 200,
        "crop_padding": 4,
        "hflip": True,
    },
    # SIO's ImageNet subsets (imagenet_train_subclasses.py): ResNet-18 (ImageNet stem), 60 epochs,
    # global batch 256, SGD without Nesterov, weight decay 1e-4, RandomResizedCrop 224 + flip.
    # Its alpha (0.9) is the pipeline's top-level sio_alpha, not a train field.
    "imagenet": {
        **TRAIN_DEFAULTS,
        "model": "resnet18_224",
        "epochs": 60,
        "batch_size": 256,
        "nesterov": False,
        "weight_decay": 1e-4,
        "crop_padding": 0,
        "hflip": True,
        "resized_crop": 224,
    },
}


@dataclass(frozen=True)
class LogitNormSettings:
    """LogitNorm (Wei et al., ICML 2022): cross-entropy on z / (tau * ||z||)."""

    temperature: float = 0.04

    def __post_init__(self):
        _check(self.temperature > 0, "temperature", "must be positive")


@dataclass(frozen=True)
class GodinSettings:
    """G-ODIN (Hsu et al., CVPR 2020): the test-time input perturbation (pixels in [0, 1])."""

    epsilon: float = 0.0025

    def __post_init__(self):
        _check(self.epsilon >= 0, "epsilon", "must be >= 0")


@dataclass(frozen=True)
class VosSettings:
    """VOS (Du et al., ICLR 2022): per-class feature queues, Gaussian draws, energy regulariser."""

    queue_size: int = 1000  # features kept per class
    samples: int = 10000  # Gaussian draws per class and step
    select: int = 1  # lowest-likelihood draws kept per class as virtual outliers
    weight: float = 0.1  # weight of the energy regulariser
    start_epoch: int = 0  # first epoch with the regulariser (once every queue is full)

    def __post_init__(self):
        _check(self.queue_size >= 2, "queue_size", "must be >= 2")
        _check(1 <= self.select <= self.samples, "select", "must be in 1..samples")
        _check(self.weight >= 0, "weight", "must be >= 0")
        _check(self.start_epoch >= 0, "start_epoch", "must be >= 0")


@dataclass(frozen=True)
class CutMixSettings:
    """CutMix (Yun et al., ICCV 2019), on every batch; lambda ~ Beta(beta, beta)."""

    beta: float = 1.0

    def __post_init__(self):
        _check(self.beta > 0, "beta", "must be positive")


@dataclass(frozen=True)
class CePlusSettings:
    """CE+: RandAugment, label smoothing, a longer schedule with linear warm-up, then cosine."""

    randaugment_ops: int = 1  # RandAugment N
    randaugment_magnitude: int = 9  # RandAugment M, on torchvision's 0..30 scale
    label_smoothing: float = 0.1
    epoch_multiplier: int = 3  # trains epoch_multiplier * epochs epochs
    warmup_epochs: int = 5  # linear warm-up from lr / warm-up steps to lr

    def __post_init__(self):
        _check(self.randaugment_ops >= 1, "randaugment_ops", "must be >= 1")
        _check(0 <= self.randaugment_magnitude <= 30, "randaugment_magnitude", "must be 0..30")
        _check(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        _check(self.epoch_multiplier >= 1, "epoch_multiplier", "must be >= 1")
        _check(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")


@dataclass(frozen=True)
class PixMixSettings:
    """PixMix (Hendrycks et al., CVPR 2022) with pictures from the shard set ``mixing``."""

    mixing: str = ""  # mixing shard set (fractals, feature visualisations, any shard set)
    k: int = 4  # at most k mixing rounds per image
    beta: float = 3.0
    severity: int = 3  # AugMix operation severity, 1..10

    def __post_init__(self):
        _check(self.k >= 0, "k", "must be >= 0")
        _check(self.beta > 0, "beta", "must be positive")
        _check(1 <= self.severity <= 10, "severity", "must be in 1..10")


@dataclass(frozen=True)
class OESettings:
    """Outlier Exposure (Hendrycks et al., ICLR 2019) with outliers from the shard set
    ``outliers``; ``outlier_multiple * batch_size`` outliers join every batch."""

    outliers: str = ""
    outlier_multiple: int = 2
    weight: float = 0.5

    def __post_init__(self):
        _check(self.outlier_multiple >= 1, "outlier_multiple", "must be >= 1")
        _check(self.weight >= 0, "weight", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """SIO's recipe: SGD with Nesterov momentum and a per-step cosine schedule to zero, plus the
    training method (``method``, names in sio.train.METHODS) and its settings.

    ``preset`` (``cifar`` or ``imagenet``, see TRAIN_PRESETS) fills the recipe fields left unset
    (null); without a preset they take TRAIN_DEFAULTS. Explicit values always win.
    """

    preset: Literal["cifar", "imagenet"] | None = None
    method: Literal["ce", "logitnorm", "godin", "vos", "cutmix", "ce_plus", "pixmix", "oe"] = "ce"
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    num_workers: int = 2
    shuffle_buffer: int = 1000
    steps_per_epoch: int | None = None  # null: SIO's epoch, ceil(N_real / batch_size) steps
    resident: bool = False  # load the shard sets into (host or GPU) memory once, index there
    on_error: Literal["raise", "skip"] = "raise"  # a corrupt sample: error, or skip and count
    crop_padding: int | None = None
    hflip: bool | None = None
    resized_crop: int | None = None  # > 0: RandomResizedCrop to this size instead of pad-crop
    logitnorm: LogitNormSettings = field(default_factory=LogitNormSettings)
    godin: GodinSettings = field(default_factory=GodinSettings)
    vos: VosSettings = field(default_factory=VosSettings)
    cutmix: CutMixSettings = field(default_factory=CutMixSettings)
    ce_plus: CePlusSettings = field(default_factory=CePlusSettings)
    pixmix: PixMixSettings = field(default_factory=PixMixSettings)
    oe: OESettings = field(default_factory=OESettings)

    def __post_init__(self):
        recipe = TRAIN_PRESETS[self.preset] if self.preset else TRAIN_DEFAULTS
        for name, value in recipe.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        _check(self.epochs > 0, "epochs", "must be positive")
        _check(self.batch_size > 0, "batch_size", "must be positive")
        _check(self.lr > 0, "lr", "must be positive")
        _check(self.num_workers >= 0, "num_workers", "must be >= 0")
        _check(self.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1")
        _check(
            self.steps_per_epoch is None or self.steps_per_epoch > 0,
            "steps_per_epoch",
            "must be positive (or null for ceil(N_real / batch_size))",
        )
        _check(self.crop_padding >= 0, "crop_padding", "must be >= 0")
        _check(self.resized_crop >= 0, "resized_crop", "must be >= 0")
        _check(
            not (self.resized_crop and self.crop_padding),
            "resized_crop",
            "use either crop_padding or resized_crop, not both",
        )
        self._check_method()

    def _check_method(self):
        needs = {
            "pixmix": ("pixmix.mixing", self.pixmix.mixing),
            "oe": ("oe.outliers", self.oe.outliers),
        }
        if self.method in needs:
            name, value = needs[self.method]
            _check(bool(value), name, f"method {self.method} needs a shard set here")
        if self.method == "ce_plus":
            total = self.epochs * self.ce_plus.epoch_multiplier
            _check(
                self.ce_plus.warmup_epochs < total,
                "ce_plus.warmup_epochs",
                f"must be below the {total} training epochs",
            )


@dataclass(frozen=True)
class OdinSettings:
    """ODIN: softmax temperature and input-perturbation size (pixels in [0, 1])."""

    temperature: float = 1000.0
    epsilon: float = 0.0014

    def __post_init__(self):
        _check(self.temperature > 0, "temperature", "must be positive")
        _check(self.epsilon >= 0, "epsilon", "must be >= 0")


@dataclass(frozen=True)
class PercentileSettings:
    """ReAct's clipping and DICE's sparsification percentile, in (0, 100)."""

    percentile: float = 90.0

    def __post_init__(self):
        _check(0 < self.percentile < 100, "percentile", "must be in (0, 100)")


@dataclass(frozen=True)
class KnnSettings:
    """KNN: the k-th nearest ID train feature; backend auto = faiss if importable, else torch."""

    k: int = 50
    backend: Literal["auto", "faiss", "torch"] = "auto"

    def __post_init__(self):
        _check(self.k >= 1, "k", "must be >= 1")


@dataclass(frozen=True)
class VimSettings:
    """VIM: principal-space dimension; null = 256 when the feature width D >= 512, else D // 2."""

    dim: int | None = None

    def __post_init__(self):
        _check(self.dim is None or self.dim >= 1, "dim", "must be >= 1 or null")


@dataclass(frozen=True)
class OpenMaxSettings:
    """OpenMax: Weibull tail size per class and the number of top classes recalibrated."""

    tail_size: int = 20
    alpha_rank: int = 3

    def __post_init__(self):
        _check(self.tail_size >= 2, "tail_size", "must be >= 2")
        _check(self.alpha_rank >= 1, "alpha_rank", "must be >= 1")


@dataclass(frozen=True)
class SearchSettings:
    """Optional detector hyperparameter search (OpenOOD v1.5's APS), off by default: a seeded
    ``ood_val_fraction`` of each OOD set is held out as OOD val and left out of every test
    metric; ID val is the ID side. Grids: sio/evaluate/search.py."""

    enabled: bool = False
    ood_val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        _check(0 < self.ood_val_fraction <= 0.5, "ood_val_fraction", "must be in (0, 0.5]")


ALL_DETECTORS = (
    *("openmax", "msp", "tempscale", "odin", "ebo", "gradnorm"),
    *("react", "mls", "klm", "vim", "knn", "dice"),
)


@dataclass(frozen=True)
class EvaluateConfig:
    """Post-hoc detectors (names in sio.evaluate.DETECTORS; defaults as OpenOOD v1.5), metrics."""

    methods: tuple[str, ...] = ALL_DETECTORS
    fpr_convention: Literal["id", "ood"] = "id"
    batch_size: int = 512
    odin: OdinSettings = field(default_factory=OdinSettings)
    react: PercentileSettings = field(default_factory=PercentileSettings)
    dice: PercentileSettings = field(default_factory=PercentileSettings)
    knn: KnnSettings = field(default_factory=KnnSettings)
    vim: VimSettings = field(default_factory=VimSettings)
    openmax: OpenMaxSettings = field(default_factory=OpenMaxSettings)
    search: SearchSettings = field(default_factory=SearchSettings)

    def __post_init__(self):
        _check(len(self.methods) >= 1, "methods", "needs at least one detector")
        _check(len(set(self.methods)) == len(self.methods), "methods", "must be distinct")
        _check(self.batch_size > 0, "batch_size", "must be positive")


def check_alpha(alpha: float, field_name: str = "alpha") -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(
            f"{field_name}: must be in [0, 1] (the real fraction of each batch), got {alpha}"
        )
    return alpha


# sha256 of torch-fidelity's weights-inception-2015-12-05-6726825d.pth (torch.hub names files
# after the first 8 hex digits of their sha256; the full value is as published for that file)
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


@dataclass(frozen=True)
class FidConfig:
    """Synthetic-set quality. ``inception_weights``: torch-fidelity's Inception file (checked
    against ``inception_sha256``) for FID; empty: the Fréchet distance of a real-trained
    classifier's penultimate features, reported as ``fd_classifier``, never as FID."""

    inception_weights: str = ""
    inception_sha256: str = INCEPTION_SHA256
    batch_size: int = 200
    max_images: int | None = None  # per set: the first N images (null: all)

    def __post_init__(self):
        _check(self.batch_size > 0, "batch_size", "must be positive")
        _check(self.max_images is None or self.max_images >= 2, "max_images", "must be >= 2")
        _check(
            re.fullmatch(r"[0-9a-f]{8,64}", self.inception_sha256) is not None,
            "inception_sha256",
            "8 to 64 lower-case hex digits (a prefix of the file's sha256)",
        )


@dataclass(frozen=True)
class SweepConfig:
    """What ``sio run`` varies besides seeds. ``alphas``, ``num_synthetic`` and ``generators``
    (each a full generator section with its own ``label``) add values to the base point
    (``sio_alpha``, ``generate.num_images``, ``generator``). ``grid: false`` varies one axis at a
    time around the base point (the paper's figures); ``true`` runs every combination. Each
    generator is trained and sampled once, at its largest count; smaller counts are its first
    shards, so they must be multiples of ``generate.shard_size``."""

    alphas: tuple[float, ...] = ()
    num_synthetic: tuple[int, ...] = ()
    generators: tuple[GeneratorConfig, ...] = ()
    grid: bool = False

    def __post_init__(self):
        for i, alpha in enumerate(self.alphas):
            check_alpha(alpha, f"alphas[{i}]")
        for i, count in enumerate(self.num_synthetic):
            _check(count > 0, f"num_synthetic[{i}]", "must be positive")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ``sio run`` does: baseline (alpha = 1) against +SIO (``sio_alpha``) over seeds,
    and the sweep's other alphas, synthetic counts and generators."""

    output_dir: str = "runs/digits"
    seeds: tuple[int, ...] = (0, 1, 2)
    sio_alpha: float = 0.8
    shard: ShardConfig = field(default_factory=ShardConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    fid: FidConfig = field(default_factory=FidConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self):
        check_alpha(self.sio_alpha, "sio_alpha")
        _check(len(self.seeds) >= 1, "seeds", "needs at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", "must be distinct")
        keys = [g.key for g in self.generators]
        for i, key in enumerate(keys):
            _check(
                key not in keys[:i],
                f"sweep.generators[{i - 1}].label" if i else "generator.label",
                f"{key!r} names two generators; give each a distinct label",
            )
        self._check_counts()

    @property
    def generators(self) -> tuple[GeneratorConfig, ...]:
        """The base generator, then the sweep's."""
        return (self.generator, *self.sweep.generators)

    def _check_counts(self) -> None:
        counts = (self.generate.num_images, *self.sweep.num_synthetic)
        shard_size = self.generate.shard_size
        for i, count in enumerate(counts):
            _check(
                count == max(counts) or count % shard_size == 0,
                f"sweep.num_synthetic[{i - 1}]" if i else "generate.num_images",
                f"{count} is a prefix of the generated set and must be a multiple of "
                f"generate.shard_size ({shard_size}) or the largest count",
            )


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
    return load_yaml_dataclass(PipelineConfig, path)


def load_yaml_dataclass(cls: type, path: Path):
    """Parse a YAML file into ``cls``; every error names the file and the field path."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return parse_dataclass(cls, data, "")
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
