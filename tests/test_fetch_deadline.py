"""A server that trickles a shard (a byte at a time, never idle long enough for the per-read
timeout) is cut off at the fetch deadline, retried as a transport fault and said, until the read
timeout ends the wait with a TransportError naming the URL."""

from __future__ import annotations

import http.server
import re
import threading

import pytest

from sio.core.storage import TransportError
from sio.train.cache import Fetcher
from sio.train.spec import MixSpec, check_spec

SHARD_BYTES = 100_000  # at the trickle's pace this takes well over a minute


class Trickle(http.server.BaseHTTPRequestHandler):
    """Announces ``SHARD_BYTES`` bytes and sends one every 20 ms until the client goes away
    or the test ends (``stop``); counts its requests."""

    stop = threading.Event()
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(SHARD_BYTES))
        self.end_headers()
        try:
            for _ in range(SHARD_BYTES):
                self.wfile.write(b"x")
                self.wfile.flush()
                if self.stop.wait(0.02):
                    return
        except (BrokenPipeError, ConnectionResetError):
            return

    def log_message(self, *args):
        pass


@pytest.fixture
def trickling():
    Trickle.stop.clear()
    Trickle.requests.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    Trickle.stop.set()
    server.shutdown()
    server.server_close()


def test_a_trickling_server_is_cut_at_the_fetch_deadline_retried_and_said(trickling, capfd):
    url = f"{trickling}/real/shard-000000.tar"
    fetcher = Fetcher(None, None, read_timeout=1.0, fetch_deadline=0.3)
    outcome: list[BaseException] = []
    done = threading.Event()

    def fetch():
        try:
            fetcher.read(url, "")  # no sha256: straight from the network, no cache
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread
            outcome.append(err)
        done.set()

    threading.Thread(target=fetch, daemon=True).start()
    assert done.wait(20), "the fetch was not cut off: a trickle held it past every deadline"
    (error,) = outcome
    assert isinstance(error, TransportError)
    assert re.search(rf"{re.escape(url)}: unreachable for 1 s \(\d+ attempts\)", str(error))
    assert "fetch deadline" in str(error)
    said = capfd.readouterr().err
    assert re.search(rf"waiting for {re.escape(url)} \(attempt 1\): .*fetch deadline", said)
    assert len(Trickle.requests) >= 2  # retried, each attempt a new request


def test_the_fetch_deadline_is_a_positive_number_of_seconds():
    spec = MixSpec(("a",), (), 1, 0, 1, (2, 2), 1, 0, fetch_deadline=0.0)
    with pytest.raises(ValueError, match="fetch_deadline must be positive"):
        check_spec(spec)
