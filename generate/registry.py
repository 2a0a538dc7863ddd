"""Generators by name: each loads from a local folder; one call, ``sample(n, labels, seed)``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sio.core.files import sha256_file
from sio.core.registry import Registry
from sio.generate.biggan import BigGANGenerator
from sio.generate.config import GenerateConfig, GeneratorConfig
from sio.generate.ddpm.model import DDPMGenerator
from sio.generate.job import Job, run_job
from sio.generate.stylegan2.generator import StyleGAN2Generator

GENERATORS: Registry = Registry("generator")


@GENERATORS.register("ddpm")
def _load_ddpm(path, config: GeneratorConfig, device, image_size):
    return DDPMGenerator.from_pretrained(path, device, config.sampler)


@GENERATORS.register("biggan")
def _load_biggan(path, config: GeneratorConfig, device, image_size):
    return BigGANGenerator.from_pretrained(
        path, device, settings=config.biggan, image_size=image_size
    )


@GENERATORS.register("stylegan2-ada")
def _load_stylegan2(path, config: GeneratorConfig, device, image_size):
    return StyleGAN2Generator.from_pretrained(
        path, device, settings=config.stylegan2, image_size=image_size
    )


FILE_GENERATORS = ("stylegan2-ada",)  # may be given a weights file instead of a folder


def load_generator(config: GeneratorConfig, path: str | Path, device="cpu", image_size=None):
    """The generator ``config.name`` from the folder ``path`` (never from the network)."""
    takes_file = config.name in FILE_GENERATORS
    if not Path(path).is_dir() and not (takes_file and Path(path).is_file()):
        raise FileNotFoundError(f"{path}: no generator folder{' or file' if takes_file else ''}")
    return GENERATORS.get(config.name)(path, config, device, image_size)


def weights_fingerprint(folder: str | Path) -> str:
    """sha256 over every weights file under ``folder`` (safetensors, bin, pt, pkl), by name;
    of the file itself when ``folder`` is a weights file."""
    digest = hashlib.sha256()
    if Path(folder).is_file():
        return sha256_file(folder)
    files = sorted(
        p for p in Path(folder).rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pkl")
    )
    if not files:
        raise FileNotFoundError(f"{folder}: no weights files (.safetensors, .bin, .pt, .pkl)")
    for path in files:
        digest.update(f"{path.relative_to(folder)}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def generate_shard_set(
    generator_dir,
    out,
    config: GenerateConfig,
    generator: GeneratorConfig,
    *,
    classifier=None,
    classifier_path=None,
    classifier_sha256=None,
    class_names=None,
    device="cpu",
    image_size=None,
    shards=None,
    rank=0,
    world_size=1,
    staging=None,
):
    """Load the generator and run the job (see job.py); returns the manifest, or None while
    shards are still missing."""
    model = load_generator(generator, generator_dir, device, image_size)
    model.prepare(precision=config.precision, compile=config.compile)
    job = build_job(
        model,
        config,
        generator.labels,
        class_names,
        Classifier(classifier, classifier_path, classifier_sha256),
    )
    return run_job(job, out, shards=shards, rank=rank, world_size=world_size, staging=staging)


@dataclass(frozen=True)
class Classifier:
    """A real-trained classifier given to a job: the model, its file, its sha256."""

    model: object = None
    path: str | None = None
    sha256: str | None = None


def build_job(model, config: GenerateConfig, labels, class_names, classifier: Classifier) -> Job:
    """The job of a loaded generator, with its class names checked."""
    if not model.conditional and classifier.model is None:
        raise ValueError(
            "an unconditional generator needs a classifier for pseudo-labels "
            "(--classifier CHECKPOINT)"
        )
    names = class_names or (model.class_names if model.conditional else None)
    if names is None:
        raise ValueError("pseudo-labels need the classifier's class names")
    if model.conditional and len(names) != model.num_classes:
        raise ValueError(
            f"{len(names)} class names for a generator with {model.num_classes} classes"
        )
    return Job(
        model,
        config,
        tuple(names),
        classifier.model,
        classifier.path,
        labels,
        classifier_sha256=classifier.sha256,
    )
