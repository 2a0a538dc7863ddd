"""``sio generate``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from sio.cli import config_option, device_option, pipeline_config

from .job import GENERATORS, generate_shard_set
from .train_ddpm import train_from_shard_set


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
    required=True,
    type=click.Path(file_okay=False),
    help="Folder of the generator (save_pretrained layout).",
)
@click.option(
    "--train-on",
    type=click.Path(file_okay=False),
    default=None,
    help="Train the built-in DDPM on this real shard set first if --generator-dir "
    "does not exist yet.",
)
@click.option("--num", type=int, default=None, help="Number of images (overrides the config).")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for the synthetic shard set.",
)
@click.option(
    "--classifier",
    type=click.Path(dir_okay=False),
    default=None,
    help="checkpoint.pt of a real-trained classifier: records label agreement.",
)
@click.option("--seed", type=int, default=None)
@config_option
@device_option
def generate(name, generator_dir, train_on, num, out, classifier, seed, config_path, device):
    """Write labelled synthetic images from a generator as a shard set."""
    from sio.train import load_checkpoint

    from sio.pipeline import default_device

    config = pipeline_config(config_path)
    device = device or default_device()
    name = name or config.generator.name
    if not Path(generator_dir).exists():
        if train_on is None:
            raise click.UsageError(
                f"{generator_dir} does not exist; give --train-on REAL_SET "
                "to train the built-in DDPM there first"
            )
        train_from_shard_set(train_on, config.generator, generator_dir, device)
    overrides = {"num_images": num, "seed": seed}
    job = dataclasses.replace(
        config.generate, **{k: v for k, v in overrides.items() if v is not None}
    )
    judge = load_checkpoint(classifier, device)[0] if classifier else None
    manifest = generate_shard_set(
        generator_dir,
        out,
        job,
        config.generator.sampler,
        name=name,
        classifier=judge,
        classifier_path=classifier,
        device=device,
    )
    quality = manifest["provenance"].get("quality")
    click.echo(
        f"{out}: {manifest['num_samples']} images"
        + (f", label agreement {100 * quality['label_agreement']:.1f}%" if quality else "")
    )
