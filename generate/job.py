"""``sio generate``: a trained generator to a synthetic shard set, with a quality figure.

Labels are balanced (``i mod K``). Batch ``b`` is sampled with seed ``derive_seed(seed, b)``, so
any batch can be regenerated alone. When a classifier trained on real data is given, the manifest
records the label agreement: the fraction of images that the classifier assigns to their
conditioning label (a classification-accuracy score for the generator), and each sample's json
carries the classifier's probability of its label.
"""

from __future__ import annotations

from pathlib import Path

import torch
from sio.shards import ShardSetWriter
from tqdm import tqdm

import sio
from sio.config import GenerateConfig, SamplerConfig, to_dict
from sio.files import sha256_file
from sio.registry import Registry
from sio.seeding import derive_seed

from .ddpm import ConditionalDDPM

GENERATORS: Registry = Registry("generator")
GENERATORS.register("ddpm")(ConditionalDDPM)


def checkpoint_sha256(generator_dir: Path) -> str:
    weights = sorted((generator_dir / "unet").glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{generator_dir}/unet: no .safetensors weights")
    return sha256_file(weights[0])


def _classifier_probs(classifier, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return classifier(images.to(next(classifier.parameters()).device)).softmax(1).cpu()


def generate_shard_set(
    generator_dir: str | Path,
    out: str | Path,
    config: GenerateConfig,
    sampler: SamplerConfig,
    *,
    name: str = "ddpm",
    classifier=None,
    classifier_path: str | None = None,
    device: str = "cpu",
) -> dict:
    """Write ``config.num_images`` labelled images to ``out``; returns the manifest as JSON."""
    generator_dir = Path(generator_dir)
    generator = GENERATORS.get(name).from_pretrained(generator_dir, device=device)
    k = generator.num_classes
    provenance = {
        "generator": name,
        "generator_dir": str(generator_dir),
        "checkpoint_sha256": checkpoint_sha256(generator_dir),
        "sampler": to_dict(sampler),
        "generate": to_dict(config),
        "sio_version": sio.__version__,
    }
    size = generator.image_size
    writer = ShardSetWriter(
        out,
        kind="synthetic",
        name=Path(out).name,
        image_size=(size, size),
        channels=generator.channels,
        class_names=generator.class_names,
        shard_size=config.shard_size,
        provenance=provenance,
    )
    agree = 0
    with tqdm(total=config.num_images, desc=f"generate {name}", unit="img", leave=False) as bar:
        for batch, first in enumerate(range(0, config.num_images, config.batch_size)):
            n = min(config.batch_size, config.num_images - first)
            labels = torch.arange(first, first + n) % k
            seed = derive_seed(config.seed, batch)
            images = generator.sample(
                n, labels, seed, steps=sampler.steps, eta=sampler.eta, guidance=sampler.guidance
            )
            probs = _classifier_probs(classifier, images) if classifier is not None else None
            for j in range(n):
                meta = {"source": "synthetic", "generator": name, "seed": seed, "index": first + j}
                if probs is not None:
                    meta["classifier_prob"] = round(float(probs[j, labels[j]]), 6)
                image = images[j].permute(1, 2, 0).numpy()
                writer.write(
                    f"syn-{first + j:08d}",
                    image[..., 0] if image.shape[-1] == 1 else image,
                    int(labels[j]),
                    meta,
                )
            if probs is not None:
                agree += int((probs.argmax(1) == labels).sum())
            bar.update(n)
    quality = {"label_agreement": agree / config.num_images, "classifier": classifier_path}
    return writer.close({"quality": quality} if classifier is not None else None).to_json()
