"""``sio evaluate`` and ``sio report``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from sio.core.cli import config_option, device_option, pipeline_config
from sio.evaluate.activations import load_activations
from sio.evaluate.evaluate import evaluate_bank, evaluate_checkpoint, markdown_table, write_results
from sio.evaluate.report import report as write_report


@click.command()
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Run folder with checkpoint.pt (from `sio train`).",
)
@click.option(
    "--benchmark",
    type=click.Path(file_okay=False),
    default=None,
    help="Benchmark folder (from `sio shard`); needed with --run.",
)
@click.option(
    "--activations",
    type=click.Path(dir_okay=False),
    default=None,
    help="Score an activations .npz instead (format in the README).",
)
@click.option("--methods", default=None, help="Comma-separated detectors (default: config).")
@click.option("--fpr-convention", type=click.Choice(["id", "ood"]), default=None)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@config_option
@device_option
def evaluate(run_dir, benchmark, activations, methods, fpr_convention, out, config_path, device):
    """Score ID and OOD sets with post-hoc detectors; writes results.json and results.md.

    With --activations, detectors that need the model and images (odin) are skipped, and
    results.json says so.
    """
    from sio.core.environment import default_device

    config = pipeline_config(config_path).evaluate
    overrides = {}
    if methods:
        overrides["methods"] = tuple(m.strip() for m in methods.split(",") if m.strip())
    if fpr_convention:
        overrides["fpr_convention"] = fpr_convention
    config = dataclasses.replace(config, **overrides)
    if (run_dir is None) == (activations is None):
        raise click.UsageError("give exactly one of --run (with --benchmark) or --activations")
    if activations is not None:
        results = evaluate_bank(
            load_activations(activations), config.methods, config.fpr_convention, config=config
        )
        write_results(results, out)
    else:
        if benchmark is None:
            raise click.UsageError("--run needs --benchmark")
        results = evaluate_checkpoint(
            run_dir, benchmark, out, config, device=device or default_device()
        )
    click.echo(markdown_table(results))


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write report.json and report.md here.",
)
def report(runs, out):
    """Aggregate evaluated RUNS over seeds: baseline (alpha = 1) vs +SIO, mean ± std. Given one
    `sio run` output folder (it holds study.json), write its report.md with the study's plots."""
    if len(runs) == 1 and (Path(runs[0]) / "study.json").is_file():
        from sio.pipeline.study_report import study_report

        if out is not None:
            raise click.UsageError("a study report is written into its own folder; drop --out")
        click.echo(study_report(runs[0]))
        return
    click.echo(write_report(list(runs), out))
