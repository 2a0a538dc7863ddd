"""The ``generator``, ``generate`` and ``fid`` sections of pipeline.yaml."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Literal

from sio.core.config import bounded, short
from sio.core.config import check as _check


@dataclass(frozen=True)
class DDPMModelConfig:
    """A diffusers ``UNet2DModel`` with a class embedding; see generate/ddpm/model.py."""

    block_out_channels: tuple[int, ...] = bounded(1, 4096, default=(32, 64))
    layers_per_block: int = bounded(1, 64, default=1)
    attention: bool = False


@dataclass(frozen=True)
class DDPMTrainConfig:
    """Training the built-in DDPM (generate/ddpm/train.py). Every ``log_every`` steps (and at
    the end) a line goes to ``log.jsonl`` in the training folder; every ``checkpoint_every``
    steps (0: never) a training checkpoint is written there, from which a killed training
    resumes with the same bytes. Those two change no weight (``TRAIN_BYTE_NEUTRAL``)."""

    steps: int = bounded(1, 2**31 - 1, default=1000)
    batch_size: int = bounded(1, 2**20, default=128)
    lr: float = 2e-3
    ema_decay: float = 0.995
    seed: int = 0
    # Min-SNR-gamma loss weighting (Hang et al., ICCV 2023): each sample's noise MSE weighted by
    # min(SNR(t), gamma) / SNR(t), so the easy low-noise steps stop dominating; 0: plain MSE
    min_snr_gamma: float = bounded(0, 1e6, default=0.0)
    log_every: int = bounded(1, 2**31 - 1, default=50)
    checkpoint_every: int = bounded(0, 2**31 - 1, default=500)

    def __post_init__(self):
        _check(self.steps > 0, "steps", "must be positive")
        _check(self.batch_size > 0, "batch_size", "must be positive")
        _check(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        _check(self.min_snr_gamma >= 0, "min_snr_gamma", "must be >= 0 (0: plain MSE)")
        _check(self.log_every > 0, "log_every", "must be positive")
        _check(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0: never)")


# generator.train fields that change no byte of the trained weights
TRAIN_BYTE_NEUTRAL = ("log_every", "checkpoint_every")
# generator.train fields added since weights were first recorded, with the default they were
# trained with: left out of a training's definition while at it
TRAIN_ADDED = {"min_snr_gamma": 0.0}
# generate settings of the writing process alone (no byte of any shard depends on them)
PROCESS_ONLY = ("encode_threads",)
# settings of a generation job that change no byte of a shard: a resume may change them
BYTE_NEUTRAL = ("generate.num_images", *(f"generate.{key}" for key in PROCESS_ONLY))


@dataclass(frozen=True)
class SamplerConfig:
    """Diffusion sampling: ``kind`` ddim or ddpm, ``steps`` denoising steps, DDIM's ``eta``, and
    the classifier-free guidance weight ``guidance`` (1 = plain conditional; needs a null class)."""

    kind: Literal["ddim", "ddpm"] = "ddim"
    steps: int = bounded(1, 10_000, default=20)
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
class ClassPrompt:
    """The prompt of one class (its benchmark class name), instead of the template's."""

    name: str
    prompt: str


@dataclass(frozen=True)
class Text2ImageSettings:
    """A local diffusers text-to-image pipeline (generate/text2image.py): class ``name`` is
    drawn from ``prompt`` with ``{name}`` replaced (or its own in ``prompts``), against
    ``negative_prompt``, with ``steps`` denoising steps at classifier-free ``guidance``, at
    ``resolution`` pixels (a multiple of 8) and resized to the benchmark's size; ``grey`` makes
    one-channel images (luma) for a grey benchmark. ``class_names``: the classes to draw
    (empty: the target benchmark's)."""

    prompt: str = "a photo of a {name}"
    prompts: tuple[ClassPrompt, ...] = ()
    negative_prompt: str = ""
    guidance: float = bounded(0, 100, default=7.5)
    steps: int = bounded(1, 1000, default=30)
    resolution: int = bounded(8, 4096, default=512)
    grey: bool = False
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        _check(
            "{name}" in self.prompt,
            "prompt",
            f"{short(self.prompt)}: a template holding {{name}} (the class name)",
        )
        _check(self.resolution % 8 == 0, "resolution", "must be a multiple of 8 (the VAE's)")
        named = [p.name for p in self.prompts]
        _check(len(set(named)) == len(named), "prompts", "names a class twice")
        unknown = set(named) - set(self.class_names)
        _check(
            not self.class_names or not unknown,
            "prompts",
            f"{short(sorted(unknown))}: not among class_names",
        )

    def prompt_of(self, name: str) -> str:
        """Class ``name``'s prompt: its own in ``prompts``, else the template's."""
        own = {p.name: p.prompt for p in self.prompts}
        return own.get(name, self.prompt.replace("{name}", name))


@dataclass(frozen=True)
class LabelConfig:
    """Pseudo-labels for unconditional generators: ``argmax f(x)`` of a real-trained classifier,
    kept only with confidence >= ``min_confidence``; with ``quota`` every class gets its balanced
    share of each shard (sampling goes on until it is filled). For conditional generators,
    ``filter: agree`` keeps an image only when the classifier labels it as its conditioning
    class with confidence >= ``min_confidence``, drawing candidates until it does (see
    generate/images.py); ``none`` keeps every image as sampled."""

    min_confidence: float = 0.0
    quota: bool = True
    block: int = 1000  # images pseudo-labelled from one candidate stream (see generate/images.py)
    filter: Literal["none", "agree"] = "none"

    def __post_init__(self):
        _check(0 <= self.min_confidence < 1, "min_confidence", "must be in [0, 1)")
        _check(self.block > 0, "block", "must be positive")


@dataclass(frozen=True)
class GeneratorConfig:
    """``path``: a pretrained generator folder on disk; empty = train the built-in DDPM.
    ``label`` names the generator in a study's folders and plots (default: ``name``)."""

    name: Literal["ddpm", "biggan", "stylegan2-ada", "text2image"] = "ddpm"
    label: str = ""
    path: str = ""
    model: DDPMModelConfig = field(default_factory=DDPMModelConfig)
    train: DDPMTrainConfig = field(default_factory=DDPMTrainConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    biggan: BigGANSettings = field(default_factory=BigGANSettings)
    stylegan2: StyleGAN2Settings = field(default_factory=StyleGAN2Settings)
    text2image: Text2ImageSettings = field(default_factory=Text2ImageSettings)
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
            f"{short(self.label)}: a folder name (letters, digits, _ . + -; starting with a letter "
            "or digit)",
        )

    @property
    def key(self) -> str:
        """The generator's name in a study: its label, else its kind."""
        return self.label or self.name


# the generator kinds a config may name (tests/test_config.py: exactly the GENERATORS
# registry's), known without importing the generators
GENERATOR_KINDS = typing.get_args(typing.get_type_hints(GeneratorConfig)["name"])


@dataclass(frozen=True)
class GenerateConfig:
    """The generation job. Image q is sampled from (seed, q) alone, by a network that always
    runs on ``network_batch`` rows (on a GPU set it to ``batch_size``; it is part of what makes
    the bytes); on a GPU, ``precision`` bf16 runs the network under autocast and ``compile``
    wraps it in torch.compile. ``encoding``: png (a PNG per sample, ``encode_threads``
    encoders) or records (one batched uint8 record per sampled batch: no image encoding, for
    generators faster than PNG)."""

    num_images: int = 6000
    batch_size: int = bounded(1, 2**20, default=500)
    shard_size: int = 1000
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    encode_threads: int = bounded(1, 1024, default=2)
    encoding: Literal["png", "records"] = "png"
    network_batch: int = bounded(1, 2**20, default=100)

    def __post_init__(self):
        _check(self.num_images > 0, "num_images", "must be positive")
        _check(self.network_batch > 0, "network_batch", "must be positive")
        _check(self.batch_size > 0, "batch_size", "must be positive")
        _check(self.shard_size > 0, "shard_size", "must be positive")
        _check(self.encode_threads >= 1, "encode_threads", "must be >= 1")


@dataclass(frozen=True)
class AuditConfig:
    """When ``sio generate`` and ``sio run`` warn that SIO is likely to hurt far-OOD detection
    (sio.generate.agreement): the real-trained classifier's label agreement over the whole
    synthetic set below ``min_agreement``, or over any one class below ``min_class_agreement``
    (fractions in [0, 1]; 0 never warns). Thresholds only: no output depends on them."""

    min_agreement: float = bounded(0, 1, default=0.95)
    min_class_agreement: float = bounded(0, 1, default=0.9)

    def __post_init__(self):
        for name in ("min_agreement", "min_class_agreement"):
            _check(0 <= getattr(self, name) <= 1, name, "must be a fraction in [0, 1]")


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
    batch_size: int = bounded(1, 2**20, default=200)
    max_images: int | None = None  # per set: the first N images (null: all)

    def __post_init__(self):
        _check(self.batch_size > 0, "batch_size", "must be positive")
        _check(self.max_images is None or self.max_images >= 2, "max_images", "must be >= 2")
        _check(
            re.fullmatch(r"[0-9a-f]{8,64}", self.inception_sha256) is not None,
            "inception_sha256",
            "8 to 64 lower-case hex digits (a prefix of the file's sha256)",
        )
