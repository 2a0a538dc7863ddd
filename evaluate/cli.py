"""``sio evaluate`` and ``sio report``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sio.cli import config_option, device_option, pipeline_config

from .activations import extract_activations, load_activations
from .evaluate import evaluate_bank, markdown_table, write_results
from .report import report as write_report


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
    """Score ID and OOD sets with post-hoc detectors; writes results.json and results.md."""
    from sio.pipeline import default_device

    config = pipeline_config(config_path).evaluate
    methods = methods.split(",") if methods else list(config.methods)
    convention = fpr_convention or config.fpr_convention
    out = Path(out)
    if (run_dir is None) == (activations is None):
        raise click.UsageError("give exactly one of --run (with --benchmark) or --activations")
    if activations is not None:
        bank = load_activations(activations)
    else:
        if benchmark is None:
            raise click.UsageError("--run needs --benchmark")
        out.mkdir(parents=True, exist_ok=True)
        bank = extract_activations(
            Path(run_dir) / "checkpoint.pt",
            Path(benchmark),
            out / "activations.npz",
            batch_size=config.batch_size,
            device=device or default_device(),
        )
    results = evaluate_bank(bank, methods, convention)
    write_results(results, out)
    if run_dir is not None:
        from sio.train import load_checkpoint

        _, state = load_checkpoint(run_dir)
        run = {"alpha": state["alpha"], "seed": state["seed"], "checkpoint": str(run_dir)}
        (out / "run.json").write_text(json.dumps(run) + "\n")
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
    """Aggregate evaluated RUNS over seeds: baseline (alpha = 1) vs +SIO, mean ± std."""
    click.echo(write_report(list(runs), out))
