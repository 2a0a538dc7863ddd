"""benchmarks/gpu --small on the CPU: every section measured with finite, positive numbers, the
JSON rewritten after each measurement (valid at every moment, also after a kill), and the time
budget honoured. Keeps the GPU script from rotting on machines without a GPU."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sio.train import batch_counts

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"  # python benchmarks/gpu
HARNESS = SCRIPT / "harness.py"  # Bench and the sizes, shared by every section
MEASURED = ("ceiling", "trainer", "loader", "generation", "evaluation", "compile")
# what --small on a CPU may leave unmeasured, and why
ALLOWED_NOT_RUN = {("nvidia", "stylegan2_ada"), ("compile", "trainer")}


def start(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--out", str(out)]
    return subprocess.Popen(
        [*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def numbers(value, path=""):
    """Every (path, number) inside ``value``, booleans and peak memory left out."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def measured(data: dict) -> dict:
    return {
        (section, key): entry
        for section, entries in data["sections"].items()
        for key, entry in entries.items()
        if isinstance(entry, dict) and "not_run" not in entry and "error" not in entry
    }


def check_numbers(data: dict) -> None:
    for (section, key), entry in measured(data).items():
        assert entry["peak_gpu_bytes"] is None, (section, key)  # no GPU: None, never 0
        for path, value in numbers(entry, f"{section}.{key}"):
            assert math.isfinite(value) and value > 0, (path, value)


def read(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def test_small_run_measures_every_section_and_writes_as_it_goes(tmp_path):
    out = tmp_path / "gpu.json"
    process = start(out)
    snapshots, last = [], None
    while process.poll() is None:
        text = out.read_text() if out.exists() else None
        if text is not None and text != last:
            snapshots.append(json.loads(text))  # atomic rewrites: always whole JSON
            last = text
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    final = json.loads(out.read_text())
    assert final["complete"] is True and final["device"] == "cpu" and final["small"] is True
    partial = [s for s in snapshots if not s["complete"]]
    counts = [len(measured(s)) for s in partial]
    assert len(set(counts)) >= 5, counts  # seen growing, one measurement at a time
    assert counts == sorted(counts)
    for snapshot in partial:
        check_numbers(snapshot)
    check_numbers(final)

    sections = final["sections"]
    assert set(sections) == {*MEASURED, "nvidia"}
    for section in MEASURED:
        assert any(s == section for s, _ in measured(final)), section
    for section, entries in sections.items():
        for key, entry in entries.items():
            assert "error" not in entry, (section, key, entry)
            if "not_run" in entry:
                assert (section, key) in ALLOWED_NOT_RUN, (section, key, entry)

    # both batch sizes, both precisions / layouts of the ceiling, both trainer modes
    batches = final["sizes"]["batches"]
    for batch in batches:
        for key in (f"fp32_b{batch}", f"bf16_channels_last_b{batch}"):
            assert sections["ceiling"][key]["images_per_s"] > 0
        for mode in ("records", "resident"):
            entry = sections["trainer"][f"fp32_{mode}_b{batch}"]
            n_real, n_syn = batch_counts(batch, 0.8)
            assert entry["effective_alpha"] == pytest.approx(n_real / batch)
            assert entry["ceiling"] == f"fp32_b{batch}" and entry["vs_ceiling"] > 0
            assert len(entry["epoch_images_per_s"]) == final["sizes"]["epochs"]
            # the same run with the trainer's own GPU options, against its own ceilings
            gpu = sections["trainer"][f"gpu_options_{mode}_b{batch}"]
            assert gpu["options"] == final["trainer_options"]["gpu_options"]
            assert gpu["options"] == {
                "precision": "bf16",
                "channels_last": True,
                "device_augment": True,
            }
            assert gpu["effective_alpha"] == pytest.approx(n_real / batch)
            assert gpu["ceiling"] == f"bf16_channels_last_b{batch}"
            assert gpu["vs_ceiling"] > 0 and gpu["vs_ceiling_device_augment"] > 0
        assert sum(sections["loader"][f"records_b{batch}"]["composition"]) == batch
    generation = sections["generation"]
    for key in ("ddpm_cifar10_unet_ddim50", "biggan_deep_128", "stylegan2_cifar10"):
        assert generation[f"{key}_fp32"]["precision"] == "fp32"
        assert generation[f"{key}_bf16"]["precision"] == "bf16"
    evaluation = sections["evaluation"]["all_detectors"]
    assert "odin" in evaluation["skipped"] and len(evaluation["detectors"]) == 11
    assert evaluation["total_s"] == pytest.approx(
        sum(d["seconds"] for d in evaluation["detectors"].values())
    )
    assert sections["compile"]["stylegan2_cifar10_fp32"]["compile_s"] > 0
    # one table on stdout: a row per measurement
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + sum(len(entries) for entries in sections.values())


def test_a_killed_run_leaves_valid_json_with_the_numbers_so_far(tmp_path):
    out = tmp_path / "gpu.json"
    process = start(out)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            data = read(out)
            if data is not None and len(measured(data)) >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, "finished before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate()
    data = json.loads(out.read_text())
    assert data["complete"] is False and len(measured(data)) >= 2
    check_numbers(data)


def test_budget_turns_the_rest_into_not_run_and_keeps_the_file_whole(tmp_path, monkeypatch):
    """In process, on the script's own Bench: a measurement past the budget is recorded as
    not_run without running; within it, run, recorded and written."""
    monkeypatch.setenv("TQDM_DISABLE", "1")  # the script sets it by default; keep it scoped
    spec = importlib.util.spec_from_file_location("sio_gpu_benchmark", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = type("Args", (), {"device": "cpu", "small": True, "out": tmp_path / "b.json"})
    args.budget = 3600.0
    bench = module.Bench(args)
    ran = []
    bench.measure("ceiling", "inside", lambda: ran.append(1) or {"images_per_s": 5.0})
    bench.budget = 0.0
    bench.measure("trainer", "outside", lambda: ran.append(2) or {"images_per_s": 5.0})
    data = json.loads((tmp_path / "b.json").read_text())
    assert ran == [1]
    assert data["sections"]["ceiling"]["inside"] == {"images_per_s": 5.0, "peak_gpu_bytes": None}
    assert "time budget of 0 s" in data["sections"]["trainer"]["outside"]["not_run"]
    assert data["complete"] is False
    assert data["trainer_options"]["gpu_options"] == module.GPU_OPTIONS == bench.gpu_options
