"""Integer options obey the bounds of the config fields they override (issue 24): a value the
YAML parser refuses for ``train.batch_size`` is refused for ``sio train --batch-size`` too, in
click's one line naming the option (exit 2), before any work starts; every other integer option
of every command has bounds of its own."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from sio.cli import get_cli
from sio.core.config import INT_BOUNDS, ConfigError, parse_dataclass
from sio.generate.config import FidConfig, GenerateConfig
from sio.shards.config import ShardConfig
from sio.train.config import TrainConfig

BIG = 2**63  # torch: "Maximum allowed dimension exceeded" when it got there

# (command, option, the config dataclass and field it overrides)
OVERRIDES = [
    ("train", "--epochs", TrainConfig, "epochs"),
    ("train", "--batch-size", TrainConfig, "batch_size"),
    ("generate", "--num-images", GenerateConfig, "num_images"),
    ("generate", "--shard-size", GenerateConfig, "shard_size"),
    ("generate", "--batch-size", GenerateConfig, "batch_size"),
    ("generate", "--network-batch", GenerateConfig, "network_batch"),
    ("generate", "--seed", GenerateConfig, "seed"),
    ("shard", "--shard-size", ShardConfig, "shard_size"),
    ("shard", "--seed", ShardConfig, "seed"),
    ("fid", "--batch-size", FidConfig, "batch_size"),
    ("fid", "--max-images", FidConfig, "max_images"),
]
# the required arguments that let each command parse (never reached: the option is refused first)
ARGUMENTS = {
    "train": ["--real", "r", "--out", "o"],
    "generate": ["--out", "o"],
    "shard": ["digits", "--out", "o"],
    "fid": ["s", "--real", "r"],
    "evaluate": ["--out", "o"],
    "shards convert": ["s", "d", "--encoding", "records"],
    "shards subset": ["s", "d"],
    "shards show": ["s", "--out", "o.png"],
}


def commands(group: click.Group = None, prefix: str = ""):
    """(name, command) of every command of ``sio``, sub-commands of groups included."""
    group = group or get_cli()
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def option(command_name: str, flag: str) -> click.Option:
    command = dict(commands())[command_name]
    (param,) = [p for p in command.params if flag in p.opts]
    return param


def sio(*args):
    return CliRunner().invoke(get_cli(), [str(a) for a in args])


def refused_in_one_line(result, flag: str) -> None:
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert errors[0].startswith("Error: Invalid value for ") and f"'{flag}'" in errors[0]
    assert "Maximum allowed dimension" not in result.output


def test_every_integer_option_of_every_command_is_bounded():
    unbounded = [
        f"{name} {param.opts[0]}"
        for name, command in commands()
        for param in command.params
        if isinstance(param.type, click.types.IntParamType)
        and not (
            isinstance(param.type, click.IntRange)
            and param.type.min is not None
            and param.type.max is not None
            and param.type.max <= INT_BOUNDS[1]
        )
    ]
    assert unbounded == []


@pytest.mark.parametrize("command, flag, cls, name", OVERRIDES)
def test_an_override_takes_the_bounds_of_its_field(command, flag, cls, name):
    """The option accepts exactly what the config parser accepts for the field (the parser is
    the judge: its lowest and highest values pass the option; one beyond is refused by both)."""
    param = option(command, flag)
    low, high = param.type.min, param.type.max
    for beyond in (low - 1, high + 1):
        with pytest.raises(ConfigError, match=f"{name}: must be in {low}..{high}"):
            parse_dataclass(cls, {name: beyond}, "")
    for within in (low, high):
        assert param.type.convert(within, param, None) == within


@pytest.mark.parametrize(
    "command, flag, value",
    [(command, flag, BIG) for command, flag, _, _ in OVERRIDES]
    + [
        ("train", "--seed", BIG),
        ("train", "--nproc", 0),
        ("generate", "--image-size", BIG),
        ("evaluate", "--seed", -1),
        ("shards convert", "--record-size", 0),
        ("shards subset", "--num", BIG),
        ("shards show", "--per-class", BIG),
        ("shards show", "--scale", BIG),
    ],
)
def test_an_integer_beyond_its_bounds_is_one_line_naming_the_option(command, flag, value):
    result = sio(*command.split(), *ARGUMENTS[command], flag, value)
    refused_in_one_line(result, flag)


def test_sio_train_batch_size_two_to_the_63_is_refused_before_torch():
    """The case issue 24 found: torch said "Maximum allowed dimension exceeded"."""
    result = sio("train", "--real", "r", "--out", "o", "--batch-size", "9223372036854775808")
    refused_in_one_line(result, "--batch-size")
    assert "1<=x<=1048576" in result.output
