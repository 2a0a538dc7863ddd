"""``sio shard`` and ``sio shards verify``."""

from __future__ import annotations

import dataclasses

import click

from sio.cli import config_option, pipeline_config

from .benchmark import write_benchmark
from .verify import verify_shard_set


@click.command()
@click.argument("benchmark", type=click.Choice(["digits"]))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for the benchmark: one shard set per split plus benchmark.json.",
)
@click.option("--seed", type=int, default=None, help="Overrides shard.seed.")
@click.option("--shard-size", type=int, default=None, help="Overrides shard.shard_size.")
@config_option
def shard(benchmark, out, seed, shard_size, config_path):
    """Write BENCHMARK's ID train/val/test and every OOD set as shard sets."""
    config = pipeline_config(config_path).shard
    overrides = {"benchmark": benchmark, "seed": seed, "shard_size": shard_size}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    result = write_benchmark(config, out)
    for role, sets in (("id", result.id_splits), ("near", result.near), ("far", result.far)):
        for name, path in sets.items():
            click.echo(f"{role:5} {name:10} {path}")


@click.group()
def shards():
    """Inspect shard sets."""


@shards.command()
@click.argument("folder", type=click.Path(file_okay=False))
def verify(folder):
    """Check every shard of FOLDER against its manifest (count, size, sha256)."""
    count = verify_shard_set(folder)
    click.echo(f"{folder}: ok, {count} samples")
