"""The `sio` command: stage commands load on first use, and `sio --help` lists them unloaded."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from sio.cli import STAGE_COMMANDS, get_cli


@pytest.mark.parametrize("name", sorted(STAGE_COMMANDS))
def test_listed_summary_is_the_commands_own_first_line(name):
    cli = get_cli()
    command = cli.get_command(click.Context(cli), name)
    first_paragraph = " ".join((command.help or "").split("\n\n")[0].split())
    assert first_paragraph.startswith(STAGE_COMMANDS[name][2].rstrip("."))
    assert command.name == name


def imported_after(code: str) -> set[str]:
    probe = (
        "import sys\n"
        f"{code}\n"
        "heavy = ('torch', 'sklearn', 'diffusers', 'torchvision', 'matplotlib')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split("\n")[-2].split())


def test_help_imports_no_stage():
    loaded = imported_after(
        "from click.testing import CliRunner\n"
        "from sio.cli import get_cli\n"
        "result = CliRunner().invoke(get_cli(), ['--help'])\n"
        "assert result.exit_code == 0 and 'stylegan2-export' in result.output, result.output"
    )
    assert loaded == set()


def test_train_loads_the_training_stack_only():
    loaded = imported_after(
        "import click\n"
        "from sio.cli import get_cli\n"
        "cli = get_cli()\n"
        "cli.get_command(click.Context(cli), 'train')"
    )
    assert not loaded  # the command itself: its config is checked before torch is imported
    loaded = imported_after("import sio.train.trainer")  # what `sio train` then runs
    assert "torch" in loaded and not loaded & {"sklearn", "diffusers", "matplotlib"}


def test_evaluate_needs_alpha_and_seed_together(tmp_path):
    from click.testing import CliRunner

    result = CliRunner().invoke(
        get_cli(),
        ["evaluate", "--activations", "a.npz", "--alpha", "1", "--out", str(tmp_path / "e")],
    )
    assert result.exit_code == 2 and "give --alpha and --seed together" in result.output


def test_train_overrides_and_the_config_it_uses(tmp_path, monkeypatch):
    from click.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(get_cli(), ["train", "--real", "r", "--out", "o", "--model", "resnet19"])
    assert result.exit_code == 2 and "unknown model 'resnet19'" in result.output
    assert "using the defaults (no --config, no ./pipeline.yaml)" in result.output
    (tmp_path / "pipeline.yaml").write_text("train: {epochs: 3}\n")
    result = runner.invoke(get_cli(), ["train", "--real", "r", "--out", "o", "--model", "x"])
    assert "using config pipeline.yaml" in result.output


@pytest.mark.parametrize("name", ["run", "report", "plot", "shard", "shards", "train", "evaluate"])
def test_help_has_examples_and_every_option_is_described(name):
    cli = get_cli()
    command = cli.get_command(click.Context(cli), name)
    assert "Examples:" in (command.help or "")
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"sio {name} {param.opts[0]} has no help text"
