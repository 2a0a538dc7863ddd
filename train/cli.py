"""``sio train``."""

from __future__ import annotations

import click

from sio.cli import config_option, device_option, pipeline_config

from .trainer import train_classifier


@click.command()
@click.option(
    "--real", required=True, type=click.Path(file_okay=False), help="Real training shard set."
)
@click.option(
    "--synthetic",
    type=click.Path(file_okay=False),
    default=None,
    help="Synthetic shard set (needed when alpha < 1).",
)
@click.option(
    "--alpha",
    type=float,
    default=None,
    help="Real fraction of every batch (default: the config's sio_alpha; 1 = baseline).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder: checkpoint.pt and log.jsonl.",
)
@config_option
@device_option
def train(real, synthetic, alpha, seed, out, config_path, device):
    """Train a classifier on exact real:synthetic = alpha : 1-alpha batches."""
    from sio.pipeline import default_device

    config = pipeline_config(config_path)
    alpha = config.sio_alpha if alpha is None else alpha
    path = train_classifier(
        real=real,
        synthetic=synthetic,
        alpha=alpha,
        seed=seed,
        config=config.train,
        out=out,
        device=device or default_device(),
    )
    click.echo(f"checkpoint: {path}")
