"""``sio evaluate``."""

from __future__ import annotations

import dataclasses

import click

from sio.core.cli import config_option, device_option, pipeline_config
from sio.evaluate.activations import load_activations
from sio.evaluate.evaluate import evaluate_bank, evaluate_checkpoint, markdown_table, write_results


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
