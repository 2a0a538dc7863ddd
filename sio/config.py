"""``pipeline.yaml`` parsed once into typed, frozen dataclasses.

Unknown keys are rejected and every error names the file and the field path
(``pipeline.yaml: train.batch_size: expected an integer, got 'big' (str)``). There is no
inheritance and no templating: what the file says, plus these defaults, is what runs, and the
resolved config (``to_dict``) is saved next to every output.

Here: the shard, generator, generate, fid and sweep sections and ``PipelineConfig``; the train
and evaluate sections are in config_train.py and config_evaluate.py, the parser in
configparse.py. Everything is importable from ``sio.config``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sio.config_evaluate import (
    ALL_DETECTORS,
    EvaluateConfig,
    KnnSettings,
    OdinSettings,
    OpenMaxSettings,
    PercentileSettings,
    SearchSettings,
    VimSettings,
)
from sio.config_train import (
    TRAIN_DEFAULTS,
    TRAIN_PRESETS,
    CePlusSettings,
    CutMixSettings,
    GodinSettings,
    LogitNormSettings,
    OESettings,
    PixMixSettings,
    TrainConfig,
    VosSettings,
)
from sio.configparse import (
    ConfigError,
    check_alpha,
    load_yaml_dataclass,
    parse_dataclass,
    to_dict,
)
from sio.configparse import check as _check

__all__ = [  # every section's dataclass is importable from here
    "ALL_DETECTORS",
    "TRAIN_DEFAULTS",
    "TRAIN_PRESETS",
    "CePlusSettings",
    "ConfigError",
    "CutMixSettings",
    "EvaluateConfig",
    "GodinSettings",
    "KnnSettings",
    "LogitNormSettings",
    "OESettings",
    "OdinSettings",
    "OpenMaxSettings",
    "PercentileSettings",
    "PixMixSettings",
    "SearchSettings",
    "TrainConfig",
    "VimSettings",
    "VosSettings",
    "check_alpha",
    "load_yaml_dataclass",
    "parse_dataclass",
    "to_dict",
]


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
            re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.+-]*)?", self.label) is not None,
            "label",
            f"{self.label!r}: a folder name (letters, digits, _ . + -; starting with a letter "
            "or digit)",
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
        self._check_alphas()

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

    def _check_alphas(self) -> None:
        swept = self.sweep.alphas or self.sweep.num_synthetic or self.sweep.generators
        _check(
            self.sio_alpha < 1 or not swept,
            "sio_alpha",
            "the sweep varies around the base point (generator, num_images, sio_alpha), "
            "which needs sio_alpha < 1 (alpha = 1 is the baseline, always run)",
        )
        names: dict[str, float] = {}
        for i, alpha in enumerate((self.sio_alpha, *self.sweep.alphas)):
            where = f"sweep.alphas[{i - 1}]" if i else "sio_alpha"
            seen = names.setdefault(f"{alpha:g}", alpha)
            _check(
                seen == alpha,
                where,
                f"{alpha} and {seen} would share the run folder name alpha{alpha:g}",
            )


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
