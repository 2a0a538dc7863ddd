"""``sio evaluate``."""

from __future__ import annotations

import dataclasses

import click

from sio.core.cli import SEED, config_option, device_option, pipeline_config
from sio.core.lock import hold_folder

# The evaluation stack (torch, torchvision, scikit-learn) is imported inside the command, after
# the config and the options are checked: `--help` and a config mistake answer at once.


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
    help="Score an activations .npz instead (format in docs/formats.md).",
)
@click.option(
    "--model",
    "model_spec",
    default=None,
    help="Evaluate any classifier instead of a run: torchvision:<name>, "
    "openood:resnet18_32x32 (OpenOOD v1.5 checkpoints) or sio:<backbone>; needs --weights.",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="State dict for --model (torch.save of model.state_dict(), or OpenOOD's best.ckpt).",
)
@click.option(
    "--normalize",
    default="train",
    show_default=True,
    help="Pixel normalisation for --model: train (the benchmark's ID train mean/std), none "
    "(pixels in [0, 1]), or six comma-separated numbers: mean r,g,b then std r,g,b.",
)
@click.option(
    "--fc", "fc_name", default="fc", show_default=True, help="--model's final linear layer."
)
@click.option(
    "--layer", default=None, help="--model: take h from this module's output (default: fc's input)."
)
@click.option(
    "--channels",
    type=click.IntRange(1, 64),
    default=None,
    help="--model: the input channels the model gets (default: its first conv's; a grey "
    "benchmark's channel is repeated to them, and said so).",
)
@click.option(
    "--alpha",
    type=float,
    default=None,
    help="With --activations or --model: the classifier's alpha, recorded in run.json so that "
    "`sio report` can group the result (--run reads it from the checkpoint).",
)
@click.option(
    "--seed",
    type=SEED,
    default=None,
    help="With --activations or --model: the classifier's seed, recorded in run.json.",
)
@click.option(
    "--detectors",
    default=None,
    help="Comma-separated detectors, e.g. msp,ebo,knn (default: the config's evaluate.detectors).",
)
@click.option(
    "--methods", "old_detectors", default=None, hidden=True, help="The old name of --detectors."
)
@click.option(
    "--fpr-convention",
    type=click.Choice(["id", "ood"]),
    default=None,
    help="FPR@95 with ID (the literature's) or OOD (OpenOOD v1.5's) as positive "
    "(default: the config's evaluate.fpr_convention).",
)
@click.option(
    "--strict",
    is_flag=True,
    default=None,
    help="A detector that cannot be fitted or gives a NaN or inf score is an error naming it "
    "(default: the config's evaluate.strict; else it is recorded under skipped and the "
    "others are scored).",
)
@click.option(
    "--parity",
    type=click.Choice(["off", "openood"]),
    default=None,
    help="openood: every detector as OpenOOD v1.5's own code computes it, quirks included "
    "(default: the config's evaluate.parity, off: sio's documented departures).",
)
@click.option(
    "--save-scores",
    is_flag=True,
    help="Also write every detector's per-sample scores to scores.npz in --out "
    "(keys <detector>/id.test, <detector>/ood.<group>.<name>); see `sio plot-scores`.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for results.json, results.md and run.json (and activations.npz with --run).",
)
@config_option
@device_option
def evaluate(
    run_dir,
    benchmark,
    activations,
    model_spec,
    weights,
    normalize,
    fc_name,
    layer,
    channels,
    alpha,
    seed,
    detectors,
    old_detectors,
    fpr_convention,
    strict,
    parity,
    save_scores,
    out,
    config_path,
    device,
):
    """Score ID and OOD sets with post-hoc detectors; writes results.json and results.md.

    Give one of --run (a sio run, with --benchmark), --model with --weights (any classifier,
    with --benchmark) or --activations. With --activations, detectors that need the model and
    images (odin) are skipped, and results.json says so; --benchmark then only records which
    benchmark the file came from. `sio report` groups results by the alpha and seed in
    run.json: --run writes it from the checkpoint; for --activations or --model give --alpha
    and --seed.

    \b
    Examples:
      sio evaluate --run runs/base0 --benchmark data/digits --out eval/base0
      sio evaluate --activations eval/base0/activations.npz --detectors msp,ebo \\
          --alpha 1 --seed 0 --out eval/base0-again
    """
    detectors = _detectors_option(detectors, old_detectors)
    config = pipeline_config(config_path).evaluate
    overrides = {}
    if detectors:
        overrides["detectors"] = tuple(d.strip() for d in detectors.split(",") if d.strip())
    if fpr_convention:
        overrides["fpr_convention"] = fpr_convention
    if strict:
        overrides["strict"] = True
    if parity:
        overrides["parity"] = parity
    config = dataclasses.replace(config, **overrides)
    given = [x for x in (run_dir, activations, model_spec) if x is not None]
    if len(given) != 1:
        raise click.UsageError(
            "give exactly one of --run (with --benchmark), --model (with --weights and "
            "--benchmark) or --activations"
        )
    if (alpha is None) != (seed is None):
        raise click.UsageError("give --alpha and --seed together")
    if run_dir is not None and alpha is not None:
        raise click.UsageError("--run reads alpha and seed from the checkpoint; drop them")
    if model_spec is not None and (benchmark is None or weights is None):
        raise click.UsageError("--model needs --weights and --benchmark")
    if run_dir is not None and benchmark is None:
        raise click.UsageError("--run needs --benchmark")
    from sio.core.environment import default_device
    from sio.evaluate.evaluate import evaluate_checkpoint, summary_line

    with hold_folder(out):  # one job writes --out; a second is refused, naming this one
        if activations is not None:
            results = _evaluate_activations(activations, benchmark, config, out, save_scores)
        elif model_spec is not None:
            results = _evaluate_model(
                model_spec,
                weights,
                benchmark,
                normalize,
                fc_name,
                layer,
                channels,
                config,
                out,
                device or default_device(),
                save_scores,
            )
        else:
            results = evaluate_checkpoint(
                run_dir,
                benchmark,
                out,
                config,
                device=device or default_device(),
                save_scores=save_scores,
            )
        if alpha is not None:
            _record_run(out, alpha, seed, activations or weights, results.get("benchmark"))
    from sio.evaluate.summary import closing_line

    click.echo(closing_line(results, out, summary_line(results)))  # the tables: results.md


def _detectors_option(detectors: str | None, old_detectors: str | None) -> str | None:
    """``--detectors``, or ``--methods`` (its name before issue 29, read as it with a note)."""
    if old_detectors is None:
        return detectors
    if detectors is not None:
        raise click.UsageError("--methods is the old name of --detectors; give only --detectors")
    click.echo(
        "note: --methods is now --detectors (read as it; rename it in your command)", err=True
    )
    return old_detectors


def _evaluate_activations(activations, benchmark, config, out, save_scores: bool) -> dict:
    """``--activations``: every detector on the file; classes named from --benchmark."""
    from sio.evaluate.activations import load_activations
    from sio.evaluate.evaluate import evaluate_bank, write_results

    class_names = None
    scores = {} if save_scores else None
    if benchmark is not None:
        from sio.shards import read_benchmark

        class_names = read_benchmark(benchmark).class_names
    results = evaluate_bank(
        load_activations(activations),
        config.detectors,
        config.fpr_convention,
        config=config,
        class_names=class_names,
        scores=scores,
    )
    if benchmark is not None:
        from sio.evaluate.activations import benchmark_record

        results["benchmark"] = benchmark_record(benchmark)
    write_results(results, out, scores)
    return results


def _record_run(out, alpha: float, seed: int, source: str, benchmark) -> None:
    """run.json for a result that no checkpoint describes, so that `sio report` can group it."""
    from pathlib import Path

    from sio.core.config import check_alpha
    from sio.core.files import write_json_atomic

    record = {"alpha": check_alpha(alpha, "--alpha"), "seed": seed, "source": str(source)}
    if benchmark is not None:
        record["benchmark"] = benchmark
    write_json_atomic(Path(out) / "run.json", record)


def _evaluate_model(
    spec, weights, benchmark, normalize, fc_name, layer, channels, config, out, device, save_scores
):
    """``--model``: the model built and checked against the benchmark (``Evaluator``: channels,
    classes, image size, normalisation) before any image is read, then evaluated."""
    from sio.evaluate.models import Evaluator, build_model, normalisation
    from sio.shards import read_benchmark
    from sio.shardset import read_manifest

    mean, std = normalisation(normalize, benchmark)
    bench = read_benchmark(benchmark)
    adapter = build_model(
        spec,
        weights,
        len(bench.class_names),
        channels=channels or read_manifest(bench.id_splits["test"]).channels,
        mean=mean,
        std=std,
        fc_name=fc_name,
        layer=layer,
        benchmark=f"benchmark {bench.name}",
    )
    evaluator = Evaluator(
        adapter, benchmark=benchmark, config=config, channels=channels, device=device
    )
    return evaluator.evaluate(out, save_scores=save_scores)
