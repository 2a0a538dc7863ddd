"""The ``sio`` command: one sub-command per stage plus ``run`` and ``report``."""

from __future__ import annotations

from pathlib import Path

import click

from sio.config import ConfigError, PipelineConfig, load_pipeline


class UserError(click.ClickException):
    """Shown as ``Error: ...`` with exit status 1, without a traceback."""


# Errors that mean "bad input", not "bug": shown to the user as one clear line.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError)


class Group(click.Group):
    def invoke(self, ctx):
        from sio.shards import ShardError
        from sio.stages import StageConflict

        try:
            return super().invoke(ctx)
        except (*USER_ERRORS, ShardError, StageConflict) as err:
            raise UserError(str(err)) from err


def pipeline_config(path: str | None) -> PipelineConfig:
    """The ``--config`` file if given, else ./pipeline.yaml if present, else the defaults."""
    if path is not None:
        return load_pipeline(path)
    if Path("pipeline.yaml").is_file():
        return load_pipeline("pipeline.yaml")
    return PipelineConfig()


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="pipeline.yaml to read defaults from (else ./pipeline.yaml).",
)
device_option = click.option(
    "--device", default=None, help="torch device (default: cuda when available, else cpu)."
)


@click.group(cls=Group)
@click.version_option(package_name="sio")
def cli():
    """sio: synthetic in-distribution data for out-of-distribution detection."""


@cli.command()
@click.argument(
    "pipeline", required=False, default="pipeline.yaml", type=click.Path(dir_okay=False)
)
@click.option("--force", is_flag=True, help="Replace outputs made with a different config.")
@device_option
def run(pipeline, force, device):
    """Run every stage of PIPELINE (default ./pipeline.yaml) and print baseline vs +SIO."""
    from sio.pipeline import run_pipeline

    click.echo(run_pipeline(load_pipeline(pipeline), force=force, device=device))


def get_cli() -> click.Group:
    """The full command: each stage's commands live in its own folder and are added here."""
    from sio.evaluate.cli import evaluate, report
    from sio.generate.cli import generate
    from sio.generate.fid_cli import fid
    from sio.generate.stylegan2_export import stylegan2_export
    from sio.shards.cli import shard, shards
    from sio.train.cli import train

    commands = (shard, shards, generate, fid, stylegan2_export, train, evaluate, report)
    for command in commands:
        cli.add_command(command)
    return cli


def main():
    get_cli()(prog_name="sio")
