"""``sio shard`` and ``sio shards verify``."""

from __future__ import annotations

import dataclasses

import click

from sio.core.cli import COUNT, config_option, field_range, pipeline_config
from sio.shards.config import ShardConfig
from sio.shardset.records import RECORD_SIZE


@click.command()
@click.argument("benchmark")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for the benchmark: one shard set per split plus benchmark.json.",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder the benchmark's dataset paths are relative to (overrides shard.data_root).",
)
@click.option(
    "--splits",
    default=None,
    help="Comma-separated split folders (id_train, far_svhn, ...) or roles (id, near, far) to "
    "write; benchmark.json is written once every split is there.",
)
@click.option(
    "--seed",
    type=field_range(ShardConfig, "seed"),
    default=None,
    help="Overrides shard.seed (splits and write order).",
)
@click.option(
    "--order",
    type=click.Choice(["shuffled", "source"]),
    default=None,
    help="Overrides shard.order: shuffled (default; seeded) mixes the classes in every shard, "
    "source keeps the readers' order.",
)
@click.option(
    "--shard-size",
    type=field_range(ShardConfig, "shard_size"),
    default=None,
    help="Overrides shard.shard_size.",
)
@config_option
def shard(benchmark, out, data_root, splits, seed, order, shard_size, config_path):
    """Write BENCHMARK's ID train/val/test and every OOD set as shard sets.

    BENCHMARK is digits, a shipped benchmark file (cifar10, cifar100, imagenet10,
    imagenet-dogs, mnist5k) or the path of your own .yaml. Complete splits made the same way
    are kept, so an interrupted run resumes; a split made differently is refused, naming the
    changed field.

    \b
    Examples:
      sio shard digits --out data/digits
      sio shard mnist5k --out data/mnist5k --order shuffled
      sio shard cifar10 --data-root ~/datasets --out data/cifar10 --splits id,far
    """
    config = pipeline_config(config_path).shard  # a config mistake answers before the imports
    from sio.shards.build import check_shard_config
    from sio.shards.spec import benchmark_file

    if benchmark != "digits":
        benchmark_file(benchmark)  # an unknown name fails here, before any work
    overrides = {
        "benchmark": benchmark,
        "seed": seed,
        "order": order,
        "shard_size": shard_size,
        "data_root": data_root,
    }
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    wanted = [s.strip() for s in splits.split(",") if s.strip()] if splits else None
    check_shard_config(config, wanted)  # the whole file, as sio run checks it, before any split
    from sio.shards.benchmark import write_benchmark

    result = write_benchmark(config, out, wanted, report=click.echo)
    if result is None:
        click.echo(f"{out}: some splits are still missing; benchmark.json is not written yet")
        return
    for role, sets in (("id", result.id_splits), ("near", result.near), ("far", result.far)):
        for name, path in sets.items():
            click.echo(f"{role:5} {name:10} {path}")
    counts = f"{len(result.id_splits)} ID, {len(result.near)} near-OOD, {len(result.far)} far-OOD"
    click.echo(f"shard: benchmark {result.name} in {out} ({counts} shard sets)")


@click.group()
def shards():
    """Verify, convert, subset and show shard sets.

    \b
    Examples:
      sio shards verify data/digits/id_train
      sio shards convert data/synthetic data/synthetic-rec --encoding records
      sio shards subset data/synthetic data/synthetic-3000 --num 3000
      sio shards show data/digits/id_train --out grid.png
    """


@shards.command()
@click.argument("folder")
def verify(folder):
    """Check every shard of FOLDER (a folder or an s3:// or http(s):// prefix) against its
    manifest (count, size, sha256).

    \b
    Examples:
      sio shards verify data/digits/id_train
      sio shards verify http://127.0.0.1:8000      # a served or mirrored set
    """
    from sio.shardset.verify import verify_shard_set

    count = verify_shard_set(folder)
    click.echo(f"{folder}: ok, {count} samples")


@shards.command()
@click.argument("source")
@click.argument("destination")
@click.option(
    "--encoding",
    type=click.Choice(["records", "png"]),
    required=True,
    help="records: batched uint8 arrays (fast to stream); png: one PNG per sample.",
)
@click.option(
    "--record-size",
    type=COUNT,
    default=RECORD_SIZE,
    show_default=True,
    help="Images per record (records encoding).",
)
def convert(source, destination, encoding, record_size):
    """Write shard set SOURCE (folder or URL) in another encoding to DESTINATION (folder or
    s3://), shard for shard and sample for sample.

    \b
    Examples:
      sio shards convert data/synthetic data/synthetic-rec --encoding records
      sio shards convert data/synthetic-rec data/synthetic-png --encoding png
    """
    from sio.shardset.convert import convert_shard_set

    manifest = convert_shard_set(source, destination, encoding, record_size=record_size)
    click.echo(
        f"{destination}: {manifest.num_samples} samples in {len(manifest.shards)} shards, "
        f"encoding {encoding}"
    )


@shards.command()
@click.argument("source")
@click.argument("destination")
@click.option("--num", type=COUNT, required=True, help="Samples to keep: a shard boundary.")
def subset(source, destination, num):
    """Write the first NUM samples of local shard set SOURCE (whole shards, linked, not
    re-encoded) to DESTINATION as a shard set of its own.

    \b
    Examples:
      sio shards subset data/synthetic data/synthetic-3000 --num 3000
    """
    from sio.shardset.subset import subset_shard_set

    manifest = subset_shard_set(source, num, destination)
    click.echo(f"{destination}: {manifest.num_samples} samples in {len(manifest.shards)} shards")


@shards.command()
@click.argument("source")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option(
    "--per-class",
    type=click.IntRange(1, 1024),
    default=8,
    show_default=True,
    help="Images per class.",
)
@click.option(
    "--scale", type=click.IntRange(0, 64), default=0, help="Enlargement (0: images to ~64 pixels)."
)
def show(source, out, per_class, scale):
    """Write a grid of SOURCE's first images of each class (one row per class) to --out.

    \b
    Examples:
      sio shards show data/digits/id_train --out grid.png
      sio shards show data/synthetic --out synthetic.png --per-class 16 --scale 4
    """
    from sio.shards.show import write_grid

    click.echo(f"{write_grid(source, out, per_class, scale)}: {per_class} images per class")
