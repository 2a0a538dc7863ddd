"""Faults: truncated and corrupt shards (named errors, or skipped and counted), explicit
``--resume`` that never overwrites a run, and a run killed with SIGKILL that resumes to the same
end as an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from click.testing import CliRunner

from sio.cli import get_cli
from sio.core.files import sha256_file
from sio.shardset import ShardError, iter_samples
from sio.train import load_checkpoint, train_classifier
from sio.train.config import TrainConfig

from .shardsets import grey_writer

CONFIG = TrainConfig(epochs=2, batch_size=8, num_workers=0, crop_padding=0, lr=0.05)
BIN = Path(sys.executable).parent


pytestmark = pytest.mark.usefixtures("one_thread")


def write_set(folder, count, kind="real"):
    rng = np.random.default_rng(len(kind))
    with grey_writer(folder, kind, ("a", "b"), 8) as writer:
        for i in range(count):
            image = rng.integers(0, 60, (8, 8)) + 150 * (i % 2)
            writer.write(f"{kind}-{i:04d}", image.astype(np.uint8), i % 2, {"i": i})
    return folder


def member_offsets(path):
    with tarfile.open(path) as tar:
        return {info.name: info.offset for info in tar}


def truncate_at(path, member):
    offset = member_offsets(path)[member]
    path.write_bytes(path.read_bytes()[:offset])


def test_shard_cut_at_a_member_boundary_is_caught_by_its_count(tmp_path):
    folder = write_set(tmp_path / "real", 24)
    truncate_at(folder / "shard-000001.tar", "real-0013.cls")  # five whole samples remain
    rehash(folder, "shard-000001.tar")  # listed so: the hash, checked first, cannot catch it
    with pytest.raises(ShardError, match=r"shard-000001\.tar: 5 samples read, the manifest says 8"):
        list(iter_samples(folder))


def test_shard_cut_inside_a_member_names_it(tmp_path):
    folder = write_set(tmp_path / "real", 24)
    path = folder / "shard-000002.tar"
    offset = member_offsets(path)["real-0019.png"]
    path.write_bytes(path.read_bytes()[: offset + 600])
    rehash(folder, path.name)  # listed so: the hash, checked first, cannot catch it
    with pytest.raises(ShardError, match=r"shard-000002\.tar: member real-0019\.png: .*truncated"):
        list(iter_samples(folder))


def test_corrupt_header_is_named(tmp_path):
    folder = write_set(tmp_path / "real", 16)
    path = folder / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[member_offsets(path)["real-0010.json"] + 3] ^= 0x01  # inside the member's name
    path.write_bytes(bytes(data))
    rehash(folder, path.name)  # listed so: the hash, checked first, cannot catch it
    with pytest.raises(ShardError, match=r"shard-000001\.tar: the member after real-0010.cls: bad"):
        list(iter_samples(folder))


@pytest.fixture
def broken(tmp_path):
    """A real set with one undecodable PNG (shard 0) and one truncated shard (shard 2)."""
    folder = write_set(tmp_path / "real", 40)
    path = folder / "shard-000000.tar"
    samples = []
    with tarfile.open(path) as tar:
        for info in tar:
            key, ext = info.name.split(".", 1)
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][ext] = tar.extractfile(info).read()
    samples[3]["png"] = b"\x89PNG broken"
    with wds.TarWriter(str(path), encoder=False, mtime=0) as tar:
        for sample in samples:
            tar.write(sample)
    rehash(folder, "shard-000000.tar")  # so the broken PNG is found by decoding, not by hash
    truncate_at(folder / "shard-000002.tar", "real-0020.cls")
    return folder


def rehash(folder, name):
    """Make the manifest list a shard's current sha256 (as if written so)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for shard in manifest["shards"]:
        if shard["name"] == name:
            shard["sha256"] = sha256_file(folder / name)
            shard["bytes"] = (folder / name).stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))


def rewrite_shard(path, change):
    """Rewrite a PNG shard's samples through ``change(index, sample) -> sample``."""
    samples = []
    with tarfile.open(path) as tar:
        for info in tar:
            key, ext = info.name.split(".", 1)
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][ext] = tar.extractfile(info).read()
    with wds.TarWriter(str(path), encoder=False, mtime=0) as tar:
        for i, sample in enumerate(samples):
            tar.write(change(i, sample))


def test_corrupt_data_stops_training_by_default_naming_url_and_member(broken, tmp_path):
    # the truncated shard 2 fails its sha256, checked before it is parsed (issue 24)
    named = r"shard-00000[02]\.tar.*(real-0003|its sha256 .* differs)"
    with pytest.raises(ShardError, match=named):
        train_classifier(
            real=broken, synthetic=None, alpha=1.0, seed=0, config=CONFIG, out=tmp_path / "x"
        )


def test_skip_counts_what_it_skipped_and_keeps_batches_exact(broken, tmp_path):
    config = dataclasses.replace(CONFIG, on_error="skip", epochs=3)
    out = tmp_path / "run"
    train_classifier(real=broken, synthetic=None, alpha=1.0, seed=0, config=config, out=out)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["real_seen"] == 5 * 8 and r["synthetic_seen"] == 0 for r in log)
    assert sum(r["skipped_samples"] for r in log) >= 1  # the broken PNG, once per pass
    assert sum(r["skipped_shards"] for r in log) >= 1  # the truncated shard
    assert all(r["skipped_records"] == 0 for r in log)


def run_cli(*args):
    return CliRunner().invoke(get_cli(), ["train", *map(str, args)])


def test_cli_resume_is_explicit_and_never_overwrites(tmp_path):
    real = write_set(tmp_path / "real", 16)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"train": {**vars_of(CONFIG), "epochs": 1}}))
    common = ["--real", real, "--alpha", 1, "--out", tmp_path / "run", "--config", config]
    first = run_cli(*common, "--device", "cpu")
    assert first.exit_code == 0, first.output
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    again = run_cli(*common, "--device", "cpu")
    assert again.exit_code == 1
    assert "holds a finished run (1 epochs); nothing was overwritten" in again.output
    resumed = run_cli(*common, "--device", "cpu", "--resume")
    assert resumed.exit_code == 0 and "complete" in resumed.output
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def vars_of(config: TrainConfig) -> dict:
    keys = ("epochs", "batch_size", "num_workers", "crop_padding", "lr")
    return {key: getattr(config, key) for key in keys}


def test_sigkill_mid_epoch_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    """Killed at any step (checkpoints every 2 steps, epochs of 5), resumed at the next step
    with the batches the uninterrupted run had: same trace, same log sums, same weights."""
    real = write_set(tmp_path / "real", 40)
    epochs = 4
    settings = {**vars_of(CONFIG), "epochs": epochs, "checkpoint_every": 2, "trace": True}
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump({"train": settings}))
    out = tmp_path / "killed"
    args = ["--real", real, "--alpha", 1, "--out", out, "--config", config_file, "--device", "cpu"]
    process = subprocess.Popen(
        [str(BIN / "python"), "-m", "sio", "train", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # as this process: comparable weights
    )
    deadline = time.monotonic() + 90
    trace = out / "trace" / "rank-0.jsonl"
    while not (trace.is_file() and trace.read_text().count("\n") >= 7):  # into epoch 1
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(out)[1]["step"]
    assert 6 <= killed_at < epochs * 5, "the kill must land mid-run"
    resumed = run_cli(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    reference = tmp_path / "reference"
    config = TrainConfig(**settings)
    train_classifier(real=real, synthetic=None, alpha=1.0, seed=0, config=config, out=reference)
    (model_a, state_a), (model_b, state_b) = load_checkpoint(out), load_checkpoint(reference)
    assert state_a["step"] == state_b["step"] == epochs * 5 and state_a["complete"]
    assert trace.read_text() == (reference / "trace" / "rank-0.jsonl").read_text()
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    wanted = [json.loads(line) for line in (reference / "log.jsonl").read_text().splitlines()]
    node = ("images_per_s", "shard_reads", "shard_decodes", "shard_cached")  # the node's work
    for a, b in zip(lines, wanted, strict=True):
        for key in node:
            a.pop(key), b.pop(key)
        assert a == b
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_trace_lists_each_steps_sample_keys(tmp_path):
    real = write_set(tmp_path / "real", 24)
    config = dataclasses.replace(CONFIG, trace=True, epochs=2)
    train_classifier(real=real, synthetic=None, alpha=1.0, seed=0, config=config, out=tmp_path)
    lines = [
        json.loads(line)
        for line in (tmp_path / "trace" / "rank-0.jsonl").read_text().split("\n")
        if line
    ]
    assert [line["step"] for line in lines] == list(range(6))
    assert all(line["synthetic"] == [] and len(line["real"]) == 8 for line in lines)
    first_epoch = [key for line in lines[:3] for key in line["real"]]
    assert sorted(first_epoch) == [f"real-{i:04d}" for i in range(24)]  # alpha 1, N = 3 B


def corrupt(folder, shard, change):
    """Rewrite one shard of ``folder`` and list its new sha256: content the hash cannot catch."""
    rewrite_shard(folder / shard, change)
    rehash(folder, shard)
    return folder


def set_member(index, ext, value):
    def change(i, sample):
        return {**sample, ext: value} if i == index else sample

    return change


def test_label_outside_the_classes_is_named_and_skippable(tmp_path):
    folder = corrupt(
        write_set(tmp_path / "real", 24), "shard-000001.tar", set_member(2, "cls", b"7")
    )
    with pytest.raises(
        ShardError,
        match=r"shard-000001\.tar: sample real-0010: member cls holds class 7; the set has 2",
    ):
        train_classifier(
            real=folder, synthetic=None, alpha=1.0, seed=0, config=CONFIG, out=tmp_path / "a"
        )
    config = dataclasses.replace(CONFIG, on_error="skip")
    train_classifier(
        real=folder, synthetic=None, alpha=1.0, seed=0, config=config, out=tmp_path / "b"
    )
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_samples"] for r in log] == [1, 1]  # once per pass, whatever the workers
    assert all(r["real_seen"] == 24 for r in log)


def test_image_of_another_size_is_named(tmp_path):
    from sio.shardset import encode_png

    small = encode_png(np.zeros((6, 6), np.uint8))
    folder = corrupt(
        write_set(tmp_path / "real", 16), "shard-000000.tar", set_member(5, "png", small)
    )
    with pytest.raises(
        ShardError,
        match=r"shard-000000\.tar: sample real-0005: member png holds 1x6x6 images, "
        r"the manifest says 1x8x8",
    ):
        train_classifier(
            real=folder, synthetic=None, alpha=1.0, seed=0, config=CONFIG, out=tmp_path / "a"
        )


def test_a_replaced_shard_of_equal_count_fails_its_sha256(tmp_path):
    folder = write_set(tmp_path / "real", 24)
    (folder / "shard-000002.tar").write_bytes((folder / "shard-000000.tar").read_bytes())
    with pytest.raises(
        ShardError, match=r"shard-000002\.tar: its sha256 .* differs from the manifest's"
    ):
        train_classifier(
            real=folder, synthetic=None, alpha=1.0, seed=0, config=CONFIG, out=tmp_path / "a"
        )
    config = dataclasses.replace(CONFIG, on_error="skip")
    train_classifier(
        real=folder, synthetic=None, alpha=1.0, seed=0, config=config, out=tmp_path / "b"
    )
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_shards"] for r in log] == [1, 1] and all(r["real_seen"] == 24 for r in log)


def test_resume_with_another_real_set_is_refused_naming_both(tmp_path):
    first, other = write_set(tmp_path / "first", 16), write_set(tmp_path / "other", 24)
    config = dataclasses.replace(CONFIG, epochs=1)
    out = tmp_path / "run"
    train_classifier(real=first, synthetic=None, alpha=1.0, seed=0, config=config, out=out)
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(
        ValueError,
        match=r"real set .*first \(manifest sha256 [0-9a-f]{64}\), "
        r"not .*other \(manifest sha256 [0-9a-f]{64}\)",
    ):
        train_classifier(
            real=other, synthetic=None, alpha=1.0, seed=0, config=config, out=out, resume=True
        )
    assert (out / "checkpoint.pt").read_bytes() == before


def test_an_error_in_a_loader_process_shows_its_message_alone(broken, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"train": {**vars_of(CONFIG), "num_workers": 2}}))
    args = ["--real", broken, "--alpha", 1, "--out", tmp_path / "run", "--config", config]
    result = run_cli(*args, "--device", "cpu")
    assert result.exit_code == 1
    lines = [x for x in result.output.splitlines() if x.startswith("Error")]
    assert len(lines) == 1 and "shard-00000" in lines[0]
    assert "Traceback" not in result.output and "DataLoader" not in result.output
    assert "Traceback" in (tmp_path / "run" / "errors-rank-0.log").read_text()
    debug = run_cli(*args, "--device", "cpu", "--debug")
    assert debug.exit_code == 1 and "Traceback" in debug.output
