"""DDP: the global quota split over ranks, the shard-count rule, the torchrun launcher, and two
CPU ranks under torchrun with gloo: every global batch exact, equal steps, no hang."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from sio.cli import get_cli
from sio.train import batch_counts, load_checkpoint, train_classifier
from sio.train import cli as train_cli
from sio.train.config import TrainConfig
from sio.train.distributed import World, torchrun_command
from sio.train.trainer import batch_plan

from .shardsets import grey_writer

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
    with grey_writer(folder, kind, ("a", "b", "c"), shard_size) as writer:
        for i in range(count):
            image = rng.integers(0, 60, (8, 8)) + 60 * (i % 3)
            writer.write(f"{kind}-{i:04d}", image.astype(np.uint8), i % 3, {})
    return folder


def read_trace(folder: Path) -> dict:
    """step -> (real keys, synthetic keys) of the global batch, the ranks' parts in rank order."""
    steps = defaultdict(lambda: ([], []))
    for path in sorted(folder.glob("rank-*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            steps[record["step"]][0].extend(record["real"])
            steps[record["step"]][1].extend(record["synthetic"])
    return dict(steps)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_two_gloo_ranks_under_torchrun_give_the_one_process_batches(tmp_path):
    """W = 2 ranks x 2 workers under torchrun, SIGKILLed mid-run, resumed by one process with 3
    workers: the global batches of every step, by key, are those of one process without
    workers; each rank took its rank_share (3 + 1 and 4 + 2 of 7 + 3)."""
    real = write_set(tmp_path / "real", 64, "real")
    synthetic = write_set(tmp_path / "synthetic", 48, "synthetic", shard_size=16)  # 3 shards
    train = {
        **{"epochs": 2, "batch_size": 10, "num_workers": 2, "shuffle_window": 8, "lr": 0.05},
        **{"trace": True, "checkpoint_every": 1},
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"train": train}))
    out = tmp_path / "run"
    command = [
        *(str(BIN / "python"), "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--standalone", "-m", "sio", "train"),  # a free port: nothing fixed to collide
        *("--real", str(real), "--synthetic", str(synthetic), "--alpha", "0.75"),
        *("--out", str(out), "--config", str(tmp_path / "pipeline.yaml"), "--device", "cpu"),
    ]
    env = {**os.environ, "SIO_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    trace = out / "trace" / "rank-0.jsonl"
    deadline = time.monotonic() + 240
    while not (trace.is_file() and trace.read_text().count("\n") >= 4):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.005)
    for rank in children(process.pid):  # torchrun starts each rank in a session of its own
        os.killpg(rank, signal.SIGKILL)  # the rank and its DataLoader workers
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _, state = load_checkpoint(out)
    assert 3 <= state["step"] < 14 and state["world_size"] == 2 and len(state["rng"]) == 2
    two_ranks = read_trace(out / "trace")
    for record in map(json.loads, trace.read_text().splitlines()):
        assert (len(record["real"]), len(record["synthetic"])) == (3, 1)
    for line in (out / "trace" / "rank-1.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert (len(record["real"]), len(record["synthetic"])) == (4, 2)
    config = TrainConfig(**{**train, "num_workers": 3})  # a W = 2 run resumed by one process
    kwargs = {"real": real, "synthetic": synthetic, "alpha": 0.75, "seed": 0}
    train_classifier(**kwargs, config=config, out=out, resume=True)
    reference = tmp_path / "reference"
    config = TrainConfig(**{**train, "num_workers": 0, "checkpoint_every": None})
    train_classifier(**kwargs, config=config, out=reference)
    want, got = read_trace(reference / "trace"), read_trace(out / "trace")
    assert sorted(want) == sorted(got) == list(range(14))
    assert got == want
    assert all(two_ranks[step] == want[step] for step in two_ranks if step < state["step"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["real_seen"], r["synthetic_seen"]) for r in log] == [(49, 21)] * 2
    assert all(r["effective_alpha"] == pytest.approx(0.7) for r in log)
    # the real/synthetic split is summed over both ranks, as the loss and the counts are (with
    # rank 0's part alone the parts would not add up to the whole: 3 + 1 of 7 + 3 samples)
    for r in log:
        seen = r["real_seen"] + r["synthetic_seen"]
        parts = r["real_loss"] * r["real_seen"] + r["synthetic_loss"] * r["synthetic_seen"]
        assert parts / seen == pytest.approx(r["loss"], rel=1e-6)  # ce: per-sample mean
        hits = r["real_acc"] * r["real_seen"] + r["synthetic_acc"] * r["synthetic_seen"]
        assert hits / seen == pytest.approx(r["train_acc"], rel=1e-9)
