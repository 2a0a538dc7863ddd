"""One job writes a folder: ``sio train``, ``sio evaluate``, ``sio report`` and ``sio run`` take
the folder lock ``sio generate`` has (sio/core/lock.py) on their output folder. A second job, as
a command or through the Python API, is refused in one line naming the holder's pid, host and
command; the lock of a killed holder is taken over; the ranks of one torchrun share it; and the
nested locks of one job (``sio run`` and the stages under it) never refuse that job.

The holder is a real process (``held``): the test waits for the line it prints once it holds
the folder, never on a sleep."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from sio.cli import get_cli
from sio.core.lock import LOCK_FILE, FolderBusy, FolderLock, hold_folder

from .shardsets import two_class_set

pytestmark = pytest.mark.usefixtures("one_thread")

HOLDER = (
    "import sys\n"
    "from sio.core.lock import hold_folder\n"
    "with hold_folder(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    sys.stdin.readline()\n"
)
TRAIN_CONFIG = "train: {epochs: 1, batch_size: 8, num_workers: 0, crop_padding: 0}\n"


@contextmanager
def held(folder: Path, **env):
    """A live process holding ``folder``'s lock for the block (``env``: its extra variables)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        if process.poll() is None:
            process.stdin.write("\n")
            process.stdin.flush()
        process.wait(60)


def refusal(output: str, folder: Path, holder: subprocess.Popen) -> str:
    """The one error line of a refused job (and that it is the only line saying so)."""
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    line = errors[0]
    assert line.startswith(f"Error: {folder}: another job is writing this folder (pid "), line
    assert f"pid {holder.pid} on host {socket.gethostname()}, since " in line, line
    assert f"-c {folder}" in line, line  # the holder's command line
    return line


@pytest.fixture(scope="module")
def real_set(tmp_path_factory):
    return two_class_set(tmp_path_factory.mktemp("sets") / "real")


def train_args(real: Path, out: Path, config: Path) -> list[str]:
    return ["train", "--real", str(real), "--alpha", "1", "--out", str(out)] + [
        "--config",
        str(config),
        "--device",
        "cpu",
    ]


def test_a_second_training_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path, real_set):
    """``sio train`` into a folder a live process holds: refused, nothing written; once the
    holder is killed (SIGKILL: its record stays in the lock file), the same command takes the
    folder over, removes what the killed job left, and trains."""
    config = tmp_path / "pipeline.yaml"
    config.write_text(TRAIN_CONFIG)
    out = tmp_path / "run"
    runner = CliRunner()
    with held(out) as holder:
        result = runner.invoke(get_cli(), train_args(real_set, out, config))
        assert result.exit_code == 1
        refusal(result.output, out, holder)
        assert not (out / "checkpoint.pt").exists()
        holder.send_signal(signal.SIGKILL)
        holder.wait(60)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid  # a stale record
    left = out / "checkpoint.pt.0123abcd.tmp"
    left.write_bytes(b"half a checkpoint of the killed job")
    result = runner.invoke(get_cli(), train_args(real_set, out, config))
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint.pt").is_file() and not left.exists()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_second_sio_evaluate_process_is_refused(tmp_path):
    """A real ``sio evaluate`` process against a held --out: exit 1, one line, no results."""
    out = tmp_path / "eval"
    command = [str(Path(sys.executable).parent / "sio"), "evaluate", "--run", str(tmp_path)]
    command += ["--benchmark", str(tmp_path), "--out", str(out)]
    with held(out) as holder:
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    refusal(done.stderr, out, holder)
    assert not (out / "results.json").exists()


def test_report_and_run_are_refused_as_commands_and_through_the_api(tmp_path, monkeypatch):
    """``sio report --out`` and ``sio run`` (through their APIs, which take the lock), and the
    trainer's and the evaluator's APIs, refuse a held folder before they read or write."""
    from sio.evaluate import evaluate_checkpoint
    from sio.evaluate.config import EvaluateConfig
    from sio.train import train_classifier
    from sio.train.config import TrainConfig

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "shared"
    (tmp_path / "run.yaml").write_text(f"output_dir: {out}\n")
    runner = CliRunner()
    with held(out) as holder:
        result = runner.invoke(get_cli(), ["report", str(tmp_path / "a"), "--out", str(out)])
        assert result.exit_code == 1
        refusal(result.output, out, holder)
        result = runner.invoke(get_cli(), ["run", str(tmp_path / "run.yaml")])
        assert result.exit_code == 1
        refusal(result.output, out, holder)
        calls = [  # the APIs of the stage commands (sio report and run: the APIs above)
            lambda: train_classifier(
                real=tmp_path / "none",
                synthetic=None,
                alpha=1.0,
                seed=0,
                config=TrainConfig(),
                out=out,
            ),
            lambda: evaluate_checkpoint(tmp_path, tmp_path, out, EvaluateConfig()),
        ]
        for call in calls:
            with pytest.raises(FolderBusy, match=rf"pid {holder.pid} on host"):
                call()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, f"{LOCK_FILE}.gate"]


def test_one_job_nests_its_locks_and_other_threads_are_refused(tmp_path):
    """``sio run`` holds its folder while its stages lock their sub-folders and its report
    locks the folder again: one thread never refuses itself; another thread is another job."""
    out = tmp_path / "runs" / "x"
    outcome = {}

    def other_job():
        try:
            with hold_folder(out, timeout_s=0.1):
                outcome["other"] = "held"
        except FolderBusy as err:
            outcome["other"] = str(err)

    with hold_folder(out):
        stage = out / "train" / "alpha1-seed0"
        with hold_folder(out), hold_folder(stage), hold_folder(stage):
            pass
        thread = threading.Thread(target=other_job)
        thread.start()
        thread.join(60)
        assert f"pid {os.getpid()} on host" in outcome["other"]
    other_job()  # released: the next job takes it
    assert outcome["other"] == "held"


def test_the_ranks_of_one_torchrun_share_the_folder(tmp_path, monkeypatch):
    """Ranks with one TORCHELASTIC_RUN_ID hold the folder together; another launch is refused."""
    out = tmp_path / "run"
    launch = {"TORCHELASTIC_RUN_ID": "launch-1", "WORLD_SIZE": "2"}
    with held(out, **launch) as holder:
        for name, value in launch.items():
            monkeypatch.setenv(name, value)
        with hold_folder(out):  # rank 1 joins rank 0
            pass
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-2")
        with (
            pytest.raises(FolderBusy, match=rf"pid {holder.pid} on host"),
            hold_folder(out, timeout_s=0.1),
        ):
            pass


def test_a_failed_train_or_evaluate_leaves_no_lock_files(tmp_path, real_set):
    """A job that fails holding its --out (here: its input is no shard set, no checkpoint)
    lets the lock go and removes ``.lock`` and ``.lock.gate``; one that ends keeps its record."""
    config = tmp_path / "pipeline.yaml"
    config.write_text(TRAIN_CONFIG)
    runner = CliRunner()
    train_out = tmp_path / "train"
    result = runner.invoke(get_cli(), train_args(tmp_path / "no-set", train_out, config))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert list(train_out.iterdir()) == []
    evaluate_out = tmp_path / "evaluate"
    args = ["evaluate", "--run", str(tmp_path), "--benchmark", str(tmp_path)]
    result = runner.invoke(get_cli(), [*args, "--out", str(evaluate_out)])
    assert result.exit_code == 1, result.output
    assert list(evaluate_out.iterdir()) == []
    with hold_folder(tmp_path / "done"):
        pass
    assert (tmp_path / "done" / LOCK_FILE).is_file()


def test_the_last_rank_removes_the_lock_files_and_a_late_opener_takes_the_lock_anew(tmp_path):
    """Removal waits for the last holder of a run; a job that opened the lock file before it was
    removed holds the lock at the path afterwards, so a third job is refused (not granted a
    second lock on a new file)."""
    out = tmp_path / "run"
    ranks = [FolderLock(out, "launch-a"), FolderLock(out, "launch-a")]
    for rank in ranks:
        rank.acquire()
    early = FolderLock(out, "launch-b")  # opens the lock file now
    ranks[0].release(remove=True)
    assert (out / LOCK_FILE).is_file()  # rank 1 holds it still
    ranks[1].release(remove=True)
    assert not (out / LOCK_FILE).exists() and not (out / f"{LOCK_FILE}.gate").exists()
    early.acquire()
    third = FolderLock(out, "launch-c")
    with pytest.raises(FolderBusy, match=f"pid {os.getpid()} on host"):
        third.acquire(timeout_s=0.1)
    early.release(remove=True)
    third.acquire(timeout_s=0.1)
    third.release()
