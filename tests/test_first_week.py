"""A researcher's first week (issue 28): long steps sized from the command line and watched per
network batch, the one label-agreement warning of `sio generate` and `sio run`, `sio run
--dry-run`, and mistakes caught before any work (empty class folders, a bad benchmark file)."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import sio.generate.resume as job_module
from sio.cli import get_cli
from sio.core.config import ConfigError
from sio.generate.agreement import MIN_LABEL_AGREEMENT
from sio.generate.config import AuditConfig, GeneratorConfig
from sio.generate.ddpm.model import GENERATOR_FILE
from sio.generate.quality import read_quality
from sio.pipeline.config import load_pipeline
from sio.pipeline.run import PipelineRun, _synthetic_sets
from sio.shards.build import read_set
from sio.shards.samplefiles import natural_images, write_image
from sio.shards.sources import DatasetError
from sio.shards.spec import SourceSpec
from sio.train.models import build_classifier
from sio.train.trainer import CHECKPOINT_FORMAT

from .shardsets import grey_writer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_DDPM = "generator:\n  model: {block_out_channels: [8, 16]}\n  sampler: {steps: 2}\n"


def invoke(*args):
    return CliRunner().invoke(get_cli(), [str(a) for a in args])


def real_set(folder, n: int = 16):
    rng = np.random.default_rng(5)
    writer = grey_writer(folder, "real", ("dark", "light"), shard_size=8)
    for i in range(n):
        image = rng.integers(0, 100, (8, 8)) + 150 * (i % 2)
        writer.write(f"r{i:03d}", image.astype(np.uint8), i % 2, {})
    writer.close()
    return folder


class Bar:
    """A stand-in for tqdm that records its total and every update."""

    made: list[Bar] = []

    def __init__(self, *args, total=None, **kwargs):
        self.total, self.updates = total, []
        Bar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.updates.append(n)


# --- 1. long steps you can size and watch ---------------------------------------------------


def test_train_steps_sets_the_ddpm_training_and_the_bar_moves_per_network_batch(
    tmp_path, monkeypatch
):
    config = tmp_path / "pipeline.yaml"
    config.write_text(TINY_DDPM)
    real, gen = real_set(tmp_path / "real"), tmp_path / "gen" / "ddpm"
    monkeypatch.setattr(job_module, "progress", Bar)
    result = invoke(
        "generate", "--config", config, "--generator-dir", gen, "--train-on", real,
        "--train-steps", 3, "--train-batch-size", 4, "--train-log-every", 1,
        "--train-checkpoint-every", 0, "--train-lr", 0.01, "--out", tmp_path / "syn",
        "--num", 6, "--shard-size", 6, "--batch-size", 6, "--network-batch", 2, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    log = (gen.parent / "ddpm.training" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3]  # exactly 3 steps, not 1000
    training = json.loads((gen / GENERATOR_FILE).read_text())["training"]["train"]
    assert (training["steps"], training["batch_size"], training["lr"]) == (3, 4, 0.01)
    # one generation bar over the 6 images, moved per network call of 2 rows (not once per batch)
    (bar,) = Bar.made
    assert bar.total == 6 and bar.updates == [2, 2, 2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train-steps", "5"], "--train-steps set how the DDPM is trained: give --train-on"),
        (["--train-steps", "0", "--train-on", "x"], "'--train-steps': 0 is not in the range"),
        (["--train-ema-decay", "1", "--train-on", "x"], "--train-ema-decay"),
    ],
)
def test_train_options_are_bounded_and_need_train_on(tmp_path, args, message):
    result = invoke("generate", "--generator-dir", tmp_path / "g", "--out", tmp_path / "o", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o").exists()


# --- 2. one label-agreement warning -----------------------------------------------------------


def random_classifier(path, class_names):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_classifier(
            "small_cnn", in_channels=1, num_classes=len(class_names), mean=[0.3], std=[0.3]
        )
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": "small_cnn",
        "method": "ce",
        "channels": 1,
        "class_names": list(class_names),
        "pixel_mean": [0.3],
        "pixel_std": [0.3],
        "model_state": model.state_dict(),
        "alpha": 1.0,
        "seed": 0,
    }
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


def warning_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("WARNING: generator")]


def test_low_label_agreement_gives_one_warning_in_generate_and_run(tmp_path, cond_dir, capsys):
    """A random DDPM judged by a random classifier: `sio generate` warns, and `sio run`'s
    synthetic-set step (on that very set) prints the same line."""
    config = tmp_path / "pipeline.yaml"
    config.write_text("generator: {sampler: {steps: 2}}\n")
    judge = random_classifier(tmp_path / "judge" / "checkpoint.pt", ("a", "b", "c"))
    syn = tmp_path / "synthetic" / "ddpm"
    result = invoke(
        "generate", "--config", config, "--generator-dir", cond_dir, "--classifier", judge,
        "--out", syn, "--num", 6, "--shard-size", 6, "--batch-size", 6, "--network-batch", 3,
        "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    agreement = json.loads((syn / "manifest.json").read_text())["provenance"]["quality"]
    assert agreement["label_agreement"] < MIN_LABEL_AGREEMENT
    (generated,) = warning_lines(result.output)
    assert f"label agreement {100 * agreement['label_agreement']:.1f}%" in generated
    assert "chance 33.3%, flagged below 95%" in generated
    # sio run's step over its generators, on the same set (the stages around it stand in)
    run = SimpleNamespace(
        out=tmp_path,
        config=SimpleNamespace(generators=(GeneratorConfig(),), audit=AuditConfig()),
        benchmark=SimpleNamespace(class_names=("a", "b", "c")),
        generate=lambda generator, num, judge: syn,
        pending=lambda path: False,
        quality=lambda key, full, judge: {"metric": "fd_classifier", "value": 1.0},
        audit=lambda key, full, judge: read_quality(syn)["audit"],
    )
    study = SimpleNamespace(generators=["ddpm"], counts=lambda key: [6])
    capsys.readouterr()
    _synthetic_sets(run, study, judge)
    assert warning_lines(capsys.readouterr().out) == [generated]


# --- 3. sio run --dry-run ---------------------------------------------------------------------

TINY_RUN = {
    "seeds": [0, 1],
    "sio_alpha": 0.75,
    "shard": {"shard_size": 128, "digits": {"far_ood_images_per_set": 40}},
    "generator": {"model": {"block_out_channels": [8, 16]}, "train": {"steps": 20}},
    "generate": {"num_images": 96, "batch_size": 48, "shard_size": 32},
    "train": {"epochs": 2, "batch_size": 64},
    "evaluate": {"detectors": ["msp"]},
}


def plan_rows(output: str) -> dict[str, str]:
    rows = [line.split(None, 1) for line in output.splitlines() if line.startswith("  ")]
    return {rest.split("  ")[0].strip(): action for action, rest in rows}


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**TINY_RUN, "output_dir": str(out)}))
    result = invoke("run", path, "--dry-run", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert not out.exists()  # nothing run, no folder made
    rows = plan_rows(result.output)
    assert list(rows) == [
        "shard",
        "train alpha1-seed0",
        "train alpha1-seed1",
        "train generator ddpm",
        "generate ddpm",
        "fid ddpm",
        "audit ddpm",
        "train ddpm-n96-alpha0.75-seed0",
        "train ddpm-n96-alpha0.75-seed1",
        *(f"evaluate {a}-seed{s}" for a in ("alpha1", "ddpm-n96-alpha0.75") for s in (0, 1)),
    ]
    assert set(rows.values()) == {"run"}
    assert "trainings: 4 classifiers (4 to run), 1 generators (1 to run)" in result.output
    # the same judgement as the run's: a stage done with the same config is skipped, and the
    # stages after it are judged on its output
    config = load_pipeline(path)
    PipelineRun(config, out, "cpu", force=False).shard()
    again = invoke("run", path, "--dry-run")
    rows = plan_rows(again.output)
    assert rows["shard"] == "skip" and rows["train alpha1-seed0"] == "run"
    assert "done earlier with the same config" in again.output
    assert "not run yet" in again.output
    assert sorted(p.name for p in out.iterdir()) == ["benchmark"]


# --- 4. mistakes caught before work -----------------------------------------------------------


def class_tree(root, counts: dict[str, int]):
    images = natural_images(sum(counts.values()) or 1, 12, seed=3)
    i = 0
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            write_image(root / name / f"{i:03d}.png", images[i])
            i += 1
    return root


@pytest.mark.parametrize("filters", [{}, {"classes": ("a", "b")}])
def test_an_empty_class_folder_is_refused_naming_it(tmp_path, filters):
    class_tree(tmp_path / "data" / "pets", {"a": 2, "b": 0, "c": 2})
    spec = SourceSpec(name="pets", reader="image_folder", path="pets", **filters)
    bench = SimpleNamespace(image_size=12)
    with pytest.raises(DatasetError, match=r"pets/b: empty class folder"):
        read_set(spec, bench, tmp_path / "data", 0)


def test_an_excluded_empty_class_folder_is_no_class(tmp_path):
    class_tree(tmp_path / "data" / "pets", {"a": 2, "b": 0, "c": 2})
    spec = SourceSpec(name="pets", reader="image_folder", path="pets", exclude_classes=("b",))
    source = read_set(spec, SimpleNamespace(image_size=12), tmp_path / "data", 0)
    assert source.class_names == ("a", "c") and len(source) == 4


def write_bench(tmp_path, far_reader: str, noise: bool = True):
    class_tree(tmp_path / "data" / "pets", {"a": 3, "b": 3})
    if noise:
        class_tree(tmp_path / "data" / "noise", {"n": 3})
    pets = {"name": "pets", "reader": "image_folder", "path": "pets"}
    bench = {
        "name": "mine",
        "image_size": 12,
        "id": {"train": pets, "val": pets, "test": pets},
        "near": [],
        "far": [{"name": "noise", "reader": far_reader, "path": "noise"}],
    }
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(bench))
    return path


def test_shard_checks_the_whole_benchmark_file_before_writing(tmp_path):
    path = write_bench(tmp_path, far_reader="image")
    out = tmp_path / "out"
    result = invoke("shard", path, "--out", out, "--data-root", tmp_path / "data")
    assert result.exit_code == 1
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
    assert f"{path}: far[0].reader: unknown dataset reader 'image'" in line
    assert not out.exists()  # no split written before the refusal
    # sio run refuses the same file with the same words (one check)
    pipeline = tmp_path / "pipeline.yaml"
    shard = {"benchmark": str(path), "data_root": str(tmp_path / "data")}
    pipeline.write_text(yaml.safe_dump({"shard": shard, "output_dir": str(out)}))
    with pytest.raises(ConfigError) as refused:
        load_pipeline(pipeline)
    assert line.removeprefix("Error: ") in str(refused.value)


def test_shard_names_a_missing_path_with_its_field(tmp_path):
    path = write_bench(tmp_path, far_reader="images", noise=False)
    result = invoke("shard", path, "--out", tmp_path / "out", "--data-root", tmp_path / "data")
    assert result.exit_code == 1
    assert f"{path}: far[0].path, set far_noise" in result.output
    assert not (tmp_path / "out").exists()


def test_generate_parses_its_config_before_loading_the_generators(tmp_path):
    """A mistake in the config answers before diffusers and the generators are imported."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate: {num_images: -3}\n")
    probe = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from sio.cli import get_cli\n"
        f"args = ['generate', '--config', {str(bad)!r}, '--generator-dir', 'g', '--out', 'o']\n"
        "result = CliRunner().invoke(get_cli(), args)\n"
        "print(result.exit_code, 'diffusers' in sys.modules)\n"
        "print(result.output)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("1 False"), done.stdout
    assert "bad.yaml: generate.num_images: must be in" in done.stdout
