"""``sio generate`` (also under ``torchrun``: rank r takes shards i ≡ r mod W)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click

from sio.core.cli import config_option, device_option, pipeline_config
from sio.generate.ddpm.train import train_from_shard_set
from sio.generate.job import run_job
from sio.generate.registry import GENERATORS, Classifier, build_job, load_generator


def parse_shard_range(text: str | None) -> range | None:
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    try:
        return range(int(start), int(stop))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected START:STOP, e.g. 0:10") from None


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) alone."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def _device(requested: str | None, local_rank: int) -> str:
    import torch

    if requested:
        return requested
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


@click.command()
@click.option(
    "--generator",
    "name",
    default=None,
    type=click.Choice(GENERATORS.names()),
    help="Generator kind (default: the config's generator.name).",
)
@click.option(
    "--generator-dir",
    default=None,
    type=click.Path(),
    help="Folder of the generator (default: the config's generator.path).",
)
@click.option(
    "--train-on",
    type=click.Path(file_okay=False),
    default=None,
    help="Train the built-in DDPM on this real shard set first if --generator-dir "
    "does not exist yet.",
)
@click.option(
    "--num",
    "--num-images",
    "num",
    type=int,
    default=None,
    help="Number of images (overrides the config); under torchrun write --num-images.",
)
@click.option("--out", required=True, help="Folder or s3://bucket/prefix for the shard set.")
@click.option("--shard-size", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--shards", "shard_range", default=None, help="Only shards START:STOP.")
@click.option(
    "--classifier",
    type=click.Path(dir_okay=False),
    default=None,
    help="checkpoint.pt of a real-trained classifier: pseudo-labels for unconditional "
    "generators, label agreement for conditional ones.",
)
@click.option(
    "--classes-from",
    "classes_from",
    default=None,
    help="A real shard set (folder or URL) of the target benchmark: the synthetic set takes "
    "its class names and image size.",
)
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Side of the images written (default: the --classes-from set's, else the "
    "classifier's, else the generator's own).",
)
@click.option(
    "--network-batch",
    type=int,
    default=None,
    help="Rows per network call (part of what makes the bytes; on a GPU use --batch-size).",
)
@click.option("--seed", type=int, default=None)
@click.option(
    "--staging",
    type=click.Path(file_okay=False),
    default=None,
    help="Local folder for shards on their way to s3:// (default ~/.cache/sio).",
)
@config_option
@device_option
def generate(
    name,
    generator_dir,
    train_on,
    num,
    out,
    shard_size,
    batch_size,
    shard_range,
    classifier,
    classes_from,
    image_size,
    network_batch,
    seed,
    staging,
    config_path,
    device,
):
    """Write labelled synthetic images from a generator as a shard set, resumably."""
    from sio.train import load_classifier

    config = pipeline_config(config_path)
    rank, world_size, local_rank = _distributed()
    device = _device(device, local_rank)
    generator_dir = generator_dir or config.generator.path
    if not generator_dir:
        raise click.UsageError("give --generator-dir (or generator.path in the config)")
    generator = dataclasses.replace(
        config.generator, name=name or config.generator.name, path=str(generator_dir)
    )
    if not Path(generator_dir).exists():
        if generator.name != "ddpm":
            raise click.UsageError(f"{generator_dir}: no {generator.name} generator folder or file")
        if train_on is None or world_size > 1:
            raise click.UsageError(
                f"{generator_dir} does not exist; give --train-on REAL_SET (in one process, "
                "not under torchrun) to train the built-in DDPM there first"
            )
        train_from_shard_set(train_on, generator, generator_dir, device)
    overrides = {
        "num_images": num,
        "seed": seed,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "network_batch": network_batch,
    }
    job = dataclasses.replace(
        config.generate, **{k: v for k, v in overrides.items() if v is not None}
    )
    target = _target(classes_from, image_size)
    judge, info = None, None
    if classifier:
        judge, info = load_classifier(classifier, device)
    size = target.image_size or (info.image_size[0] if info and info.image_size else None)
    if generator.name == "biggan" and size is None:
        raise click.UsageError(
            "a biggan generator writes images of the target benchmark's size: give "
            "--classes-from REAL_SET, --image-size or a --classifier that records its size"
        )
    model = load_generator(generator, generator_dir, device, size)
    model.prepare(precision=job.precision, compile=job.compile)
    names = target.class_names or (info.class_names if info else None)
    if info is not None:
        what = f"the synthetic set {out}"
        info.check_fits(what, (model.image_size, model.image_size), names or info.class_names)
    if target.channels is not None and target.channels != model.channels:
        raise click.UsageError(
            f"{classes_from} holds {target.channels}-channel images, the generator makes "
            f"{model.channels}"
        )
    built = build_job(
        model,
        job,
        generator.labels,
        names,
        Classifier(judge, classifier, info.sha256 if info else None),
    )
    manifest = run_job(
        built,
        out,
        shards=parse_shard_range(shard_range),
        rank=rank,
        world_size=world_size,
        staging=staging,
    )
    if manifest is not None:
        quality = manifest["provenance"].get("quality") or {}
        agreement = quality.get("label_agreement")
        text = f", label agreement {100 * agreement:.1f}%" if agreement is not None else ""
        click.echo(
            f"{out}: {manifest['num_samples']} images in {len(manifest['shards'])} shards{text}"
        )


@dataclasses.dataclass(frozen=True)
class Target:
    """What the synthetic set must match: the real set's class names, image size, channels."""

    class_names: tuple[str, ...] | None = None
    image_size: int | None = None
    channels: int | None = None


def _target(classes_from: str | None, image_size: int | None) -> Target:
    if classes_from is None:
        return Target(image_size=image_size)
    from sio.shardset import read_manifest

    manifest = read_manifest(classes_from)
    height, width = manifest.image_size
    if height != width:
        raise click.UsageError(f"{classes_from}: {height}x{width} images; generators make squares")
    if image_size is not None and image_size != height:
        raise click.UsageError(
            f"--image-size {image_size}, but {classes_from} holds {height}x{width} images"
        )
    return Target(tuple(manifest.class_names), height, manifest.channels)
