"""The decoded shard cache (issue 25): batches bitwise those of the loader before it (a stored
trace), each shard read, checked and decoded once per node whatever the ranks and workers, and
its faults (a cut, corrupt or foreign cache file, a full disk, a writer killed mid-write, an
unusable cache_dir, a hostile sha256) named and survived."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import sio.train.rowcache as rowcache
from sio.core.files import stale_temporaries
from sio.shardset import ShardError, convert_shard_set, shard_urls
from sio.train import train_classifier
from sio.train.cache import CacheError, ShardCache
from sio.train.config import TrainConfig
from sio.train.loop import SHARD_COUNTS
from sio.train.rowcache import open_rows
from sio.train.stream import MixedBatches, SharedEpoch, StreamLoader

from .loader_trace import FIXTURE, batch_line, spec_of, trace, write_png, write_sets
from .shardsets import grey_writer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_sets(tmp_path_factory.mktemp("trace-sets"))


def test_the_loader_gives_the_stored_trace_bitwise(sets, tmp_path):
    expected = json.loads(FIXTURE.read_text())
    cold = trace(sets, cache_dir=str(tmp_path / "cache"))
    assert cold == expected
    warm = trace(sets, cache_dir=str(tmp_path / "cache"))  # every shard from the decoded cache
    assert warm == expected
    assert trace(sets, decoded_cache=False) == expected


# --- once per node, whatever the ranks and workers ----------------------------------------------


def run_node(sets, case, world, workers, cache, epochs=2):
    """Per epoch: (per global step: real keys, synthetic keys, {key: sha256 of its augmented
    image}), and the shard counters summed over the ranks and workers."""
    specs = [spec_of(sets, case, r, world, cache_dir=str(cache)) for r in range(world)]
    epoch = SharedEpoch()
    loaders = [StreamLoader(MixedBatches(s, epoch), num_workers=workers) for s in specs]
    out = []
    for e in range(epochs):
        epoch.set(e)
        per_rank = [list(loader) for loader in loaders]
        counts = {k: sum(b[k] for r in per_rank for b in r) for k in SHARD_COUNTS}
        steps = []
        for batches in zip(*per_rank, strict=True):
            images = {}
            for b in batches:
                for key, image in zip(b["keys"], b["images"], strict=True):
                    images[key] = hashlib.sha256(image.numpy().tobytes()).hexdigest()
            real = [k for b in batches for k in b["ids"]["real"]]
            synthetic = [k for b in batches for k in b["ids"]["synthetic"]]
            steps.append((real, synthetic, images))
        out.append((steps, counts))
    return out


# (real images, synthetic images, their shard sizes): primes, fewer shards than workers x ranks
PROPERTY_SETS = [(31, 17, 6, 5, 0), (13, 7, 13, 7, 5), (29, 11, 4, 3, 9)]


@pytest.mark.parametrize("sizes", PROPERTY_SETS)
def test_each_shard_is_decoded_once_per_node_for_any_ranks_and_workers(tmp_path, sizes):
    n_real, n_syn, real_shard, syn_shard, seed = sizes
    write_png(tmp_path / "real", n_real, "real", seed, real_shard)
    write_png(tmp_path / "syn", n_syn, "synthetic", seed + 1, syn_shard)
    convert_shard_set(tmp_path / "syn", tmp_path / "syn-rec", "records", record_size=2)
    real, syn = tuple(shard_urls(tmp_path / "real")), tuple(shard_urls(tmp_path / "syn-rec"))
    shard_size = {"real": real_shard, "synthetic": syn_shard}
    reference = None
    for world, workers in itertools.product((1, 2), (0, 1, 3)):
        cache = tmp_path / f"cache-{world}-{workers}"
        case = ("a", "b", seed, 7, 0.71, 6, 12)  # odd B, two pass groups
        node = run_node({"a": real, "b": syn}, case, world, workers, cache)
        seen: set = set()
        for steps, counts in node:
            touched = {
                (part, int(key.rsplit("-", 1)[1]) // shard_size[part])
                for real_keys, syn_keys, _ in steps
                for part, keys in (("real", real_keys), ("synthetic", syn_keys))
                for key in keys
            }
            assert counts["shard_decodes"] == len(touched - seen), (world, workers, sizes)
            assert counts["shard_reads"] == counts["shard_decodes"], (world, workers, sizes)
            seen |= touched
        assert seen and len(seen) <= len(real) + len(syn)
        steps = [steps for steps, _ in node]
        reference = reference or steps
        assert steps == reference, (world, workers, sizes)


# --- faults -------------------------------------------------------------------------------------


def one_epoch(sets, cache, steps=9, **changes):
    """(the traced batches of one epoch of the trace's first case, the shard counters)."""
    spec = spec_of(sets, "png+records", 0, 1, cache_dir=str(cache), **changes)
    batches = MixedBatches(spec, SharedEpoch())
    out = [batches.batch(step) for step in range(steps)]
    return [batch_line(b) for b in out], {k: sum(b[k] for b in out) for k in SHARD_COUNTS}


@pytest.fixture(scope="module")
def reference(sets):
    return one_epoch(sets, None, decoded_cache=False)[0]


@pytest.fixture
def new_process(monkeypatch):
    """As in a new process: no cache file verified yet."""
    monkeypatch.setattr(rowcache, "_VERIFIED", set())


def damage(path: Path, how: str) -> str:
    data = path.read_bytes()
    if how == "cut":
        path.write_bytes(data[: len(data) // 2])
        return "cut short"
    if how == "corrupt":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
        return "checksum (corrupt)"
    path.write_bytes(data.replace(b'"format": 1', b'"format": 7', 1))  # another sio's file
    return "format 7; this sio writes format 1"


@pytest.mark.parametrize("how", ["cut", "corrupt", "format"])
def test_a_cut_corrupt_or_foreign_cache_file_is_rebuilt_with_one_warning(
    sets, reference, tmp_path, capsys, monkeypatch, how
):
    cache = tmp_path / "cache"
    assert one_epoch(sets, cache)[0] == reference
    victim = sorted(cache.glob("*.rows"))[0]
    reason = damage(victim, how)
    capsys.readouterr()
    monkeypatch.setattr(rowcache, "_VERIFIED", set())  # a new process
    again, counts = one_epoch(sets, cache)
    assert again == reference
    assert counts["shard_decodes"] == 1  # the damaged one, decoded again
    warnings = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(warnings) == 1 and str(victim) in warnings[0] and reason in warnings[0]
    assert len(open_rows(victim, victim.name.split(".")[0]).keys)  # rebuilt, whole


def test_a_full_disk_leaves_no_cache_file_and_training_goes_on(
    sets, reference, tmp_path, capsys, monkeypatch
):
    def full(handle, chunk):
        handle.write(chunk[: len(chunk) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rowcache, "_write_chunk", full)
    cache = tmp_path / "cache"
    batches, counts = one_epoch(sets, cache)
    assert batches == reference and counts["shard_cached"] == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "decoded shards" in line]
    assert len(said) == 1 and str(cache) in said[0] and "No space left on device" in said[0]
    assert not list(cache.glob("*.rows")) and not stale_temporaries(cache)


CHILD = """
import sys, json
sys.path.insert(0, sys.argv[3])
from loader_trace import spec_of
from sio.train import rowcache
from sio.train.stream import MixedBatches, SharedEpoch
write, written = rowcache._write_chunk, []
def slow(handle, chunk):  # the header, its padding, then half the rows: say so, wait for the kill
    if len(written) == 2:
        chunk = chunk[: len(chunk) // 2]
    write(handle, chunk)
    written.append(len(chunk))
    if len(written) == 3:
        handle.flush()
        print("mid-write", flush=True)
        sys.stdin.read()
rowcache._write_chunk = slow
spec = spec_of(json.loads(sys.argv[1]), "png+records", 0, 1, cache_dir=sys.argv[2])
MixedBatches(spec, SharedEpoch()).batch(0)
"""


def test_a_writer_killed_mid_write_leaves_the_others_unaffected(sets, reference, tmp_path):
    """A child training holds a shard's lock, half its rows written, when it is SIGKILLed; the
    other training (a thread here, started before the kill: it waits on that lock) gets its
    batches, and removes the temporary the killed writer left."""
    cache = tmp_path / "cache"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(sets), str(cache), str(Path(__file__).parent)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    other: dict = {}
    thread = threading.Thread(target=lambda: other.update(got=one_epoch(sets, cache)))
    try:
        assert child.stdout.readline() == b"mid-write\n"  # EOF (b"") if it died before
        (temporary,) = stale_temporaries(cache, "*.rows.*")
        assert not list(cache.glob("*.rows"))  # nothing under a final name
        thread.start()
        child.send_signal(signal.SIGKILL)
        assert child.wait(60) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
        thread.join(120)
    batches, counts = other["got"]
    assert batches == reference and counts["shard_decodes"] > 0
    assert not temporary.exists() and not stale_temporaries(cache)  # cleaned by the next writer
    for path in cache.glob("*.rows"):
        open_rows(path, path.name.split(".")[0])  # every published file whole


def test_an_unusable_cache_dir_is_one_line_naming_it_and_the_setting(sets, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    for folder in (tmp_path / "file" / "cache", Path("/proc/sio-cache")):
        spec = spec_of(sets, "png+records", 0, 1, cache_dir=str(folder))
        with pytest.raises(CacheError) as error:
            MixedBatches(spec, SharedEpoch())
        message = str(error.value)
        assert "\n" not in message and str(folder) in message and "train.cache_dir" in message


def test_a_hostile_sha256_never_becomes_a_path(sets, tmp_path):
    victim = tmp_path / "victim" / "important.tar"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    cache = tmp_path / "a" / "b" / "cache"
    for sha in ("../../../victim/important", "A" * 64, "0" * 63):
        hashes = tuple((url, sha) for url in sets["real-png"])
        with pytest.raises(ShardError, match="not 64 lowercase hex digits"):
            one_epoch(sets, cache, steps=1, hashes=hashes)
        with pytest.raises(ShardError, match="not 64 lowercase hex digits"):
            ShardCache(cache).path(sha)
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["important.tar"]


def test_a_local_shard_replaced_after_it_was_cached_fails_its_sha256(sets, tmp_path):
    root = tmp_path / "set"
    shutil.copytree(Path(sets["real-png"][0]).parent, root)
    mine = {**sets, "real-png": tuple(str(root / Path(u).name) for u in sets["real-png"])}
    one_epoch(mine, tmp_path / "cache")
    shard = root / "shard-000002.tar"
    shard.write_bytes((root / "shard-000000.tar").read_bytes())
    with pytest.raises(ShardError, match=r"shard-000002\.tar: its sha256 .* differs"):
        one_epoch(mine, tmp_path / "cache")


def test_beyond_the_cache_limit_the_least_recently_used_go(sets, reference, tmp_path):
    cache = tmp_path / "cache"
    one_epoch(sets, cache)
    sizes = sorted(p.stat().st_size for p in cache.glob("*.rows"))
    limit = sum(sizes[:3])
    small = tmp_path / "small"
    first, counts = one_epoch(sets, small, cache_limit=limit)
    second, again = one_epoch(sets, small, cache_limit=limit)
    assert first == second == reference
    assert again["shard_decodes"] > 0  # evicted, decoded again
    assert sum(p.stat().st_size for p in small.glob("*.rows")) <= limit


def test_the_log_counts_shards_and_the_summary_names_the_cache(tmp_path, capsys):
    with grey_writer(tmp_path / "real", "real", ("a", "b"), 8) as writer:
        for i in range(20):  # 3 shards
            writer.write(f"real-{i:04d}", np.full((8, 8), 9 * i, np.uint8), i % 2, {})
    config = TrainConfig(epochs=3, batch_size=8, num_workers=2, lr=0.05, cache_dir=str(tmp_path))
    out = tmp_path / "run"
    real = tmp_path / "real"
    train_classifier(real=real, synthetic=None, alpha=1.0, seed=0, config=config, out=out)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["shard_decodes"] for r in log] == [3, 0, 0]
    assert [r["shard_reads"] for r in log] == [3, 0, 0]
    cached = sum(r["shard_cached"] for r in log)
    assert cached > 0
    summary = f", shards 3 read, 3 decoded, {cached} from the decoded cache, checkpoint"
    assert summary in capsys.readouterr().out


def test_resident_sets_load_through_the_decoded_cache(sets, tmp_path, monkeypatch):
    """Given the run's fetcher, resident mode maps the decoded cache: the same images, labels
    and keys as decoding the shards, and a second load decodes nothing."""
    import torch

    from sio.train.cache import Fetcher
    from sio.train.resident import load_resident
    from sio.train.sources import LocatedSet

    source = LocatedSet.open(Path(sets["real-png"][0]).parent)
    decoded_here = load_resident(source, "cpu")  # no fetcher: decoded in this process
    cache = str(tmp_path / "cache")
    first = load_resident(source, "cpu", Fetcher(cache, None, 60.0))
    assert len(list((tmp_path / "cache").glob("*.rows"))) == len(source.urls)

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(rowcache, "decode_shard", no_decoding)
    again = load_resident(source, "cpu", Fetcher(cache, None, 60.0))
    for loaded in (first, again):
        assert torch.equal(loaded.images, decoded_here.images)
        assert torch.equal(loaded.labels, decoded_here.labels)
        assert loaded.keys == decoded_here.keys
