"""The ``sio`` command: one sub-command per stage plus ``run`` and ``report``.

Each stage's commands live in its own folder and are imported only when called, so ``sio train``
under torchrun loads the training stack and not the generators or sklearn, and ``sio --help``
lists the commands from the one-line summaries below without importing any stage.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from sio.core.cli import CliDefaults, UserError, device_option
from sio.core.config import ConfigError
from sio.pipeline.config import PipelineConfig, load_pipeline

# command name -> (module, attribute, the first line of its help, as `sio --help` lists it)
STAGE_COMMANDS = {
    "shard": (
        "sio.shards.cli",
        "shard",
        "Write BENCHMARK's ID train/val/test and every OOD set as shard sets.",
    ),
    "shards": (
        "sio.shards.cli",
        "shards",
        "Verify, convert, subset and show shard sets.",
    ),
    "generate": (
        "sio.generate.cli",
        "generate",
        "Write labelled synthetic images from a generator as a shard set, resumably.",
    ),
    "serve": (
        "sio.generate.cli",
        "serve",
        "Serve a generator's synthetic shard set over HTTP, each shard made on request.",
    ),
    "fid": (
        "sio.generate.fid_cli",
        "fid",
        "Fréchet distance of shard set SYNTHETIC to --real; recorded in SYNTHETIC/quality/.",
    ),
    "stylegan2-export": (
        "sio.generate.stylegan2.export",
        "stylegan2_export",
        "Export a stylegan2-ada-pytorch PKL's generator to OUT_DIR as safetensors.",
    ),
    "train": (
        "sio.train.cli",
        "train",
        "Train a classifier on exact real:synthetic = alpha : 1-alpha batches.",
    ),
    "evaluate": (
        "sio.evaluate.cli",
        "evaluate",
        "Score ID and OOD sets with post-hoc detectors; writes results.json and results.md.",
    ),
}


# Errors that mean "bad input", not "bug": shown to the user as one clear line.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError)


# The other "bad input" errors, by the module that defines each: an error of a module that was
# never imported cannot have been raised, so checking one imports nothing (no torch for --help).
MODULE_ERRORS = (
    ("sio.core.lock", "FolderBusy"),
    ("sio.core.stages", "StageConflict"),
    ("sio.shardset.format", "ShardError"),
)


def is_user_error(err: BaseException) -> bool:
    import sys

    loaded = tuple(
        getattr(sys.modules[module], name)
        for module, name in MODULE_ERRORS
        if module in sys.modules
    )
    return isinstance(err, (*USER_ERRORS, *loaded))


def user_message(err: BaseException) -> str | None:
    """The one line shown for ``err``: bad input, or what the file system refused (a full disk,
    a read-only folder, no permission: the path and the cause); None for a bug (a traceback)."""
    from sio.core.files import filesystem_error

    message = filesystem_error(err)
    if message is None and is_user_error(err):
        message = str(err)
    return message


class Group(click.Group):
    """Stage commands imported on first use; bad input and what the file system refused
    reported as one line (``sio --debug``: after the traceback)."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *STAGE_COMMANDS})

    def get_command(self, ctx, name):
        if name in STAGE_COMMANDS:
            module, attribute, _ = STAGE_COMMANDS[name]
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = [
            (name, STAGE_COMMANDS[name][2])
            if name in STAGE_COMMANDS
            else (name, self.commands[name].get_short_help_str(formatter.width))
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # --help, a usage error, Ctrl-C: click's own answer
        except Exception as err:
            message = user_message(err)
            if message is None:
                raise
            if ctx.params.get("debug"):
                import traceback

                click.echo(traceback.format_exc(), err=True, nl=False)
            raise UserError(message) from err


def pipeline_config(path: str | None) -> PipelineConfig:
    """The ``--config`` file if given, else ./pipeline.yaml if present, else the defaults; says
    which on stderr (once per process: rank 0 under torchrun)."""
    import os

    chosen = (
        path if path is not None else "pipeline.yaml" if Path("pipeline.yaml").is_file() else None
    )
    if os.environ.get("RANK", "0") == "0":
        where = (
            f"using config {chosen}"
            if chosen
            else "using the defaults (no --config, no ./pipeline.yaml)"
        )
        click.echo(where, err=True)
    return PipelineConfig() if chosen is None else load_pipeline(chosen)


@click.group(cls=Group)
@click.version_option(package_name="sio")
@click.option(
    "--debug", is_flag=True, help="Print the full traceback of an error shown as one line."
)
@click.option(
    "--quiet",
    is_flag=True,
    help="No progress bars (sets SIO_PROGRESS=0, which child processes inherit); the summary "
    "lines stay. Bars piped to a file are a line every SIO_PROGRESS_INTERVAL seconds (30).",
)
@click.pass_context
def cli(ctx, debug, quiet):
    """sio: synthetic in-distribution data for out-of-distribution detection.

    Every command's --help has examples; the documentation is README.md and docs/.

    \b
    Examples:
      sio run                             # every stage of ./pipeline.yaml (digits)
      sio run --dry-run study.yaml        # the plan, running nothing
      sio shard digits --out data/digits
      sio --debug train --real data/digits/id_train --alpha 1 --out runs/base0
    """
    if quiet:
        import os

        from sio.core.progress import ENV_SWITCH

        os.environ[ENV_SWITCH] = "0"
    ctx.obj = CliDefaults(load=pipeline_config)


@cli.command()
@click.argument(
    "pipeline", required=False, default="pipeline.yaml", type=click.Path(dir_okay=False)
)
@click.option("--force", is_flag=True, help="Replace finished stages made with a different config.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (each stage: run, skipped or refused, and why; the trainings) and "
    "run nothing.",
)
@device_option
def run(pipeline, force, dry_run, device):
    """Run every stage of PIPELINE (default ./pipeline.yaml) and print baseline vs +SIO.

    Every name and path in PIPELINE is checked before the first stage starts. Stages done
    before with the same config are skipped; an unfinished one is replaced; a finished one
    made with another config is refused unless --force.

    \b
    Examples:
      sio run                             # ./pipeline.yaml: the embedded digits benchmark
      sio run examples/mnist5k.yaml       # mnist5k, five seeds
      sio run study.yaml && sio report runs/study
      sio run --dry-run study.yaml        # what would run, what is skipped, and why
    """
    config = load_pipeline(pipeline)  # checked before the stages (and torch) are imported
    from sio.pipeline.run import run_pipeline

    click.echo(run_pipeline(config, force=force, device=device, dry_run=dry_run))


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write report.json, report.md, report.csv, report.tex and openood.csv here.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "openood-csv"]),
    default="markdown",
    show_default=True,
    help="What to print: the markdown report, or OpenOOD's result CSV (its leaderboard's "
    "Near/Far-OOD AUROC and ID accuracy; one row per arm, detector and OOD set).",
)
@click.option(
    "--allow-mixed",
    is_flag=True,
    help="Report runs trained with different recipes (epochs, lr, model, ... recorded in each "
    "checkpoint) instead of refusing them; each difference is marked in the report.",
)
def report(runs, out, fmt, allow_mixed):
    """Aggregate evaluated RUNS over seeds: baseline (alpha = 1) vs +SIO, mean ± std. Given one
    `sio run` output folder (it holds study.json), write its report.md with the study's plots.

    Each run folder holds results.json and run.json (alpha, seed), as `sio evaluate` writes
    them; Δ (+SIO − baseline) is paired by seed. --out writes report.md, report.json, report.csv,
    report.tex and openood.csv (--format openood-csv prints that instead of the markdown).

    \b
    Examples:
      sio report eval/base0 eval/base1 eval/sio0 eval/sio1 --out eval
      sio report runs/digits              # a `sio run` folder: rebuilds its report.md
      sio report eval/base0 eval/sio0 --format openood-csv > openood.csv
    """
    if len(runs) == 1 and (Path(runs[0]) / "study.json").is_file():
        from sio.pipeline.study_report import study_report

        if out is not None:
            raise click.UsageError("a study report is written into its own folder; drop --out")
        text = study_report(runs[0])  # writes openood.csv beside report.md too
        if fmt == "openood-csv":
            text = (Path(runs[0]) / "openood.csv").read_text()
        click.echo(text, nl=fmt == "markdown")
        return
    from sio.evaluate import write_report

    click.echo(write_report(list(runs), out, fmt, allow_mixed), nl=fmt == "markdown")
    if out is not None:  # on stderr: stdout holds the report (or the CSV) alone
        written = "report.md, report.json, report.csv, report.tex, openood.csv"
        click.echo(f"report: {len(runs)} runs; wrote {written} to {out}", err=True)


@cli.command()
@click.argument("run", type=click.Path())
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="The PNG to write (default: log.png beside the log).",
)
def plot(run, out):
    """Plot the curves of RUN's log.jsonl (a `sio train` run folder, a DDPM training folder, or
    the file itself) as one PNG: losses, accuracies (real, synthetic, val), learning rate,
    images/s and any other field that changes.

    \b
    Examples:
      sio plot runs/base0                 # writes runs/base0/log.png
      sio plot runs/digits/train/alpha1-seed0 --out curves.png
      sio plot runs/digits/generator/ddpm --out ddpm.png
    """
    from sio.pipeline.plot import plot_log

    click.echo(f"plot: {plot_log(run, out)}")


@cli.command("plot-scores")
@click.argument("out", type=click.Path())
@click.option(
    "--to",
    "folder",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the PNGs (default: OUT/score-plots).",
)
def plot_scores(out, folder):
    """Draw ID vs OOD score histograms, one PNG per detector, from OUT's scores.npz (a
    `sio evaluate --save-scores --out OUT` folder, or the file itself).

    \b
    Examples:
      sio evaluate --run runs/base0 --benchmark data/digits --save-scores --out eval/base0
      sio plot-scores eval/base0          # writes eval/base0/score-plots/<detector>.png
    """
    from sio.evaluate import plot_scores as draw

    for path in draw(out, folder):
        click.echo(f"plot-scores: {path}")


def get_cli() -> click.Group:
    """The full command (stage commands load on first use)."""
    return cli


def main():
    get_cli()(prog_name="sio")
