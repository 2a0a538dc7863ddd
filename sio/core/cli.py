"""What every stage's commands share: the ``--config`` and ``--device`` options, the pipeline
defaults they read, and one-line errors for bad input.

The stages' commands are sub-commands of the orchestrator's ``sio`` group (sio/cli.py), which
puts a ``CliDefaults`` on the click context: a stage reads its defaults through it and so never
imports the orchestrator's ``PipelineConfig``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click


class UserError(click.ClickException):
    """Shown as ``Error: ...`` with exit status 1, without a traceback."""


@dataclass(frozen=True)
class CliDefaults:
    """``load(path)``: the pipeline config of a ``--config`` path (None: ./pipeline.yaml if
    present, else the defaults), with one attribute per stage section."""

    load: Callable[[str | None], Any]


def pipeline_config(path: str | None) -> Any:
    """The pipeline config that the running ``sio`` command was given (see ``CliDefaults``)."""
    context = click.get_current_context()
    defaults = context.find_object(CliDefaults)
    if defaults is None:
        raise RuntimeError("stage commands run as sub-commands of sio (sio.cli.get_cli())")
    return defaults.load(path)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="pipeline.yaml to read defaults from (else ./pipeline.yaml).",
)
device_option = click.option(
    "--device", default=None, help="torch device (default: cuda when available, else cpu)."
)
