"""``sio train``."""

from __future__ import annotations

import os
import subprocess

import click

from sio.core.cli import (
    COUNT,
    SEED,
    UserError,
    config_option,
    device_option,
    field_range,
    pipeline_config,
)
from sio.train.config import TrainConfig

# The training stack (torch, the models) is imported inside the command, after the config and
# the options are checked: `--help` and a config mistake answer at once.

RECIPE_OVERRIDES = ("epochs", "lr", "model", "batch_size")  # sio train options over train.*


def _torchrun_arguments(options: dict) -> list[str]:
    """The same ``sio train`` command line, for each rank, without ``--nproc``."""
    arguments = ["train"]
    names = ("real", "synthetic", "val", "alpha", "seed", "out", "config", "device")
    for name in (*names, *RECIPE_OVERRIDES):
        if options[name] is not None:
            arguments += [f"--{name.replace('_', '-')}", str(options[name])]
    flags = [f"--{name}" for name in ("resume", "debug") if options.get(name)]
    return arguments + flags


@click.command()
@click.option("--real", required=True, help="Real training shard set: folder or URL.")
@click.option(
    "--synthetic",
    default=None,
    help="Synthetic shard set, folder or URL (needed when alpha < 1); several URLs of services "
    "serving one set, comma-separated, spread its shards over them.",
)
@click.option(
    "--val",
    default=None,
    help="ID validation shard set, folder or URL (a benchmark's id_val): its accuracy is "
    "measured after each epoch (val_acc in log.jsonl), without changing the weights.",
)
@click.option(
    "--alpha",
    type=float,
    default=None,
    help="Real fraction of every batch (default: the config's sio_alpha; 1 = baseline).",
)
@click.option(
    "--seed",
    type=SEED,
    default=0,
    show_default=True,
    help="Seeds the initialisation and every batch (with the epoch, rank and worker).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder: checkpoint.pt and log.jsonl.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its last checkpoint (a finished run is left as it "
    "is, a folder without one starts afresh). Without it, a folder that holds a checkpoint "
    "is refused, so a run is never overwritten.",
)
@click.option(
    "--nproc",
    type=COUNT,
    default=1,
    show_default=True,
    help="Data-parallel processes: runs `torchrun --standalone --nproc_per_node N -m sio "
    "train ...` (NCCL, one GPU each; gloo on the CPU).",
)
@click.option(
    "--debug",
    is_flag=True,
    help="Print the full traceback of a data error (also in the run folder's errors-rank-R.log).",
)
@click.option(
    "--epochs",
    type=field_range(TrainConfig, "epochs"),
    default=None,
    help="Overrides train.epochs.",
)
@click.option("--lr", type=float, default=None, help="Overrides train.lr (the peak rate).")
@click.option(
    "--model",
    default=None,
    help="Overrides train.model: small_cnn (8x8), cnn28 (28x28), resnet18_32, resnet18_224, "
    "densenet100.",
)
@click.option(
    "--batch-size",
    type=field_range(TrainConfig, "batch_size"),
    default=None,
    help="Overrides train.batch_size (global batch).",
)
@config_option
@device_option
def train(
    real,
    synthetic,
    val,
    alpha,
    seed,
    out,
    resume,
    nproc,
    debug,
    epochs,
    lr,
    model,
    batch_size,
    config_path,
    device,
):
    """Train a classifier on exact real:synthetic = alpha : 1-alpha batches.

    Settings come from --config (else ./pipeline.yaml, else the defaults); --epochs, --lr,
    --model and --batch-size override single fields of its train section.

    \b
    Examples:
      sio train --real data/digits/id_train --alpha 1 --seed 0 --out runs/base0
      sio train --real data/digits/id_train --val data/digits/id_val --alpha 1 \\
          --out runs/base0v && sio plot runs/base0v
      sio train --real data/digits/id_train --synthetic data/synthetic --alpha 0.8 \\
          --seed 0 --epochs 10 --out runs/sio0
      sio train --config examples/mnist5k.yaml --real runs/mnist5k/benchmark/id_train \\
          --alpha 1 --model cnn28 --out runs/m0
    """
    import dataclasses

    if nproc > 1:
        from sio.train.distributed import torchrun_command

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise click.UsageError("--nproc inside a torchrun process: drop --nproc")
        options = dict(locals(), config=config_path)
        status = subprocess.call(torchrun_command(nproc, _torchrun_arguments(options)))
        if status:
            raise click.ClickException(f"torchrun exited with status {status}")
        return  # rank 0's last line names the checkpoint
    config = pipeline_config(config_path)
    alpha = config.sio_alpha if alpha is None else alpha
    overrides = dict(epochs=epochs, lr=lr, model=model, batch_size=batch_size)
    train_config = dataclasses.replace(
        config.train, **{k: v for k, v in overrides.items() if v is not None}
    )
    if model is not None:
        from sio.train.models import BACKBONES

        if model not in BACKBONES:
            raise click.BadParameter(
                f"unknown model {model!r}; known: {', '.join(BACKBONES.names())}",
                param_hint="--model",
            )
    from sio.core.environment import default_device
    from sio.train.trainer import train_classifier

    try:
        train_classifier(
            real=real,
            synthetic=synthetic,
            alpha=alpha,
            seed=seed,
            config=train_config,
            out=out,
            device=device or default_device(),
            resume=resume,
            val=val,
        )
    except Exception as error:
        from sio.core.storage import TransportError
        from sio.shardset import ShardError

        if debug:
            import traceback

            click.echo(getattr(error, "worker_traceback", "") or traceback.format_exc(), err=True)
        if isinstance(error, (ShardError, TransportError)):
            raise UserError(str(error)) from error
        raise
    # the trainer's last line ("done: ..., checkpoint PATH") names the checkpoint, once
