"""One job at a time writes a generation folder: real processes of two runs race for
``.progress/lock`` at seeded times; two runs never hold it at once, the refused are told who
holds it, and the first writer's cleanup never removes a temporary of a rank that joined it.
And rank 0 of a resized multi-rank job never takes the old size's manifest for the new one."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sio.generate import Job, load_generator, run_job
from sio.generate.config import GenerateConfig, GeneratorConfig, SamplerConfig
from sio.generate.job import GenerationError
from sio.generate.resume import FolderLock, remove_stale

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = GeneratorConfig(sampler=SamplerConfig(steps=2))


def contender(folder: str, run: str, index: int, delay: float, hold: float, clean: float, go):
    """Take the lock after ``delay``; hold it ``hold`` s with a temporary of one's own (a
    shard being written), the first writer cleaning for ``clean`` s; write what happened."""
    folder, result = Path(folder), {"run": run, "index": index}
    go.wait(30)
    time.sleep(delay)
    lock = FolderLock(folder, run)

    def cleanup():
        time.sleep(clean)
        remove_stale(folder)

    try:
        lock.acquire(timeout_s=0.3, on_first=cleanup)
    except GenerationError as err:
        result.update(outcome="refused", message=str(err))
    else:
        result.update(outcome="held", enter=time.monotonic(), first=lock.first)
        mine = folder / f"shard-{index:06d}.tar.tmp"
        mine.write_bytes(b"being written")
        time.sleep(hold)
        result.update(kept=mine.exists(), exit=time.monotonic())
        mine.unlink(missing_ok=True)
        lock.release()
    result["pid"] = os.getpid()
    (folder.parent / f"result-{index}.json").write_text(json.dumps(result))


@pytest.mark.parametrize("seed", range(5))
def test_two_runs_never_hold_the_folder_at_once(tmp_path, seed):
    rng = np.random.default_rng(seed)
    folder = tmp_path / "syn"
    (folder / ".progress").mkdir(parents=True)
    stale = folder / "shard-999999.tar.tmp"
    stale.write_bytes(b"left by a kill")
    context = multiprocessing.get_context("fork")
    go = context.Event()
    runs = ["run-a"] * 3 + ["run-b"] * 3
    processes = []
    for index, run in enumerate(runs):
        args = (
            str(folder),
            run,
            index,
            float(rng.uniform(0, 0.05)),
            float(rng.uniform(0.05, 0.2)),
            float(rng.uniform(0, 0.05)),
            go,
        )
        processes.append(context.Process(target=contender, args=args))
    for process in processes:
        process.start()
    go.set()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    results = [json.loads((tmp_path / f"result-{i}.json").read_text()) for i in range(6)]
    held = [r for r in results if r["outcome"] == "held"]
    assert held and not stale.exists()
    for one in held:
        assert one["kept"], f"the first writer's cleanup removed a temporary of {one}"
        for other in held:
            if other["run"] != one["run"]:
                assert one["exit"] < other["enter"] or other["exit"] < one["enter"], (one, other)
    firsts = [(r["run"], r["pid"]) for r in held if r["first"]]
    assert {run for run, _ in firsts} == {r["run"] for r in held}
    for refused in (r for r in results if r["outcome"] == "refused"):
        message = refused["message"]
        assert "\n" not in message and "another job is writing this folder" in message
        others = [pid for run, pid in firsts if run != refused["run"]]
        assert any(f"pid {pid} " in message for pid in others), (message, firsts)


def config(**changes) -> GenerateConfig:
    fields = dict(num_images=10, batch_size=4, shard_size=4, network_batch=4, seed=5)
    return GenerateConfig(**{**fields, "encoding": "records", **changes})


def test_rank_0_of_a_resized_set_waits_for_the_new_manifest(tmp_path, cond_dir, monkeypatch):
    """10 images (3 shards) made, then resized to 14 (4 shards) by two ranks: rank 0 does not
    return the 10-image manifest still in the folder; it names the shard rank 1 writes, and once
    rank 1 has written it, returns the 14-image manifest."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "resize-test")  # the ranks share one run
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("SIO_POLL_S", "0.05")
    generator = load_generator(TINY, cond_dir)
    out = tmp_path / "syn"
    old = run_job(Job(generator, config(), ("a", "b", "c")), out, rank=0, world_size=1)
    assert old["num_samples"] == 10
    resized = Job(generator, config(num_images=14), ("a", "b", "c"))
    # rank 0 alone: shards 0 and 2 (2 regenerated: it held 2 images, now 4), then waits for 3
    with pytest.raises(GenerationError, match=r"waiting for 1 shards \(shard-000003\.tar\)"):
        run_job(resized, out, rank=0, world_size=2, wait_for_all=True, wait_timeout=0.5)
    assert json.loads((out / "manifest.json").read_text())["num_samples"] == 10
    # both ranks at once: rank 0 waits for rank 1's shard and returns the new manifest
    returned = {}

    def rank0():
        returned[0] = run_job(
            resized, out, rank=0, world_size=2, wait_for_all=True, wait_timeout=60
        )

    thread = threading.Thread(target=rank0, daemon=True)
    thread.start()
    time.sleep(0.3)
    returned[1] = run_job(resized, out, rank=1, world_size=2)
    thread.join(60)
    assert returned[0] is not None and returned[0] == returned[1]
    assert returned[0]["num_samples"] == 14 and len(returned[0]["shards"]) == 4
    whole = run_job(Job(generator, config(num_images=14), ("a", "b", "c")), tmp_path / "whole")
    assert [s["sha256"] for s in returned[0]["shards"]] == [s["sha256"] for s in whole["shards"]]
