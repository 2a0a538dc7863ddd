"""The records encoding: conversion both ways (exact), reading and verifying it, streaming it
with exact composition, and resident mode's index-based batches."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from click.testing import CliRunner

from sio.cli import get_cli
from sio.core.files import sha256_file
from sio.shardset import (
    ShardError,
    ShardSetWriter,
    convert_shard_set,
    iter_batches,
    iter_samples,
    read_manifest,
    verify_shard_set,
)
from sio.shardset.tario import tar_members, tar_samples
from sio.train import load_checkpoint, train_classifier
from sio.train.config import TrainConfig
from sio.train.resident import ResidentBatches, load_resident
from sio.train.sources import LocatedSet
from sio.train.stream import MixedBatches, MixSpec, SharedEpoch, StreamLoader

SYN_BASE = 128  # synthetic image j is the constant 128 + j, real image i the constant i


pytestmark = pytest.mark.usefixtures("one_thread")


def write_set(folder, count, *, base=0, kind="real", channels=1, shard_size=16, size=(6, 5)):
    rng = np.random.default_rng(base)
    shape = size if channels == 1 else (*size, 3)
    with ShardSetWriter(
        folder,
        kind=kind,
        name=kind,
        image_size=size,
        channels=channels,
        class_names=("a", "b", "c"),
        shard_size=shard_size,
    ) as writer:
        for i in range(count):
            image = np.full(shape, base + i, np.uint8) if base else rng.integers(0, 256, shape)
            meta = {"source": kind, "index": i, "p": i / 7}
            writer.write(f"{kind}-{i:04d}", image.astype(np.uint8), i % 3, meta)
    return folder


@pytest.fixture(scope="module")
def png_set(tmp_path_factory):
    return write_set(tmp_path_factory.mktemp("png") / "set", 37, channels=3)


def shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_png_records_png_round_trip_is_byte_identical(tmp_path, png_set):
    records = convert_shard_set(png_set, tmp_path / "rec", "records", record_size=5)
    assert records.encoding == "records"
    assert [s.num_samples for s in records.shards] == [16, 16, 5]
    assert json.loads((tmp_path / "rec" / "manifest.json").read_text())["encoding"] == "records"
    assert verify_shard_set(tmp_path / "rec") == 37
    back = convert_shard_set(tmp_path / "rec", tmp_path / "png", "png")
    assert shard_bytes(tmp_path / "png") == shard_bytes(png_set)
    assert (tmp_path / "png" / "manifest.json").read_text() == (
        png_set / "manifest.json"
    ).read_text()
    assert back == read_manifest(png_set)
    again = convert_shard_set(tmp_path / "png", tmp_path / "rec2", "records", record_size=5)
    assert shard_bytes(tmp_path / "rec2") == shard_bytes(tmp_path / "rec")
    assert again == records


def test_readers_are_the_same_for_both_encodings(tmp_path, png_set):
    convert_shard_set(png_set, tmp_path / "rec", "records", record_size=4)
    for (a, la, ma), (b, lb, mb) in zip(
        iter_samples(png_set), iter_samples(tmp_path / "rec"), strict=True
    ):
        assert a.shape == (3, 6, 5) and np.array_equal(a, b)
        assert la == lb and ma == mb
    for (a, la), (b, lb) in zip(
        iter_batches(png_set, 8), iter_batches(tmp_path / "rec", 8), strict=True
    ):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_record_members_and_keys(tmp_path, png_set):
    convert_shard_set(png_set, tmp_path / "rec", "records", record_size=10)
    samples = list(tar_samples(str(tmp_path / "rec" / "shard-000000.tar")))
    assert [s["__key__"] for s in samples] == ["rec-000000", "rec-000001"]
    assert set(samples[0]) - {"__key__", "__url__"} == {"images.npy", "labels.npy", "meta.json"}
    images = np.load(io.BytesIO(samples[1]["images.npy"]))
    assert images.shape == (6, 3, 6, 5) and images.dtype == np.uint8
    meta = json.loads(samples[1]["meta.json"])
    assert meta["keys"][0] == "real-0010" and meta["provenance"][0]["index"] == 10


def test_own_tar_reader_groups_as_webdataset_does(png_set):
    url = str(png_set / "shard-000001.tar")
    ours = list(tar_samples(url))
    theirs = list(wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples()))
    assert len(ours) == len(theirs) == 16
    for a, b in zip(ours, theirs, strict=True):
        assert a == {k: v for k, v in b.items() if k != "__local_path__"}


@pytest.mark.parametrize("form", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_own_tar_reader_reads_what_tarfile_reads(tmp_path, form):
    """Long names (PAX path, GNU long name, ustar prefix), float mtimes, non-ASCII names,
    directories and empty members."""
    path, long_dir = tmp_path / "x.tar", "d" * 60 + "/" + "e" * 60
    members = {
        f"{long_dir}/k1.png": b"a" * 700,
        f"{long_dir}/k1.cls": b"",
        "k2.json": b"{}",
        "k\u00e9.json" if form != tarfile.USTAR_FORMAT else "k3.json": b"x" * 512,
    }
    with tarfile.open(path, "w", format=form) as tar:
        directory = tarfile.TarInfo("a-directory")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5
            tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as stream:
        assert dict(tar_members(stream, str(path))) == members


def rewrite(path, samples):
    with wds.TarWriter(str(path), encoder=False, mtime=0) as tar:
        for sample in samples:
            tar.write(sample)


def test_corrupt_record_is_named_and_verify_checks_members(tmp_path, png_set):
    rec = tmp_path / "rec"
    convert_shard_set(png_set, rec, "records", record_size=8)
    path = rec / "shard-000001.tar"
    samples = list(tar_samples(str(path)))
    samples[1]["images.npy"] = b"\x93NUMPY garbage"

    def rewrite_listed():  # the manifest lists the new bytes: only the members are wrong
        rewrite(path, [{k: v for k, v in s.items() if k != "__url__"} for s in samples])
        manifest = json.loads((rec / "manifest.json").read_text())
        manifest["shards"][1].update(bytes=path.stat().st_size, sha256=sha256_file(path))
        (rec / "manifest.json").write_text(json.dumps(manifest))

    rewrite_listed()
    with pytest.raises(ShardError, match=r"shard-000001\.tar: record rec-000001: member images"):
        list(iter_samples(rec))
    del samples[0]["meta.json"]
    rewrite_listed()
    with pytest.raises(ShardError, match=r"shard-000001\.tar: sample rec-000000 has members"):
        verify_shard_set(rec)


def test_cli_convert_and_verify(tmp_path, png_set):
    runner = CliRunner()
    out = tmp_path / "rec"
    result = runner.invoke(
        get_cli(), ["shards", "convert", str(png_set), str(out), "--encoding", "records"]
    )
    assert result.exit_code == 0, result.output
    assert "37 samples in 3 shards, encoding records" in result.output
    result = runner.invoke(get_cli(), ["shards", "verify", str(out)])
    assert result.exit_code == 0 and "ok, 37 samples" in result.output
    result = runner.invoke(
        get_cli(), ["shards", "convert", str(png_set), str(out), "--encoding", "records"]
    )
    assert result.exit_code == 1 and "already" in result.output


# --- streaming records and resident batches -----------------------------------------------


@pytest.fixture(scope="module")
def constant_sets(tmp_path_factory):
    """Real (60) and synthetic (40) constant images, png and records (records of 7)."""
    root = tmp_path_factory.mktemp("constant")
    sets = {}
    for kind, count, base in (("real", 60, 1), ("synthetic", 40, SYN_BASE)):
        png = write_set(root / f"{kind}-png", count, base=base, kind=kind, size=(8, 8))
        sets[kind, "png"] = png
        sets[kind, "records"] = root / f"{kind}-records"
        convert_shard_set(png, sets[kind, "records"], "records", record_size=7)
    return sets


def spec_for(sets, encoding, n_real=6, n_syn=2, steps=7, **changes):
    real, synthetic = (LocatedSet.open(sets[k, encoding]) for k in ("real", "synthetic"))
    spec = MixSpec(
        real_urls=real.urls,
        synthetic_urls=synthetic.urls,
        n_real=n_real,
        n_syn=n_syn,
        channels=1,
        image_size=(8, 8),
        steps_per_epoch=steps,
        seed=0,
        shuffle_window=20,
        encodings=(("real", encoding), ("synthetic", encoding)),
        expected=real.expected + synthetic.expected,
    )
    return dataclasses.replace(spec, **changes)


def values_of(batch):
    """The constant of each image, and whether each batch entry is exact."""
    values = batch["images"][:, 0, 0, 0].long()
    is_syn = values >= SYN_BASE
    assert torch.equal(batch["is_synthetic"], is_syn)
    ids = torch.where(is_syn, values - SYN_BASE, values - 1)
    assert torch.equal(batch["labels"], ids % 3)
    return values


def test_records_stream_is_exact_through_workers(constant_sets):
    spec = spec_for(constant_sets, "records")
    batches = list(StreamLoader(MixedBatches(spec, SharedEpoch(0)), num_workers=2))
    assert [b["step"] for b in batches] == list(range(7))
    seen = set()
    for batch in batches:
        values = values_of(batch)
        assert int(batch["is_synthetic"].sum()) == 2 and len(values) == 8
        assert batch["faults"] == []
        # each image's key is its sample key from the PNG set (kept in meta.json): unique
        assert all(k.startswith(("real-", "synthetic-")) for k in batch["keys"])
        assert len(set(batch["keys"])) == len(batch["keys"]) == 8
        seen |= set(values.tolist())
    assert len(seen) > 25  # records are read in a random order, not record by record


def resident_batches(sets, encoding, rank=0, counts=None, epoch=0, steps=7):
    counts = counts or {"real": (6,), "synthetic": (2,)}
    spec = spec_for(
        sets, encoding, counts["real"][rank], counts["synthetic"][rank], steps, rank=rank
    )
    data = {k: load_resident(LocatedSet.open(sets[k, encoding]), "cpu") for k in counts}
    return list(ResidentBatches(spec, SharedEpoch(epoch), data, counts))


def test_resident_batches_are_exact_and_cover_each_pass(constant_sets):
    batches = resident_batches(constant_sets, "png", steps=10)
    real = [v for b in batches for v in values_of(b).tolist() if v < SYN_BASE]
    # 10 steps x 6 real = 60 = one pass over the real set: each image exactly once
    assert sorted(real) == list(range(1, 61))
    synthetic = [v for b in batches for v in values_of(b).tolist() if v >= SYN_BASE]
    assert len(synthetic) == len(set(synthetic)) == 20  # half a pass over 40: no repeats
    assert [b["step"] for b in batches] == list(range(10))
    same = resident_batches(constant_sets, "records", steps=10)  # the encoding does not matter
    for a, b in zip(batches, same, strict=True):
        assert torch.equal(a["images"], b["images"])


def test_resident_ranks_split_the_global_batch(constant_sets):
    counts = {"real": (3, 4), "synthetic": (1, 2)}  # rank_share of 7 real + 3 synthetic
    ranks = [resident_batches(constant_sets, "png", r, counts, steps=6) for r in (0, 1)]
    real_seen = []
    for step in range(6):
        parts = [values_of(ranks[r][step]) for r in (0, 1)]
        assert [int((p < SYN_BASE).sum()) for p in parts] == [3, 4]
        both = torch.cat(parts)
        assert int((both >= SYN_BASE).sum()) == 3 and len(set(both.tolist())) == 10
        real_seen += [v for v in both.tolist() if v < SYN_BASE]
    assert sorted(real_seen) == sorted(set(real_seen)) and len(real_seen) == 42


def test_resident_epochs_continue_the_pass_and_repeat_on_a_new_object(constant_sets):
    first = resident_batches(constant_sets, "png", epoch=0, steps=5)
    second = resident_batches(constant_sets, "png", epoch=1, steps=5)
    real = [v for b in first + second for v in values_of(b).tolist() if v < SYN_BASE]
    assert sorted(real) == list(range(1, 61))  # epochs of 30 real images: one pass in two
    again = resident_batches(constant_sets, "png", epoch=1, steps=5)
    for a, b in zip(second, again, strict=True):
        assert a["step"] == b["step"] and torch.equal(a["images"], b["images"])


def test_resident_set_too_big_is_refused(constant_sets, monkeypatch):
    from sio.train import resident

    monkeypatch.setattr(resident, "_available_bytes", lambda device: (1000, 0.8, "memory"))
    with pytest.raises(ValueError, match="do not fit.*resident: false"):
        load_resident(LocatedSet.open(constant_sets["real", "png"]), "cpu")


def test_resident_training_end_to_end_with_a_set_epoch_length(constant_sets, tmp_path):
    config = TrainConfig(
        epochs=2, batch_size=8, resident=True, steps_per_epoch=4, crop_padding=1, lr=0.05
    )
    out = tmp_path / "run"
    train_classifier(
        real=constant_sets["real", "records"],
        synthetic=constant_sets["synthetic", "png"],
        alpha=0.75,
        seed=0,
        config=config,
        out=out,
    )
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["steps"], r["real_seen"], r["synthetic_seen"]) for r in log] == [(4, 24, 8)] * 2
    assert load_checkpoint(out)[1]["step"] == 8
