"""A served set that lists no sha256 or size (what ``sio serve`` publishes) whose shard body never
ends, or whose member claims 10^15 bytes: every reader stops at a bound and names the shard,
instead of reading (and holding) forever. Each test guards against a hang with a time limit."""

from __future__ import annotations

import http.server
import json
import threading

import numpy as np
import pytest

from sio.shardset import ShardError, encode_png, iter_samples, verify_shard_set
from sio.shardset.tario import MAX_MEMBER, tar_members
from sio.train import cache as node_cache

from .test_hostile_sets import Unsized, base256, member, refused

IMAGE = encode_png(np.zeros((8, 8), np.uint8))


def sample(index: int) -> bytes:
    key = b"k%08d" % index
    return (
        member(key + b".png", IMAGE)
        + member(key + b".cls", b"0")
        + member(key + b".json", json.dumps({"source": "real"}).encode())
    )


def manifest(count: int) -> dict:
    return {
        "format": "sio-shards/1",
        "kind": "real",
        "name": "endless",
        "image_size": [8, 8],
        "channels": 1,
        "num_samples": count,
        "class_names": ["a", "b"],
        "class_counts": [],
        "pixel_mean": [],
        "pixel_std": [],
        "shards": [
            {"name": "shard-000000.tar", "num_samples": count, "bytes": None, "sha256": None}
        ],
        "provenance": {},
        "sio_version": "0.1.0",
    }


class Endless(http.server.BaseHTTPRequestHandler):
    """``/endless/``: a manifest of 4 samples and a shard of valid samples that never ends;
    ``/huge/``: a shard whose first member claims 10^15 bytes, then zeros that never end."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.end_headers()  # no Content-Length: the body ends when the server says so
        if self.path.endswith("manifest.json"):
            self.wfile.write(json.dumps(manifest(4)).encode())
            return
        try:
            if self.path.startswith("/huge/"):
                self.wfile.write(member(b"k.png", b"", size_field=base256(10**15)))
                while True:
                    self.wfile.write(bytes(1 << 16))
            index = 0
            while True:
                self.wfile.write(sample(index))
                index += 1
        except OSError:  # the reader stopped and closed the connection
            pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_an_endless_shard_stops_at_the_listed_count_when_streamed(server):
    """``sio shards convert/verify`` and every streaming reader read such a shard forever."""
    for read in (lambda url: list(iter_samples(url)), verify_shard_set):
        message = refused(read, f"{server}/endless")
        assert "shard-000000.tar" in message, message


def test_an_endless_shard_read_whole_stops_at_the_shard_bound(server, monkeypatch):
    """Training read the whole body into a worker's memory (700 MB and rising)."""
    monkeypatch.setattr(node_cache, "MAX_SHARD_BYTES", 1 << 20)
    fetcher = node_cache.Fetcher(None, None, 5.0)
    message = refused(fetcher._fetch, f"{server}/endless/shard-000000.tar")
    assert "shard-000000.tar: more than 1,048,576 bytes" in message, message


def test_a_member_larger_than_any_in_a_stream_of_unknown_length_is_refused_at_once(server):
    """A worker reading a 10^15-byte member of a served shard grew to 12 GB and was killed."""
    message = refused(lambda url: list(iter_samples(url)), f"{server}/huge")
    assert "1000000000000000 bytes" in message, message
    stream = Unsized(member(b"k.png", b"", size_field=base256(MAX_MEMBER + 1)))
    with pytest.raises(ShardError, match="over the 1,073,741,824 a member may hold"):
        list(tar_members(stream, "s"))
