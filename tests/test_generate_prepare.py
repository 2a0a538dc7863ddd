"""One ``prepare_job`` for ``sio generate``, ``sio serve`` and ``sio run``: a classifier or a real
set that does not fit the generator is refused the same way, by name, before anything is written
(``sio run`` calls ``generate_shard_set`` exactly as here: the judge's checkpoint and the real
set). And the generator is named the same way in both commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sio.cli import get_cli
from sio.generate import generate_shard_set
from sio.generate.config import GenerateConfig, GeneratorConfig, SamplerConfig
from sio.train.models import build_classifier
from sio.train.trainer import CHECKPOINT_FORMAT

from .shardsets import flat_set

TINY = GeneratorConfig(sampler=SamplerConfig(steps=2))
JOB = GenerateConfig(num_images=6, batch_size=3, shard_size=3, network_batch=3, seed=1)
NAMES = ("a", "b", "c")  # the classes of conftest's cond_dir generator (8x8 grey)


def judge(path: Path, size=8, names=NAMES) -> Path:
    """A real-trained classifier's checkpoint.pt (random weights) for grey ``size`` images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_classifier(
            "small_cnn", in_channels=1, num_classes=len(names), mean=[0.5], std=[0.3]
        )
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": "small_cnn",
        "channels": 1,
        "class_names": list(names),
        "image_size": [size, size],
        "pixel_mean": [0.5],
        "pixel_std": [0.3],
        "model_state": model.state_dict(),
        "alpha": 1.0,
        "seed": 0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


MISFITS = {  # (judge size, judge classes, real set channels) -> the line both paths give
    "judge-size": ((16, NAMES, 1), "trained on 16x16 images, but the"),
    "judge-classes": ((8, ("x", "y", "z"), 1), "trained on 3 classes ['x', 'y', 'z']"),
    "channels": ((8, NAMES, 3), "holds 3-channel images, the generator makes 1"),
}


@pytest.mark.parametrize("case", MISFITS)
def test_generate_serve_and_run_refuse_the_same_misfit(tmp_path, cond_dir, case):
    (size, names, channels), message = MISFITS[case]
    real = flat_set(tmp_path / "real", NAMES, channels)
    checkpoint = judge(tmp_path / "judge" / "checkpoint.pt", size, names)
    out = tmp_path / "syn"
    # sio run's call (sio/pipeline/run.py: PipelineRun.generate)
    with pytest.raises(ValueError) as refused:  # GenerationError, or RunInfo.check_fits
        generate_shard_set(
            cond_dir, out, JOB, TINY, classifier_path=str(checkpoint), classes_from=real
        )
    assert message in str(refused.value)
    common = ["--generator-dir", str(cond_dir), "--classes-from", str(real)]
    common += ["--classifier", str(checkpoint), "--device", "cpu", "--num", "6"]
    cli = get_cli()
    generate = CliRunner().invoke(cli, ["generate", *common, "--out", str(out)])
    assert generate.exit_code == 1, generate.output
    assert f"Error: {refused.value}" in generate.output  # the very same line
    served = CliRunner().invoke(cli, ["serve", *common, "--port", "0"])
    assert served.exit_code == 1 and message in served.output, served.output
    assert not out.exists()  # refused before anything was written


def test_a_fitting_judge_and_real_set_generate_alike_on_both_paths(tmp_path, cond_dir):
    real = flat_set(tmp_path / "real", NAMES, 1)
    checkpoint = judge(tmp_path / "judge" / "checkpoint.pt")
    api = generate_shard_set(
        cond_dir, tmp_path / "api", JOB, TINY, classifier_path=str(checkpoint), classes_from=real
    )
    args = ["generate", "--generator-dir", str(cond_dir), "--classes-from", str(real)]
    args += ["--classifier", str(checkpoint), "--device", "cpu", "--out", str(tmp_path / "cli")]
    args += ["--num", "6", "--batch-size", "3", "--shard-size", "3", "--network-batch", "3"]
    args += ["--seed", "1", "--config", str(tmp_path / "pipeline.yaml")]
    (tmp_path / "pipeline.yaml").write_text("generator:\n  sampler:\n    steps: 2\n")  # TINY
    result = CliRunner().invoke(get_cli(), args)
    assert result.exit_code == 0, result.output
    cli = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert [s["sha256"] for s in api["shards"]] == [s["sha256"] for s in cli["shards"]]
    assert api["provenance"]["classifier_sha256"] == cli["provenance"]["classifier_sha256"]


def test_serve_takes_the_generator_as_generate_does(tmp_path, cond_dir):
    """--generator-dir in both commands; serve's old positional spelling still works and says
    (in one line) what replaced it; both at once is a usage error."""
    rgb = flat_set(tmp_path / "rgb", NAMES, 3)  # a misfit: stops serve before it listens
    cli = get_cli()
    base = ["serve", "--port", "0", "--device", "cpu", "--classes-from", str(rgb)]
    new = CliRunner().invoke(cli, [*base, "--generator-dir", str(cond_dir)])
    old = CliRunner().invoke(cli, [*base, str(cond_dir)])
    assert "holds 3-channel images" in new.output and "GENERATOR_SPEC" not in new.output
    notice = [line for line in old.output.splitlines() if "GENERATOR_SPEC" in line]
    assert notice == [
        f"GENERATOR_SPEC is now --generator-dir: sio serve --generator-dir {cond_dir} ..."
    ]  # noqa: E501
    assert "holds 3-channel images" in old.output  # it went on with that generator
    both = CliRunner().invoke(cli, [*base, str(cond_dir), "--generator-dir", str(cond_dir)])
    assert both.exit_code == 2 and "give the generator once" in both.output
