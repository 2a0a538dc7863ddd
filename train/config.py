"""The ``train`` section: recipe presets, the training methods' settings and ``TrainConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from sio.core.config import bounded
from sio.core.config import check as _check

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
    """LogitNorm (Wei et al., ICML 2022): cross-entropy on z / (tau * ||z||), with a linear
    learning-rate warm-up over ``warmup_epochs`` (0: none) before the cosine schedule."""

    temperature: float = 0.04
    warmup_epochs: int = 5

    def __post_init__(self):
        _check(self.temperature > 0, "temperature", "must be positive")
        _check(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")


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

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "shuffle_buffer": "the stream shuffles in seeded passes since issue 14; the shuffle's "
        "span is train.shuffle_window (samples per pass group)",
    }

    preset: Literal["cifar", "imagenet"] | None = None
    method: Literal["ce", "logitnorm", "godin", "vos", "cutmix", "ce_plus", "pixmix", "oe"] = "ce"
    model: str | None = None
    epochs: int | None = bounded(1, 10**6, default=None)
    batch_size: int | None = bounded(1, 2**20, default=None)
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    num_workers: int = bounded(0, 1024, default=2)
    shuffle_window: int = 10_000  # samples per pass group: the span of the shuffle (passes.py)
    steps_per_epoch: int | None = None  # null: SIO's epoch, ceil(N_real / batch_size) steps
    resident: bool = False  # load the shard sets into (host or GPU) memory once, index there
    on_error: Literal["raise", "skip"] = "raise"  # a corrupt sample: error, or skip and count
    trace: bool = False  # trace/rank-R.jsonl in the run folder: each step's sample keys
    checkpoint_every: int | None = None  # also checkpoint every N steps (resumable mid-epoch)
    # node-local cache of remote shards and of decoded shards, local sets' too (null:
    # $SIO_CACHE_DIR or ~/.cache/sio/shards)
    cache_dir: str | None = None
    # bytes the cache may hold (null: no limit); 32 GiB holds a 1M-image 32x32 RGB set decoded
    # (3.1 GB) and its remote shards several times over
    cache_limit: int | None = bounded(1, 2**63 - 1, default=32 * 2**30)
    read_timeout: float = 600.0  # seconds a remote shard may stay unreachable before failing
    crop_padding: int | None = bounded(0, 4096, default=None)
    hflip: bool | None = None
    # > 0: RandomResizedCrop to this size instead of pad-crop
    resized_crop: int | None = bounded(0, 16384, default=None)
    # GPU options (accelerate.py); the defaults change no result on any device
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast of the forward pass and loss
    channels_last: bool = False  # model and batches in torch.channels_last memory order
    device_augment: bool = False  # crop/flip of uint8 batches on the device (bitwise the same)
    compile: bool = False  # torch.compile the classifier (checkpoints stay the plain model's)
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
        _check(self.shuffle_window >= 1, "shuffle_window", "must be >= 1")
        _check(
            self.steps_per_epoch is None or self.steps_per_epoch > 0,
            "steps_per_epoch",
            "must be positive (or null for ceil(N_real / batch_size))",
        )
        _check(
            self.checkpoint_every is None or self.checkpoint_every > 0,
            "checkpoint_every",
            "must be positive (or null: at the end of every epoch only)",
        )
        _check(self.cache_limit is None or self.cache_limit > 0, "cache_limit", "bytes, > 0")
        _check(self.read_timeout > 0, "read_timeout", "must be positive (seconds)")
        _check(self.crop_padding >= 0, "crop_padding", "must be >= 0")
        _check(self.resized_crop >= 0, "resized_crop", "must be >= 0")
        _check(
            not (self.resized_crop and self.crop_padding),
            "resized_crop",
            "use either crop_padding or resized_crop, not both",
        )
        _check(
            not (self.device_augment and self.resized_crop),
            "device_augment",
            "only the pad-crop and flip run on the device; set resized_crop: 0 or this false",
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
