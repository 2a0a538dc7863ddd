"""What every stage's commands share: the ``--config`` and ``--device`` options, the pipeline
defaults they read, one-line errors for bad input, and the bounds of integer options.

Every integer option is a ``click.IntRange``: one that overrides a config field takes that
field's bounds (``field_range``: its ``bounded`` metadata, else ``INT_BOUNDS``), so
``--batch-size 2**63`` is refused as ``batch_size: 2**63`` in a YAML file is, in click's one
line naming the option; any other is a ``SEED``, a ``COUNT`` or a range of its own.

The stages' commands are sub-commands of the orchestrator's ``sio`` group (sio/cli.py), which
puts a ``CliDefaults`` on the click context: a stage reads its defaults through it and so never
imports the orchestrator's ``PipelineConfig``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from sio.core.config import INT_BOUNDS


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


def field_range(cls: type, name: str) -> click.IntRange:
    """The click type of an option that overrides the int field ``name`` of config dataclass
    ``cls``: the field's bounds (``sio.core.config.bounded``), else ``INT_BOUNDS``."""
    (field,) = [f for f in dataclasses.fields(cls) if f.name == name]
    low, high = field.metadata.get("bounds", INT_BOUNDS)
    return click.IntRange(low, high)


SEED = click.IntRange(*INT_BOUNDS)  # a seed that no config field holds (as config seeds)
COUNT = click.IntRange(1, INT_BOUNDS[1])  # a count of samples, processes, ... that is no field
