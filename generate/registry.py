"""Generators by name: each loads from a local folder; one call, ``sample(n, labels, seed)``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sio.core.files import sha256_file
from sio.core.registry import Registry
from sio.generate.biggan import BigGANGenerator
from sio.generate.config import GeneratorConfig
from sio.generate.ddpm.model import DDPMGenerator
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


@GENERATORS.register("text2image")
def _load_text2image(path, config: GeneratorConfig, device, image_size):
    from sio.generate.text2image import Text2ImageGenerator  # transformers: an optional extra

    return Text2ImageGenerator.from_pretrained(
        path, device, settings=config.text2image, image_size=image_size
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
