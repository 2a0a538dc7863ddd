"""DDPM training folders: log.jsonl, a checkpoint a SIGKILLed training resumes from to the same
bytes, refusal of a changed definition, no retraining of complete weights; and a real tiny
``sio generate --train-on`` run's output (no "[rank 0]" in one process, no diffusers accelerate
notice, bars and the training's summary line)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sio.generate.config import DDPMModelConfig, DDPMTrainConfig, GeneratorConfig
from sio.generate.ddpm.model import ACCELERATE_NOTICE, DDPMGenerator, build_unet
from sio.generate.ddpm.train import CHECKPOINT, LOG, train_ddpm, train_from_shard_set
from sio.shardset import iter_batches, read_manifest

from .shardsets import grey_writer

pytestmark = pytest.mark.usefixtures("one_thread")

BIN = Path(sys.executable).parent
TINY = DDPMModelConfig(block_out_channels=(8, 16), layers_per_block=1)
TRAIN = DDPMTrainConfig(
    steps=12, batch_size=4, lr=1e-2, ema_decay=0.9, seed=3, log_every=2, checkpoint_every=4
)
CONFIG = GeneratorConfig(model=TINY, train=TRAIN)
WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"

# the training in a child process, each optimiser step slowed so that the parent can kill it
# between two checkpoints (it runs on one thread, as the in-process trainings of this module)
CHILD = """
import sys, time, torch
torch.set_num_threads(1)
step = torch.optim.AdamW.step
def slow(self, *args, **kwargs):
    out = step(self, *args, **kwargs)
    time.sleep(0.4)
    return out
torch.optim.AdamW.step = slow
from sio.generate.config import DDPMModelConfig, DDPMTrainConfig, GeneratorConfig
from sio.generate.ddpm.train import train_from_shard_set
config = GeneratorConfig(
    model=DDPMModelConfig(block_out_channels=(8, 16), layers_per_block=1),
    train=DDPMTrainConfig(steps=12, batch_size=4, lr=1e-2, ema_decay=0.9, seed=3, log_every=2,
                          checkpoint_every=4),
)
train_from_shard_set(sys.argv[1], config, sys.argv[2], "cpu", sys.argv[3])
"""


def real_set(folder: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(5)
    writer = grey_writer(folder, "real", ("dark", "light"), shard_size=10)
    for i in range(n):
        label = i % 2
        image = rng.integers(0, 100, (8, 8)) + 150 * label
        writer.write(f"r{i:03d}", image.astype(np.uint8), label, {})
    writer.close()
    return folder


def log_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / LOG).read_text().splitlines()]


def without_speed(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "images_per_s"} for line in lines]


def kill_part_way(real: Path, run: Path, past_step: int) -> None:
    """Start the training in a child, SIGKILL it once it logged ``past_step``."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(real), str(run / "weights"), str(run)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and child.poll() is None:
            if (run / LOG).is_file() and any(line["step"] >= past_step for line in log_lines(run)):
                break
            time.sleep(0.01)
        assert child.poll() is None, "the training ended before it could be killed"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()


def test_sigkilled_training_resumes_to_the_same_weights_bitwise(tmp_path, capsys):
    real = real_set(tmp_path / "real")
    reference = tmp_path / "reference"
    train_from_shard_set(real, CONFIG, reference / "weights", "cpu", reference)
    assert not (reference / CHECKPOINT).exists()  # dropped once the weights are written
    expected = log_lines(reference)
    assert [line["step"] for line in expected] == [2, 4, 6, 8, 10, 12]
    assert all(
        set(line) == {"step", "loss", "lr", "images_per_s"}
        and all(isinstance(v, int | float) for v in line.values())
        for line in expected
    )
    assert expected[-1]["loss"] < expected[0]["loss"]

    run = tmp_path / "run"
    kill_part_way(real, run, past_step=6)
    assert not (run / "weights").exists()  # the weights folder appears only when complete
    saved = torch.load(run / CHECKPOINT, weights_only=True)
    assert 4 <= saved["step"] < 12 and saved["step"] % 4 == 0
    assert max(line["step"] for line in log_lines(run)) >= 6

    # another training definition is refused, naming the field
    changed = dataclasses.replace(CONFIG, train=dataclasses.replace(TRAIN, lr=2e-2))
    with pytest.raises(ValueError, match=r"changed: train\.lr = 0\.01, not 0\.02"):
        train_from_shard_set(real, changed, run / "weights", "cpu", run)

    # fields that change no byte may differ; the resumed training ends bitwise the same
    neutral = dataclasses.replace(
        CONFIG, train=dataclasses.replace(TRAIN, checkpoint_every=5, log_every=2)
    )
    capsys.readouterr()
    train_from_shard_set(real, neutral, run / "weights", "cpu", run)
    assert f"at step {saved['step']}" in capsys.readouterr().out
    assert (run / "weights" / WEIGHTS).read_bytes() == (
        reference / "weights" / WEIGHTS
    ).read_bytes()
    assert without_speed(log_lines(run)) == without_speed(expected)
    assert not (run / CHECKPOINT).exists()
    loaded = DDPMGenerator.from_pretrained(run / "weights")
    assert loaded.class_names == ("dark", "light") and loaded.null_class == 2

    # a complete training is not done again; a different one over it is refused
    stamp = (run / "weights" / WEIGHTS).stat().st_mtime_ns
    train_from_shard_set(real, CONFIG, run / "weights", "cpu", run)
    assert "not trained again" in capsys.readouterr().out
    assert (run / "weights" / WEIGHTS).stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"trained differently \(changed: train\.lr"):
        train_from_shard_set(real, changed, run / "weights", "cpu", run)


def test_checkpoint_of_other_data_is_refused(tmp_path):
    real = real_set(tmp_path / "real")
    other = real_set(tmp_path / "other", n=20)
    run = tmp_path / "run"
    # train_ddpm leaves its last checkpoint (step 8 of 12) for train_from_shard_set to drop
    images, labels = (torch.cat(parts) for parts in zip(*iter_batches(other, 100), strict=True))
    train_ddpm(images, labels, read_manifest(other).class_names, CONFIG, "cpu", run)
    assert torch.load(run / CHECKPOINT, weights_only=True)["step"] == 8
    with pytest.raises(ValueError, match=r"made differently \(changed: data\.sha256 = '"):
        train_from_shard_set(real, CONFIG, run / "weights", "cpu", run)
    assert not (run / "weights").exists()


def test_complete_weights_of_another_set_are_refused_not_reused(tmp_path):
    """Weights trained on one set are not returned for another: the set's shard list is part
    of what "trained the same way" compares (checked before any image is loaded)."""
    real, other = real_set(tmp_path / "real"), real_set(tmp_path / "other", n=20)
    config = dataclasses.replace(CONFIG, train=dataclasses.replace(TRAIN, steps=2))
    out = train_from_shard_set(real, config, tmp_path / "weights", "cpu")
    assert train_from_shard_set(real, config, out, "cpu") == out  # the same set: reused
    with pytest.raises(ValueError, match=r"trained differently \(changed: real = '"):
        train_from_shard_set(other, config, out, "cpu")
    (out / "sio_generator.json").write_text('{"training": ')  # hand-edited, cut short
    with pytest.raises(ValueError, match=r"sio_generator\.json: not a readable sio generator"):
        train_from_shard_set(real, config, out, "cpu")


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_diffusers_accelerate_notice_is_dropped_and_only_it(tmp_path):
    from diffusers import UNet2DModel

    unet_dir = tmp_path / "unet"
    build_unet(TINY, image_size=8, channels=1, num_classes=2).save_pretrained(unet_dir)
    logger = logging.getLogger("diffusers.models.modeling_utils")
    handler = Records()
    logger.addHandler(handler)
    try:
        # without accelerate installed, diffusers logs its notice here
        UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=True)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in handler.records if "accelerate" in r.getMessage()]
    notice = "Cannot initialize model with low cpu memory usage because `accelerate` was not found"
    other = "Defaulting to unsafe serialization."
    make = logger.makeRecord
    assert not ACCELERATE_NOTICE.filter(make(logger.name, 30, "f", 1, notice, (), None))
    assert ACCELERATE_NOTICE.filter(make(logger.name, 30, "f", 1, other, (), None))


def test_single_process_generate_output(tmp_path):
    """A real tiny ``sio generate --train-on`` run: what a user reads on the terminal."""
    real = real_set(tmp_path / "real")
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "generator:\n"
        "  model: {block_out_channels: [8, 16]}\n"
        "  train: {steps: 6, batch_size: 4, log_every: 3, checkpoint_every: 3}\n"
        "  sampler: {steps: 2}\n"
    )
    gen = tmp_path / "gen" / "ddpm"
    command = [str(BIN / "python"), "-m", "sio", "generate", "--config", str(config)]
    command += ["--generator-dir", str(gen), "--train-on", str(real), "--out"]
    command += [str(tmp_path / "syn"), "--num", "4", "--shard-size", "4", "--batch-size", "4"]
    command += ["--network-batch", "4", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "[rank" not in done.stderr and "[rank" not in done.stdout
    assert "accelerate" not in (done.stderr + done.stdout).lower()
    # the bars, with their totals
    assert "train ddpm" in done.stderr and "/6" in done.stderr
    assert "generate ddpm" in done.stderr and "/4" in done.stderr
    assert "train ddpm: 6 steps" in done.stdout  # the training's one-line summary
    steps = [line["step"] for line in log_lines(gen.parent / "ddpm.training")]
    assert steps == [3, 6]
    assert f"{tmp_path / 'syn'}: 4 images in 1 shards" in done.stdout


def test_min_snr_weights_each_sample_by_its_timestep(tmp_path, monkeypatch):
    """gamma > 0 weights sample i's noise MSE by min(SNR(t_i), gamma) / SNR(t_i), computed here
    in float64 from the scheduler's alpha_bar; gamma = 0 is the plain MSE of the weights
    trained before the field existed (same definition, same bytes)."""
    from sio.generate.ddpm import train as ddpm_train
    from sio.generate.stage import training_definition

    real = real_set(tmp_path / "real")
    images, labels = (torch.cat(parts) for parts in zip(*iter_batches(real, 100), strict=True))
    names = read_manifest(real).class_names
    weighted = dataclasses.replace(CONFIG, train=dataclasses.replace(TRAIN, min_snr_gamma=5.0))
    plan, state = ddpm_train.make_plan(images, labels, names, weighted, "cpu")
    t = torch.tensor([0, 10, 100, 400, 999])
    alpha_bar = plan.scheduler.alphas_cumprod.double()[t]
    snr = alpha_bar / (1 - alpha_bar)
    expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr
    got = ddpm_train._min_snr_weights(plan, t, 5.0).double()
    assert torch.allclose(got, expected, rtol=1e-6)
    assert got[0] < 0.01 and got[-1] == 1.0  # the near-clean step counts least; noisy ones fully

    seen = []
    real_weights = ddpm_train._min_snr_weights
    monkeypatch.setattr(
        ddpm_train, "_min_snr_weights", lambda *a: seen.append(a[1]) or real_weights(*a)
    )
    trained = {
        g: train_ddpm(images, labels, names, c, "cpu") for g, c in ((5, weighted), (0, CONFIG))
    }
    assert len(seen) == TRAIN.steps  # every step of the gamma = 5 training, none of the other's
    state_5, state_0 = (trained[g].unet.state_dict() for g in (5, 0))
    assert any(not torch.equal(state_5[k], state_0[k]) for k in state_0)

    assert "min_snr_gamma" not in training_definition(CONFIG)["train"]
    assert training_definition(weighted)["train"]["min_snr_gamma"] == 5.0
