"""Shard sets over HTTP and S3 (a local HTTP server and a local S3 endpoint, loopback only):
manifests, verify, convert, and training from URLs with the same batches as from a folder;
dropped connections resume with ranged requests; missing objects are named."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sio.core import storage
from sio.core.storage import ResumingStream, TransientError, open_url
from sio.shardset import (
    ShardError,
    ShardSetWriter,
    convert_shard_set,
    iter_samples,
    read_manifest,
    verify_shard_set,
)
from sio.train import load_checkpoint, train_classifier
from sio.train.config import TrainConfig

CONFIG = TrainConfig(epochs=2, batch_size=8, num_workers=0, crop_padding=1, lr=0.05)


pytestmark = pytest.mark.usefixtures("one_thread")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` support; paths in ``drop_once`` send only that
    many bytes of their first response and then close the connection."""

    drop_once: dict[str, int] = {}
    ranged: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.ranged.append(self.path)
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.drop_once.pop(self.path, None)
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.close_connection = True


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    rng = np.random.default_rng(0)
    for kind, count in (("real", 40), ("synthetic", 24)):
        with ShardSetWriter(
            root / kind,
            kind=kind,
            name=kind,
            image_size=(8, 8),
            channels=1,
            class_names=("a", "b"),
            shard_size=8,
        ) as writer:
            for i in range(count):
                image = rng.integers(0, 60, (8, 8)) + 150 * (i % 2)
                writer.write(f"{kind}-{i:04d}", image.astype(np.uint8), i % 2, {"i": i})
    return root


@pytest.fixture(scope="module")
def http_root(sets):
    handler = functools.partial(RangeHandler, directory=str(sets))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def upload(client, folder: Path, bucket: str, prefix: str) -> str:
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return f"s3://{bucket}/{prefix}"


def same_weights(a, b) -> bool:
    state_a, state_b = load_checkpoint(a)[0].state_dict(), load_checkpoint(b)[0].state_dict()
    return all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.fixture(scope="module")
def local_run(sets, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    train_classifier(
        real=sets / "real", synthetic=sets / "synthetic", alpha=0.75, seed=0, config=CONFIG, out=out
    )
    return out


def test_http_manifest_verify_and_samples(sets, http_root):
    assert read_manifest(f"{http_root}/real") == read_manifest(sets / "real")
    assert verify_shard_set(f"{http_root}/real/") == 40
    for (a, la, ma), (b, lb, mb) in zip(
        iter_samples(sets / "synthetic"), iter_samples(f"{http_root}/synthetic"), strict=True
    ):
        assert np.array_equal(a, b) and la == lb and ma == mb


def test_train_from_http_gives_the_local_batches(sets, http_root, local_run, tmp_path):
    out = tmp_path / "run"
    real, synthetic = f"{http_root}/real", f"{http_root}/synthetic"
    train_classifier(real=real, synthetic=synthetic, alpha=0.75, seed=0, config=CONFIG, out=out)
    assert same_weights(out, local_run)  # data order does not depend on where shards live
    assert (out / "log.jsonl").read_text() != ""


def test_dropped_connection_resumes_with_a_range_request(sets, http_root):
    RangeHandler.ranged.clear()
    RangeHandler.drop_once["/real/shard-000002.tar"] = 3000
    remote = list(iter_samples(f"{http_root}/real"))
    assert "/real/shard-000002.tar" in RangeHandler.ranged
    local = list(iter_samples(sets / "real"))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(remote, local, strict=True))


def test_missing_http_objects_are_named(http_root):
    with pytest.raises(ShardError, match=r"nothing/manifest\.json: no manifest"):
        read_manifest(f"{http_root}/nothing")
    with pytest.raises(FileNotFoundError, match="404"):
        open_url(f"{http_root}/real/shard-000099.tar")


def shard_bytes(*folders: Path) -> int:
    return sum(p.stat().st_size for folder in folders for p in folder.glob("shard-*.tar"))


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def s3_sets(sets, seaweed, tmp_path_factory):
    """The sets in a SeaweedFS bucket, PNG and (synthetic) records."""
    import boto3

    client = boto3.client("s3", endpoint_url=seaweed.endpoint)
    client.create_bucket(Bucket="data")
    real = upload(client, sets / "real", "data", "sets/real")
    synthetic = upload(client, sets / "synthetic", "data", "sets/synthetic")
    records = "s3://data/sets/synthetic-records"
    stage = tmp_path_factory.mktemp("stage")
    convert_shard_set(synthetic, records, "records", record_size=5, staging=stage)
    return real, synthetic, records


def test_s3_convert_verify_and_train_through_workers(s3_sets, local_run, tmp_path):
    real, synthetic, records = s3_sets
    assert verify_shard_set(real) == 40
    assert verify_shard_set(records) == 24 and read_manifest(records).encoding == "records"
    out = tmp_path / "run"
    config = dataclasses.replace(CONFIG, num_workers=2, cache_dir=str(tmp_path / "cache"))
    train_classifier(real=real, synthetic=synthetic, alpha=0.75, seed=0, config=config, out=out)
    assert same_weights(out, local_run)  # boto3 in forked workers, the batches of a local run
    out = tmp_path / "records-run"
    train_classifier(real=real, synthetic=records, alpha=0.75, seed=0, config=CONFIG, out=out)
    log = (out / "log.jsonl").read_text().splitlines()
    assert len(log) == 2 and '"synthetic_seen": 10' in log[0]
    with pytest.raises(ShardError, match=r"s3://data/nothing/manifest\.json: no manifest"):
        read_manifest("s3://data/nothing")


def test_the_cache_fetches_each_shard_once_per_node(sets, s3_sets, tmp_path):
    """Two workers and a second run on one cache folder: every shard fetched once in all."""
    real, synthetic, _ = s3_sets
    cache = tmp_path / "cache"
    config = dataclasses.replace(CONFIG, num_workers=2, epochs=3, cache_dir=str(cache))
    for run in ("a", "b"):
        train_classifier(
            real=real, synthetic=synthetic, alpha=0.75, seed=0, config=config, out=tmp_path / run
        )
    fetched = [[r["bytes_fetched"] for r in read_log(tmp_path / run)] for run in ("a", "b")]
    assert sum(fetched[0]) == shard_bytes(sets / "real", sets / "synthetic")
    assert fetched[0][-1] == 0 and fetched[1] == [0, 0, 0]  # nothing after the first pass
    assert same_weights(tmp_path / "a", tmp_path / "b")
    # over the limit, the least recently used shards go; the set trains the same
    limit = 70_000  # two of these shards (30 kB each)
    small = dataclasses.replace(config, cache_dir=str(tmp_path / "small"), cache_limit=limit)
    train_classifier(
        real=real, synthetic=synthetic, alpha=0.75, seed=0, config=small, out=tmp_path / "c"
    )
    assert 0 < sum(p.stat().st_size for p in (tmp_path / "small").glob("*.tar")) <= limit
    assert sum(r["bytes_fetched"] for r in read_log(tmp_path / "c")) > sum(fetched[0])
    assert same_weights(tmp_path / "a", tmp_path / "c")


def serve(root: Path, port: int = 0):
    handler = functools.partial(RangeHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_http_server_down_mid_epoch_is_waited_for_never_skipped(
    sets, local_run, tmp_path, monkeypatch, capfd
):
    """The HTTP server goes away once the first shard is cached, for 2 s: "waiting for" lines,
    nothing skipped, each shard fetched once, the local run's weights."""
    from sio.train import trainer

    server = serve(sets)
    port = server.server_address[1]
    root = f"http://127.0.0.1:{port}"
    cache = tmp_path / "cache"
    config = dataclasses.replace(CONFIG, cache_dir=str(cache), read_timeout=60.0)
    step = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda *a: (time.sleep(0.1), step(*a))[1])
    servers = [server]

    def outage():
        while not list(cache.glob("*.tar")):
            time.sleep(0.002)
        server.shutdown()
        server.server_close()
        time.sleep(2)
        servers.append(serve(sets, port))

    thread = threading.Thread(target=outage)
    thread.start()
    out = tmp_path / "run"
    real, synthetic = f"{root}/real", f"{root}/synthetic"
    train_classifier(real=real, synthetic=synthetic, alpha=0.75, seed=0, config=config, out=out)
    thread.join()
    servers[-1].shutdown()
    assert re.search(rf"waiting for {root}/\S+ \(attempt 1\)", capfd.readouterr().err)
    log = read_log(out)
    assert all(r[f"skipped_{k}"] == 0 for r in log for k in ("samples", "records", "shards"))
    assert sum(r["bytes_fetched"] for r in log) == shard_bytes(sets / "real", sets / "synthetic")
    assert same_weights(out, local_run)


class FlakyBody:
    """A response body that fails once after ``cut`` bytes, like a reset connection."""

    def __init__(self, data: bytes, cut: int | None, error):
        self.data, self.cut, self.error, self.pos = data, cut, error, 0

    def read(self, size: int) -> bytes:
        if self.cut is not None and self.pos >= self.cut:
            raise self.error
        end = self.pos + size if self.cut is None else min(self.pos + size, self.cut)
        chunk = self.data[self.pos : end]
        self.pos += len(chunk)
        return chunk

    def close(self):
        pass


def test_resuming_stream_retries_transient_errors_from_the_current_byte(monkeypatch):
    from botocore.exceptions import ResponseStreamingError

    monkeypatch.setenv("SIO_READ_ATTEMPTS", "3")
    data = bytes(range(256)) * 64
    opened = []

    def opener(offset):
        opened.append(offset)
        cut = 1000 if len(opened) == 1 else None
        return FlakyBody(data[offset:], cut, ResponseStreamingError(error="reset")), len(data)

    stream = ResumingStream("s3://b/k", opener, (ResponseStreamingError,))
    assert stream.read() == data and opened == [0, 1000]

    def stuck(offset):  # 10 bytes, then no progress at all: attempts run out, URL named
        return FlakyBody(data[offset:], 0 if offset else 10, TransientError("closed")), len(data)

    with pytest.raises(OSError, match=r"s3://b/k: reading at byte 10 failed 3 times"):
        ResumingStream("s3://b/k", stuck, (TransientError,)).read()


def test_a_refusal_is_raised_at_once_not_waited_out():
    """HTTP 403 (credentials, permissions) is no outage: fetch_bytes raises it on the first
    answer instead of retrying for the whole read timeout."""

    class Forbidden(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_error(403, "Forbidden")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    said = []
    start = time.monotonic()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shard-000000.tar"
        with pytest.raises(storage.RefusedError, match="HTTP 403"):
            storage.fetch_bytes(url, timeout_s=60, say=said.append)
    finally:
        server.shutdown()
    assert said == [] and time.monotonic() - start < 10
