"""End to end: `sio run` on a tiny digits pipeline, its skipping, its refusals, and the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from click.testing import CliRunner

from sio.cli import get_cli
from sio.core.stages import StageConflict
from sio.pipeline.config import load_pipeline
from sio.pipeline.run import run_pipeline

TINY = {
    "seeds": [0, 1],
    "sio_alpha": 0.75,
    "shard": {"shard_size": 128, "digits": {"far_ood_images_per_set": 40}},
    "generator": {
        "model": {"block_out_channels": [8, 16], "layers_per_block": 1},
        "train": {"steps": 20, "batch_size": 32},
        "sampler": {"steps": 2},
    },
    "generate": {"num_images": 96, "batch_size": 48, "shard_size": 32},
    "train": {"epochs": 2, "batch_size": 64, "num_workers": 2},
    "evaluate": {"detectors": ["msp", "ebo"]},
}


def write_pipeline(tmp_path, **changes):
    data = {**TINY, "output_dir": str(tmp_path / "out"), **changes}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pipeline")
    path = write_pipeline(tmp_path)
    text = run_pipeline(load_pipeline(path), device="cpu")
    return tmp_path, path, text


def test_run_writes_every_stage_and_a_report(finished_run):
    tmp_path, _, text = finished_run
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"1", "0.75"}
    for arm in report.values():
        assert arm["seeds"] == [0, 1]
        assert set(arm["metrics"]) == {"msp", "ebo"}
    # The printed table is the measured one: its cells come from the evaluated runs.
    results = [
        json.loads((out / "evaluate" / f"ddpm-n96-alpha0.75-seed{s}" / "results.json").read_text())
        for s in (0, 1)
    ]
    far = [r["metrics"]["msp"]["far"]["mean"]["auroc"] for r in results]
    mean = report["0.75"]["metrics"]["msp"]["far"]["mean"]["auroc"]["mean"]
    assert mean == pytest.approx(sum(far) / 2)
    assert f"{mean:.2f}" in text
    manifest = json.loads((out / "synthetic" / "ddpm" / "manifest.json").read_text())
    assert manifest["kind"] == "synthetic" and manifest["num_samples"] == 96
    assert 0.0 <= manifest["provenance"]["quality"]["label_agreement"] <= 1.0
    log = (out / "train" / "ddpm-n96-alpha0.75-seed0" / "log.jsonl").read_text().splitlines()
    epoch = json.loads(log[-1])
    assert (epoch["real_seen"], epoch["synthetic_seen"]) == (
        48 * epoch["steps"],
        16 * epoch["steps"],
    )
    # sio run passes the benchmark's id_val: every epoch logs its accuracy and the split
    for line in log:
        record = json.loads(line)
        assert 0 <= record["val_acc"] <= 1
        assert 0 <= record["real_acc"] <= 1 and 0 <= record["synthetic_acc"] <= 1
    assert json.loads((out / "pipeline.resolved.json").read_text())["sio_alpha"] == 0.75


def test_rerun_skips_every_stage(finished_run, capsys):
    tmp_path, path, text = finished_run
    again = run_pipeline(load_pipeline(path), device="cpu")
    timings = json.loads((tmp_path / "out" / "timings.json").read_text())
    assert all(seconds == 0.0 for stage, seconds in timings.items() if stage != "total")
    assert "skipped" in capsys.readouterr().out
    assert again.split("stage times")[0] == text.split("stage times")[0]


def test_a_stage_recorded_before_a_field_existed_is_still_done(finished_run, capsys):
    """A train stage.json written by an older sio lacks the fields added since (here the GPU
    options): it was made with their defaults, so the rerun skips it instead of refusing the
    folder (or, for an unfinished stage, deleting its checkpoint)."""
    tmp_path, path, _ = finished_run
    added = ("precision", "channels_last", "compile", "device_augment")
    stamps = sorted((tmp_path / "out" / "train").glob("*/stage.json"))
    assert stamps
    for stamp in stamps:
        definition = json.loads(stamp.read_text())
        assert all(key in definition["train"] for key in added)
        definition["train"] = {k: v for k, v in definition["train"].items() if k not in added}
        stamp.write_text(json.dumps(definition))
    capsys.readouterr()
    run_pipeline(load_pipeline(path), device="cpu")
    timings = json.loads((tmp_path / "out" / "timings.json").read_text())
    assert all(s == 0.0 for stage, s in timings.items() if stage.startswith("train "))
    # a value other than the default is still a change
    changed = write_pipeline(tmp_path, train={**TINY["train"], "precision": "bf16"})
    with pytest.raises(StageConflict, match=r"train\.precision = 'fp32', not 'bf16'"):
        run_pipeline(load_pipeline(changed), device="cpu")


def test_changed_config_is_refused_without_force(finished_run):
    tmp_path, _, _ = finished_run
    changed = write_pipeline(tmp_path, train={**TINY["train"], "epochs": 3})
    resolved = (tmp_path / "out" / "pipeline.resolved.json").read_text()
    with pytest.raises(StageConflict, match=r"train\.epochs"):
        run_pipeline(load_pipeline(changed), device="cpu")
    # the refused run leaves the record of the config that made the folder
    assert (tmp_path / "out" / "pipeline.resolved.json").read_text() == resolved
    assert json.loads(resolved)["train"]["epochs"] == 2


def test_cli_names_the_bad_field(tmp_path):
    bad = write_pipeline(tmp_path, train={"batch_size": "big"})
    result = CliRunner().invoke(get_cli(), ["run", str(bad)])
    assert result.exit_code == 1
    assert "train.batch_size" in result.output and "pipeline.yaml" in result.output


def test_cli_refuses_alpha_outside_unit_interval(tmp_path):
    bad = write_pipeline(tmp_path, sio_alpha=1.2)
    result = CliRunner().invoke(get_cli(), ["run", str(bad)])
    assert result.exit_code == 1 and "sio_alpha" in result.output


def test_cli_missing_pipeline_file(tmp_path):
    result = CliRunner().invoke(get_cli(), ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1 and "nope.yaml" in result.output and "not found" in result.output


def test_cli_stage_commands_chain(finished_run, tmp_path):
    """The stages used one by one from the CLI, meeting only in folders."""
    run_dir, path, _ = finished_run
    out = run_dir / "out"
    cli = get_cli()
    runner = CliRunner()
    verify = runner.invoke(cli, ["shards", "verify", str(out / "synthetic" / "ddpm")])
    assert verify.exit_code == 0, verify.output
    assert "96 samples" in verify.output
    fid_args = [
        "fid",
        str(out / "synthetic" / "ddpm"),
        "--real",
        str(out / "benchmark" / "id_train"),
    ]
    refused = runner.invoke(cli, ["fid", *fid_args[1:], "--config", str(path)])
    assert refused.exit_code == 1 and "fid.inception_weights" in refused.output
    judge = out / "train" / "alpha1-seed0" / "checkpoint.pt"
    fid = runner.invoke(cli, [*fid_args, "--config", str(path), "--classifier", str(judge)])
    assert fid.exit_code == 0, fid.output
    recorded = json.loads((out / "quality" / "ddpm" / "fid.json").read_text())
    assert f"fd_classifier = {recorded['value']:.4f}" in fid.output  # the pipeline's judge
    train = runner.invoke(
        cli,
        [
            "train",
            "--config",
            str(path),
            "--real",
            str(out / "benchmark" / "id_train"),
            "--synthetic",
            str(out / "synthetic" / "ddpm"),
            "--alpha",
            "0.5",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert train.exit_code == 0, train.output
    evaluate = runner.invoke(
        cli,
        [
            "evaluate",
            "--config",
            str(path),
            "--run",
            str(tmp_path / "run"),
            "--benchmark",
            str(out / "benchmark"),
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert evaluate.exit_code == 0, evaluate.output
    assert evaluate.stdout.splitlines()[-1].startswith("evaluate: ID acc")  # one summary line
    assert "nearood" in (tmp_path / "eval" / "results.md").read_text()
    assert json.loads((tmp_path / "eval" / "run.json").read_text())["alpha"] == 0.5
    again = runner.invoke(
        cli,
        [
            "evaluate",
            "--activations",
            str(tmp_path / "eval" / "activations.npz"),
            "--detectors",
            "msp",
            "--alpha",
            "0.5",
            "--seed",
            "3",
            "--benchmark",  # recorded, so that it may be reported beside the pipeline's runs
            str(out / "benchmark"),
            "--out",
            str(tmp_path / "eval2"),
        ],
    )
    assert again.exit_code == 0, again.output
    first = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]["msp"]
    second = json.loads((tmp_path / "eval2" / "results.json").read_text())["metrics"]["msp"]
    assert first == second
    # an activations file's result is reportable: --alpha and --seed went into run.json
    assert json.loads((tmp_path / "eval2" / "run.json").read_text())["seed"] == 3
    reported = runner.invoke(cli, ["report", str(tmp_path / "eval2")])
    assert reported.exit_code == 0, reported.output
    assert "+SIO α=0.5 (n = 1)" in reported.output and "- benchmark: digits" in reported.output


def test_stage_reruns_in_place_when_only_a_resumable_field_changed(tmp_path):
    from sio.core.stages import run_stage

    calls = []

    def work():
        calls.append(sorted(p.name for p in (tmp_path / "stage").iterdir()))
        (tmp_path / "stage" / "kept.txt").write_text("work of an earlier run")

    first = {"job": {"num_images": 8, "seed": 1}}
    run_stage("s", tmp_path / "stage", first, work, force=False, timings={})
    grown = {"job": {"num_images": 16, "seed": 1}}
    run_stage(
        "s", tmp_path / "stage", grown, work, force=False, timings={}, resumable=("job.num_images",)
    )
    assert calls[1] == ["kept.txt", "stage.json"]  # rerun on the folder as it was
    with pytest.raises(StageConflict, match=r"changed: job\.seed"):
        other = {"job": {"num_images": 16, "seed": 2}}
        run_stage(
            "s",
            tmp_path / "stage",
            other,
            work,
            force=False,
            timings={},
            resumable=("job.num_images",),
        )
    run_stage(
        "s", tmp_path / "stage", grown, work, force=False, timings={}, resumable=("job.num_images",)
    )
    assert len(calls) == 2  # complete again: skipped


@pytest.mark.parametrize("ending", ["failed", "stopped"])
def test_a_stage_that_never_completed_is_replaced(tmp_path, ending):
    """A failed or interrupted stage holds no results: another definition may take its folder
    without --force; a complete stage made differently is still refused."""
    from sio.core.stages import COMPLETE_FILE, run_stage

    folder = tmp_path / "stage"

    def broken():
        (folder / "partial.bin").write_bytes(b"half")
        raise (RuntimeError("out of memory") if ending == "failed" else KeyboardInterrupt())

    with pytest.raises((RuntimeError, KeyboardInterrupt)):
        run_stage("s", folder, {"epochs": 2}, broken, force=False, timings={})
    assert not (folder / COMPLETE_FILE).exists()
    done = []
    run_stage("s", folder, {"epochs": 3}, lambda: done.append(1), force=False, timings={})
    assert done == [1] and not (folder / "partial.bin").exists()
    assert json.loads((folder / "stage.json").read_text()) == {"epochs": 3}
    with pytest.raises(StageConflict, match=r"changed: epochs = 3, not 4"):
        run_stage("s", folder, {"epochs": 4}, lambda: None, force=False, timings={})


# --- sio run --dry-run: the time, from the rates measured on this machine ----------------------


def test_dry_run_time_is_the_measured_time_of_the_same_stages(finished_run):
    """Every stage the run completed recorded its kind, work and host; a dry run of the same
    config into a new folder beside it plans the same stages, so its estimate is the sum of
    their measured seconds, less the trainings (their work waits for the new benchmark)."""
    import socket

    from sio.pipeline.estimate import duration

    tmp_path, path, _ = finished_run
    records = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("**/complete.json")]
    assert records and all(r["host"] == socket.gethostname() for r in records)
    assert all(r["units"] > 0 for r in records)
    config = dataclasses.replace(load_pipeline(path), output_dir=str(tmp_path / "beside"))
    plan = run_pipeline(config, device="cpu", dry_run=True)
    known = [r for r in records if r["kind"] != "train"]
    expected = duration(sum(r["seconds"] for r in known))
    last = plan.splitlines()[-1]
    assert last.startswith(f"time: about {expected} for {len(known)} of the stages"), last
    trainings = [f"train {a}-seed{s}" for a in ("alpha1", "ddpm-n96-alpha0.75") for s in (0, 1)]
    assert last.endswith(f"unknown for 4: {', '.join(trainings)}"), last
    assert not (tmp_path / "beside").exists()


def test_dry_run_time_is_unknown_without_a_rate_measured_on_this_machine(tmp_path):
    """Nothing measured here: "unknown". A rate measured on another host does not count, nor a
    generation's rate in images (a sampler's steps are its work); one in network passes measured
    here beside this run folder estimates the stages of its kind, the others unknown."""
    import socket

    from sio.pipeline.estimate import network_passes

    path = write_pipeline(tmp_path)

    def last_line():
        return run_pipeline(load_pipeline(path), device="cpu", dry_run=True).splitlines()[-1]

    assert last_line().startswith("time: unknown (no rate measured on this machine")
    other = tmp_path / "earlier"
    (other / "synthetic" / "ddpm").mkdir(parents=True)
    (other / "pipeline.resolved.json").write_text("{}")
    record = {"kind": "generate", "units": 960, "seconds": 10.0, "host": "another-host"}
    (other / "synthetic" / "ddpm" / "complete.json").write_text(json.dumps(record))
    assert last_line().startswith("time: unknown")
    record["host"] = socket.gethostname()  # in images, as before generation counted passes
    (other / "synthetic" / "ddpm" / "complete.json").write_text(json.dumps(record))
    assert last_line().startswith("time: unknown")
    # 96 images/s at this run's sampler, and this run generates 96 images
    passes = network_passes(load_pipeline(path).generators[0])
    assert passes > 1  # a diffusion sampler: its steps, not its images, are the work
    record.update(units=960 * passes, unit="network passes")
    (other / "synthetic" / "ddpm" / "complete.json").write_text(json.dumps(record))
    line = last_line()
    assert line.startswith("time: about 1 s for 1 of the stages to run"), line
    assert "unknown for 12: shard, train alpha1-seed0," in line
    assert not (tmp_path / "out").exists()
