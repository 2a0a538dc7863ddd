"""DDP: the global quota split over ranks, the shard-count rule, the torchrun launcher, and two
CPU ranks under torchrun with gloo: every global batch exact, equal steps, no hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from sio.cli import get_cli
from sio.shardset import ShardSetWriter
from sio.train import batch_counts, load_checkpoint, train_classifier
from sio.train import cli as train_cli
from sio.train.config import TrainConfig
from sio.train.distributed import World, torchrun_command
from sio.train.trainer import batch_plan

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("alpha", [1.0, 0.9, 0.8, 0.75, 0.29, 0.0])
@pytest.mark.parametrize("batch_size", [7, 10, 128, 256])
def test_every_global_batch_keeps_the_exact_quota(world_size, alpha, batch_size):
    counts = batch_counts(batch_size, alpha)
    extras = {"mixing": batch_size, "outliers": 2 * batch_size, "odd": 5}
    plan = batch_plan(counts, extras, batch_size, World(0, world_size))
    assert sum(plan["real"]) == counts[0] and sum(plan["synthetic"]) == counts[1]
    local = [r + s for r, s in zip(plan["real"], plan["synthetic"], strict=True)]
    assert plan["mixing"] == tuple(local)  # PixMix: one picture per ID image on each rank
    assert sum(plan["outliers"]) == 2 * batch_size and sum(plan["odd"]) == 5
    assert max(plan["real"]) - min(plan["real"]) <= 1  # not alpha recomputed per rank


def test_nproc_runs_torchrun_with_the_same_arguments(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_cli.subprocess, "call", lambda command: calls.append(command) or 0)
    args = ["train", "--real", "s3://b/real", "--alpha", "0.8", "--out", str(tmp_path)]
    result = CliRunner().invoke(get_cli(), [*args, "--nproc", "3", "--resume"])
    assert result.exit_code == 0, result.output
    (command,) = calls
    assert command[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert command[4:7] == ["--nproc_per_node=3", "-m", "sio"]
    assert command[7:] == [*args[:5], "--seed", "0", *args[5:], "--resume"]
    assert torchrun_command(1, ["x"])[-1] == "x"


def write_set(folder, count, kind, shard_size=8):
    rng = np.random.default_rng(len(kind))
    with ShardSetWriter(
        folder,
        kind=kind,
        name=kind,
        image_size=(8, 8),
        channels=1,
        class_names=("a", "b", "c"),
        shard_size=shard_size,
    ) as writer:
        for i in range(count):
            image = rng.integers(0, 60, (8, 8)) + 60 * (i % 3)
            writer.write(f"{kind}-{i:04d}", image.astype(np.uint8), i % 3, {})
    return folder


@pytest.mark.slow
def test_two_gloo_ranks_under_torchrun(tmp_path):
    real = write_set(tmp_path / "real", 64, "real")  # 8 shards >= 2 ranks x 2 workers
    synthetic = write_set(tmp_path / "synthetic", 48, "synthetic")  # 6 shards
    train = {"epochs": 2, "batch_size": 10, "num_workers": 2, "shuffle_buffer": 8, "lr": 0.05}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"train": train}))
    out, steps_log = tmp_path / "run", tmp_path / "steps"
    command = [
        *(str(BIN / "python"), "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--standalone", "-m", "sio", "train"),  # a free port: nothing fixed to collide
        *("--real", str(real), "--synthetic", str(synthetic), "--alpha", "0.75"),
        *("--out", str(out), "--config", str(tmp_path / "pipeline.yaml"), "--device", "cpu"),
    ]
    env = {**os.environ, "SIO_STEP_LOG": str(steps_log), "SIO_DIST_TIMEOUT": "60"}
    process = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert process.returncode == 0, process.stdout + process.stderr
    # alpha 0.75 of B = 10: 7 real + 3 synthetic per global batch; rank 0 takes 3 + 1, rank 1
    # takes 4 + 2 (rank_share of each quota); 7 steps per epoch (ceil(64 / 10))
    per_rank = {}
    for rank in (0, 1):
        lines = (steps_log / f"steps-rank{rank}.jsonl").read_text().splitlines()
        per_rank[rank] = [json.loads(line) for line in lines]
    assert [r["step"] for r in per_rank[0]] == [r["step"] for r in per_rank[1]] == list(range(14))
    assert {(r["real"], r["synthetic"]) for r in per_rank[0]} == {(3, 1)}
    assert {(r["real"], r["synthetic"]) for r in per_rank[1]} == {(4, 2)}
    global_batches = defaultdict(lambda: [0, 0])
    for record in per_rank[0] + per_rank[1]:
        global_batches[record["step"]][0] += record["real"]
        global_batches[record["step"]][1] += record["synthetic"]
    assert all(counts == [7, 3] for counts in global_batches.values())
    _, state = load_checkpoint(out)
    assert state["complete"] and state["step"] == 14 and state["world_size"] == 2
    assert len(state["rng"]) == 2
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["real_seen"], r["synthetic_seen"], r["ranks"]) for r in log] == [(49, 21, 2)] * 2
    assert all(r["effective_alpha"] == pytest.approx(0.7) for r in log)
    with pytest.raises(ValueError, match="world_size = 2"):  # not resumable by one process
        train_classifier(
            real=real, synthetic=synthetic, alpha=0.75, seed=0, config=TrainConfig(**train), out=out
        )
