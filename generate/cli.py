"""``sio generate`` (also under ``torchrun``: rank r takes shards i ≡ r mod W) and ``sio serve``
(the same shards over HTTP, made on request); both build their job from the same options."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sio.core.cli import config_option, device_option, field_range, pipeline_config
from sio.generate.config import GENERATOR_KINDS, DDPMTrainConfig, GenerateConfig
from sio.shardset.format import MAX_SIDE

if TYPE_CHECKING:
    from sio.generate.job import Job


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


def job_options(function):
    """The options that define a generation job (shared by generate and serve)."""
    options = [
        click.option(
            "--generator-dir",
            default=None,
            type=click.Path(),
            help="Folder (or, for stylegan2-ada, weights file) of the generator (default: the "
            "config's generator.path).",
        ),
        click.option(
            "--generator",
            "name",
            default=None,
            type=click.Choice(GENERATOR_KINDS),
            help="Generator kind (default: the config's generator.name).",
        ),
        click.option(
            "--num",
            "--num-images",
            "num",
            type=field_range(GenerateConfig, "num_images"),
            default=None,
            help="Number of images (overrides the config); under torchrun write --num-images.",
        ),
        click.option("--shard-size", type=field_range(GenerateConfig, "shard_size"), default=None),
        click.option("--batch-size", type=field_range(GenerateConfig, "batch_size"), default=None),
        click.option(
            "--network-batch",
            type=field_range(GenerateConfig, "network_batch"),
            default=None,
            help="Rows per network call (part of what makes the bytes; on a GPU use --batch-size).",
        ),
        click.option(
            "--encoding",
            type=click.Choice(["png", "records"]),
            default=None,
            help="Shard encoding (default: the config's generate.encoding).",
        ),
        click.option(
            "--classifier",
            type=click.Path(dir_okay=False),
            default=None,
            help="checkpoint.pt of a real-trained classifier: pseudo-labels for unconditional "
            "generators, label agreement for conditional ones.",
        ),
        click.option(
            "--classes-from",
            "classes_from",
            default=None,
            help="A real shard set (folder or URL) of the target benchmark: the synthetic set "
            "takes its class names and image size.",
        ),
        click.option(
            "--image-size",
            type=click.IntRange(1, MAX_SIDE),
            default=None,
            help="Side of the images written (default: the --classes-from set's, else the "
            "classifier's, else the generator's own).",
        ),
        click.option("--seed", type=field_range(GenerateConfig, "seed"), default=None),
        config_option,
        device_option,
    ]
    for option in reversed(options):
        function = option(function)
    return function


@dataclasses.dataclass(frozen=True)
class CommandOptions:
    """What ``job_options`` parsed, plus the generator's location and the output's name."""

    generator_dir: str | None = None
    name: str | None = None
    num: int | None = None
    shard_size: int | None = None
    batch_size: int | None = None
    network_batch: int | None = None
    encoding: str | None = None
    classifier: str | None = None
    classes_from: str | None = None
    image_size: int | None = None
    seed: int | None = None
    config_path: str | None = None
    device: str | None = None
    train_on: str | None = None
    train: dict = dataclasses.field(default_factory=dict)  # generator.train overrides
    what: str = "the synthetic set"

    def job(self, world_size: int = 1, local_rank: int = 0) -> Job:
        """The config's settings with the options over them (training the built-in DDPM first
        if asked), then ``prepare_job``: the classifier and generator loaded and checked against
        the target set as ``sio run`` does. The config is parsed before the generators (and
        diffusers) are imported: a mistake in it answers at once."""
        config = pipeline_config(self.config_path)
        from sio.generate.ddpm.train import train_from_shard_set
        from sio.generate.prepare import JobOptions, prepare_job

        device = _device(self.device, local_rank)
        generator_dir = self.generator_dir or config.generator.path
        if not generator_dir:
            raise click.UsageError("give the generator folder (or generator.path in the config)")
        generator = dataclasses.replace(
            config.generator,
            name=self.name or config.generator.name,
            path=str(generator_dir),
            train=dataclasses.replace(config.generator.train, **self.train),
        )
        if self.train and Path(generator_dir).exists():
            click.echo(f"{generator_dir} exists: used as it is (--train-* apply to a new one)")
        if not Path(generator_dir).exists():
            if generator.name != "ddpm":
                raise click.UsageError(
                    f"{generator_dir}: no {generator.name} generator folder or file"
                )
            if self.train_on is None or world_size > 1:
                raise click.UsageError(
                    f"{generator_dir} does not exist; give --train-on REAL_SET (in one process, "
                    "not under torchrun) to train the built-in DDPM there first"
                )
            train_from_shard_set(self.train_on, generator, generator_dir, device)
        overrides = {
            "num_images": self.num,
            "seed": self.seed,
            "shard_size": self.shard_size,
            "batch_size": self.batch_size,
            "network_batch": self.network_batch,
            "encoding": self.encoding,
        }
        settings = dataclasses.replace(
            config.generate, **{k: v for k, v in overrides.items() if v is not None}
        )
        options = JobOptions(
            generator,
            generator_dir,
            settings,
            classifier=self.classifier,
            classes_from=self.classes_from,
            image_size=self.image_size,
            device=device,
            what=self.what,
            size_from_target=True,
        )
        return prepare_job(options)


# sio generate options over generator.train (named as sio train's, with the prefix --train-)
TRAIN_OVERRIDES = {
    "steps": field_range(DDPMTrainConfig, "steps"),
    "batch_size": field_range(DDPMTrainConfig, "batch_size"),
    "lr": click.FloatRange(min=0, min_open=True),
    "ema_decay": click.FloatRange(0, 1, max_open=True),
    "seed": field_range(DDPMTrainConfig, "seed"),
    "min_snr_gamma": click.FloatRange(min=0),
    "log_every": field_range(DDPMTrainConfig, "log_every"),
    "checkpoint_every": field_range(DDPMTrainConfig, "checkpoint_every"),
}


def train_options(function):
    """``--train-steps``, ``--train-batch-size``, ...: one per ``TRAIN_OVERRIDES`` field."""
    for name, kind in reversed(TRAIN_OVERRIDES.items()):
        option = "--train-" + name.replace("_", "-")
        helps = f"Overrides generator.train.{name} (with --train-on)."
        function = click.option(option, f"train_{name}", type=kind, default=None, help=helps)(
            function
        )
    return function


def _train_overrides(options: dict, train_on: str | None) -> dict:
    """The ``--train-*`` values given (popped from ``options``), refused without --train-on."""
    given = {name: options.pop(f"train_{name}") for name in TRAIN_OVERRIDES}
    given = {name: value for name, value in given.items() if value is not None}
    if given and train_on is None:
        named = ", ".join("--train-" + name.replace("_", "-") for name in given)
        raise click.UsageError(f"{named} set how the DDPM is trained: give --train-on REAL_SET")
    return given


@click.command()
@click.option(
    "--train-on",
    type=click.Path(file_okay=False),
    default=None,
    help="Train the built-in DDPM on this real shard set first if --generator-dir "
    "does not exist yet (log.jsonl and a resumable checkpoint in GENERATOR_DIR.training; "
    "a rerun after a kill resumes there).",
)
@click.option("--out", required=True, help="Folder or s3://bucket/prefix for the shard set.")
@click.option("--shards", "shard_range", default=None, help="Only shards START:STOP.")
@click.option(
    "--staging",
    type=click.Path(file_okay=False),
    default=None,
    help="Local folder for shards on their way to s3:// (default ~/.cache/sio).",
)
@train_options
@job_options
def generate(train_on, out, shard_range, staging, **options):
    """Write labelled synthetic images from a generator as a shard set, resumably.

    With --train-on, a missing --generator-dir is first trained there (the built-in DDPM);
    --train-steps, --train-batch-size, --train-lr, ... override generator.train.

    \b
    Examples:
      sio generate --generator-dir runs/ddpm --train-on data/digits/id_train \\
          --train-steps 200 --classifier runs/base0/checkpoint.pt --out data/synthetic
      sio generate --generator-dir runs/ddpm --num 3000 --out data/synthetic-3k
    """
    rank, world_size, local_rank = _distributed()
    train = _train_overrides(options, train_on)
    request = CommandOptions(
        train_on=train_on, train=train, what=f"the synthetic set {out}", **options
    )
    job = request.job(world_size, local_rank)
    from sio.generate.resume import run_job

    manifest = run_job(
        job,
        out,
        shards=parse_shard_range(shard_range),
        rank=rank,
        world_size=world_size,
        staging=staging,
    )
    if manifest is not None and rank == 0:  # the per-class audit (audit.py), its one warning
        from sio.generate.audit import generated_report

        config = pipeline_config(options["config_path"])
        click.echo(generated_report(job, out, manifest, options["classes_from"], config))


@click.command()
@click.argument("generator_spec", required=False, metavar="[GENERATOR_SPEC]")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    required=True,
    help="TCP port (0: any free one).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--queue",
    "queue_size",
    type=click.IntRange(1, 4096),
    default=8,
    show_default=True,
    help="Shards that may wait for the generator; more requests wait, then get 503.",
)
@click.option(
    "--cache",
    type=click.IntRange(0, 4096),
    default=4,
    show_default=True,
    help="Recent shards kept in memory for repeated and ranged reads.",
)
@click.option(
    "--client-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds a client has to send a request (an idle connection is closed after it) "
    "and to take each piece of an answer.",
)
@click.option("--verbose", is_flag=True, help="Log every request.")
@job_options
def serve(generator_spec, port, host, queue_size, cache, client_timeout, verbose, **options):
    """Serve a generator's synthetic shard set over HTTP, each shard made on request.

    --generator-dir names the generator's folder (or file; default: the config's
    generator.path), as for `sio generate`; the old positional GENERATOR_SPEC still works. Each
    shard is byte-identical to what `sio generate` writes for it; `sio train --synthetic
    http://HOST:PORT` streams from the service.

    \b
    Examples:
      sio serve --generator-dir runs/ddpm --port 8000 --num-images 1000000
      sio train --real data/digits/id_train --synthetic http://127.0.0.1:8000 \\
          --alpha 0.8 --out runs/sio-served
    """
    options["generator_dir"] = _generator_dir(generator_spec, options["generator_dir"])
    job = CommandOptions(what="the served set", **options).job()  # config first
    from sio.generate.serve import GenerationServer, ShardService, serve_until_signalled

    service = ShardService(job, queue_size=queue_size, cache=cache)
    server = GenerationServer(service, host, port, verbose=verbose, client_timeout_s=client_timeout)
    click.echo(
        f"serving {job.config.num_images} images in {job.num_shards} shards of "
        f"{job.generator.name} at {server.url}/manifest.json (Ctrl-C or SIGTERM stops)",
    )
    serve_until_signalled(server)
    stats = service.stats
    click.echo(
        f"stopped: {stats.shards} shards ({stats.images} images) generated in "
        f"{stats.seconds:.1f} s, {stats.cache_hits} from the cache, {stats.refused} refused"
    )


def _generator_dir(positional: str | None, option: str | None) -> str | None:
    """``sio serve``'s generator: ``--generator-dir``, or the old positional spelling (one line
    says what replaced it)."""
    if positional is None:
        return option
    if option is not None:
        raise click.UsageError("give the generator once: --generator-dir PATH")
    click.echo(
        f"GENERATOR_SPEC is now --generator-dir: sio serve --generator-dir {positional} ...",
        err=True,
    )
    return positional
