"""``sio serve`` against hostile clients, each a real socket to a real server on 127.0.0.1: a
client trickling its request is dropped at the read deadline (a byte at a time does not extend
it), SIGTERM stops ``sio serve`` at once whatever its clients are doing, clients vanishing in the
middle of an answer are one log line each and no traceback, an error a handler did not expect is
one line, and over-long or outside Range and shard numbers are 416 and 404 naming what the set
has. Every wait is on a socket, an event or the server's log, never a sleep."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import sio.generate.serve as serve_module
from sio.generate import Job, load_generator
from sio.generate.config import GenerateConfig, GeneratorConfig, SamplerConfig
from sio.generate.serve import ShardService, start_in_thread

pytestmark = pytest.mark.usefixtures("one_thread")
BIN = Path(sys.executable).parent
TINY = GeneratorConfig(sampler=SamplerConfig(steps=2))
CLASSES = ("a", "b", "c")
BOUND_S = 30  # what "at once" may take on a loaded machine; the behaviours tested take < 1 s
HUGE = "7" * 5000  # past Python's 4,300-digit int() limit


class Log:
    """The server's log lines, with a wait for a condition on them."""

    def __init__(self):
        self.lines: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    def wait_for(self, predicate) -> list[str]:
        with self._changed:
            assert self._changed.wait_for(lambda: predicate(self.lines), BOUND_S), self.lines
            return list(self.lines)


@pytest.fixture
def job(cond_dir):
    fields = dict(
        num_images=10, batch_size=4, shard_size=4, network_batch=4, seed=5, encoding="records"
    )
    return Job(load_generator(TINY, cond_dir), GenerateConfig(**fields), CLASSES)


@pytest.fixture
def served(request, job):
    """A running server and its log; the client timeout is the test's parameter, else BOUND_S."""
    log = Log()
    timeout = getattr(request, "param", BOUND_S)
    service = ShardService(job, queue_size=4, cache=4)
    running = start_in_thread(service, client_timeout_s=timeout, log=log)
    yield running, log
    running.close()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=BOUND_S)
    return sock


def receive(sock: socket.socket, data: bytes) -> bytes:
    more = sock.recv(65536)
    assert more, f"closed by the server after {data[:200]!r}"
    return data + more


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head and body of one answer on a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data = receive(sock, data)
    head, body = data.split(b"\r\n\r\n", 1)
    (length,) = (x[15:] for x in head.split(b"\r\n") if x.lower().startswith(b"content-length"))
    while len(body) < int(length):
        body = receive(sock, body)
    return head, body


def closed_by_server(sock: socket.socket) -> bool:
    """Wait (up to BOUND_S; a timeout fails) until the server closes the connection."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:  # closed with our trickled bytes unread
        pass
    return True


def trickle(sock: socket.socket, data: bytes, every_s: float, stop: threading.Event) -> None:
    """Send ``data`` a byte every ``every_s`` seconds, then a header line that never ends,
    until ``stop`` or the server closes."""
    stream = iter(data)
    try:
        while not stop.wait(every_s):
            sock.send(bytes([next(stream, ord("a"))]))
    except OSError:
        pass


def http_error(url: str, headers=None) -> urllib.error.HTTPError:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=BOUND_S)
    return err.value


@pytest.mark.parametrize("served", [1.0], indirect=True)
def test_a_trickling_or_idle_client_is_dropped_at_the_read_deadline(served):
    running, log = served
    start = time.monotonic()  # before connecting: the server's deadlines start after this
    kept = connect(running.url)  # one whole request, then idle on the kept-alive connection
    kept.sendall(b"GET /manifest.json HTTP/1.1\r\nHost: x\r\n\r\n")
    silent = connect(running.url)
    trickling = connect(running.url)
    # a byte every 0.05 s: a per-recv timeout of 1 s would never fire
    head = b"GET /manifest.json HTTP/1.1\r\nHost: x\r\nX-Slow: "
    stop = threading.Event()
    sender = threading.Thread(target=trickle, args=(trickling, head, 0.05, stop))
    sender.start()
    try:
        assert read_answer(kept)[0].startswith(b"HTTP/1.1 200")
        for sock in (trickling, silent, kept):
            assert closed_by_server(sock)
        assert time.monotonic() - start >= 1.0  # not before the deadline
    finally:
        stop.set()
        sender.join()
        for sock in (trickling, silent, kept):
            sock.close()
    lines = log.wait_for(lambda lines: len(lines) >= 3)
    assert len(lines) == 3 and all("no complete request within 1 s" in x for x in lines), lines
    running.wait_until(lambda: running.connections == 0, BOUND_S)
    assert urllib.request.urlopen(f"{running.url}/manifest.json", timeout=BOUND_S).status == 200


def test_sigterm_stops_sio_serve_at_once_whatever_the_clients_do(tmp_path, cond_dir):
    (tmp_path / "pipeline.yaml").write_text("generator:\n  sampler:\n    steps: 2\n")
    command = [str(BIN / "python"), "-m", "sio", "serve", str(cond_dir), "--port", "0"]
    command += ["--config", str(tmp_path / "pipeline.yaml"), "--num-images", "12"]
    command += ["--shard-size", "4", "--batch-size", "4", "--network-batch", "4"]
    command += ["--encoding", "records", "--device", "cpu", "--client-timeout", "300"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = threading.Event()
    sockets, sender, took = [], None, None
    try:
        line = process.stdout.readline()
        while line and not line.startswith("serving"):  # e.g. "using config ..."
            line = process.stdout.readline()
        url = line.split(" at ", 1)[1].split("/manifest.json")[0]
        # each connection is first answered once, so a handler thread is surely reading it
        for _ in range(2):
            sock = connect(url)
            sock.sendall(b"GET /shard-000000.tar HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(sock)[0].startswith(b"HTTP/1.1 200")
            sockets.append(sock)
        trickling, idle = sockets
        head = b"GET /shard-000001.tar HTTP/1.1\r\nHost: x\r\nX-Slow: "
        sender = threading.Thread(target=trickle, args=(trickling, head, 0.05, stop))
        sender.start()
        idle.sendall(b"GET /shard-000002.tar HTTP/1.1\r\nHost: x\r\n")  # and never the end
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        # before: still running 90 s later (trickle), 62 s (idle half-request); now it stops
        # in well under a second, then the interpreter's exit (torch's teardown) takes 1-3 s
        assert process.wait(timeout=20) == 0
        took = time.monotonic() - signalled
        for sock in sockets:
            assert closed_by_server(sock)
    finally:
        stop.set()
        if sender is not None:
            sender.join()
        for sock in sockets:
            sock.close()
        process.kill()
        output = process.communicate()[0]
    assert "stopped: 1 shards (4 images)" in output, (took, output)
    assert "Traceback" not in output, output


def test_clients_vanishing_mid_answer_are_one_line_each(served, capfd):
    running, log = served
    clients = []
    for i in range(30):
        sock = connect(running.url)
        sock.sendall(f"GET /shard-00000{i % 3}.tar HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        clients.append(sock)
    ports = set()
    for sock in clients:  # read the head and part of the body, then vanish (a reset)
        data = b""
        while b"\r\n\r\n" not in data or data.endswith(b"\r\n\r\n"):
            data = receive(sock, data)
        assert data.startswith(b"HTTP/1.1 200")
        ports.add(sock.getsockname()[1])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    log.wait_for(lambda lines: len(lines) >= 30)
    assert running.wait_until(lambda: running.connections == 0, BOUND_S)
    lines = log.lines
    assert len(lines) == 30, lines
    assert all("client gone after GET /shard-00000" in x and "\n" not in x for x in lines), lines
    assert {int(x.split(":")[1]) for x in lines} == ports  # one line per client
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_that_stops_reading_is_dropped_mid_answer(cond_dir):
    """A manifest larger than what the kernel buffers (the server's largest send buffer, the
    client's small receive buffer), asked for and never read."""
    buffered = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    shards = 2 * buffered // 80 + 10_000  # a shard's manifest entry is about 80 bytes
    fields = dict(num_images=4 * shards, batch_size=4, shard_size=4, network_batch=4, seed=5)
    job = Job(load_generator(TINY, cond_dir), GenerateConfig(**fields), CLASSES)
    log = Log()
    running = start_in_thread(ShardService(job), client_timeout_s=1.0, log=log)
    host, port = running.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.settimeout(BOUND_S)
        sock.connect((host, int(port)))
        sock.sendall(b"GET /manifest.json HTTP/1.1\r\nHost: x\r\n\r\n")
        (line,) = log.wait_for(lambda lines: len(lines) >= 1)
        assert "client gone while answering GET /manifest.json: took nothing for 1 s" in line
        assert len(running.manifest_bytes) > 2 * buffered
        assert closed_by_server(sock)
    finally:
        sock.close()
        running.close()


def test_an_error_no_handler_expected_is_one_line(served, monkeypatch, capfd):
    running, log = served

    def broken(self):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(serve_module.Handler, "do_GET", broken)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"{running.url}/manifest.json", timeout=BOUND_S)
    (line,) = log.wait_for(lambda lines: len(lines) >= 1)
    assert "RuntimeError: a bug\\x0aover two lines" in line, line
    assert "Traceback" not in capfd.readouterr().err


def test_an_over_long_range_is_416_naming_the_size(served):
    running, _ = served
    url = f"{running.url}/shard-000000.tar"
    size = len(urllib.request.urlopen(url, timeout=BOUND_S).read())
    for ranged in (f"bytes={HUGE}-", f"bytes=0-{HUGE}", f"bytes=-{HUGE}", f"bytes={size}-"):
        err = http_error(url, {"Range": ranged})
        message = err.read().decode()
        assert err.code == 416 and err.headers["Content-Range"] == f"bytes */{size}", ranged
        assert f"shard-000000.tar has {size} bytes (bytes=0-{size - 1})" in message, message
        assert len(message) < 300, message
    err = http_error(f"{running.url}/manifest.json", {"Range": f"bytes={HUGE}-"})
    assert err.code == 416 and "a number of 5,000 digits; manifest.json has" in err.read().decode()


def test_an_over_long_or_outside_shard_index_is_404_naming_the_range(served):
    running, _ = served
    for index in (HUGE, "0" * 5000, "000003", "999999999", "0000001"):
        err = http_error(f"{running.url}/shard-{index}.tar")
        message = err.read().decode()
        assert err.code == 404, index
        assert "outside this set of 3 shards (shard-000000.tar .. shard-000002.tar)" in message
        assert len(message) < 300, message
    assert urllib.request.urlopen(f"{running.url}/shard-000002.tar", timeout=BOUND_S).status == 200


@pytest.fixture
def held(monkeypatch):
    """Shard generation held until the event is set (the test's hand on the generator)."""
    release = threading.Event()
    real = serve_module.write_shard

    def write_shard(*args, **kw):
        release.wait(BOUND_S)
        return real(*args, **kw)

    monkeypatch.setattr(serve_module, "write_shard", write_shard)
    yield release
    release.set()


def test_closing_drops_idle_clients_at_once_and_lets_an_answer_in_flight_finish(job, held):
    service = ShardService(job, queue_size=4)
    running = start_in_thread(service, grace_s=120, log=Log())
    idle, trickling, in_flight, queued = (connect(running.url) for _ in range(4))
    stop = threading.Event()
    sender = threading.Thread(target=trickle, args=(trickling, b"GET /", 0.05, stop))
    sender.start()
    closer = threading.Thread(target=running.close)
    try:
        in_flight.sendall(b"GET /shard-000000.tar HTTP/1.1\r\nHost: x\r\n\r\n")
        assert service.wait_until(lambda: service.making == 0, BOUND_S)
        queued.sendall(b"GET /shard-000001.tar HTTP/1.1\r\nHost: x\r\n\r\n")
        assert service.wait_until(lambda: service.queued == (1,), BOUND_S)
        assert running.wait_until(lambda: running.connections == 4, BOUND_S)
        closer.start()
        for sock in (idle, trickling):
            sock.settimeout(10)  # far less than the 120 s grace: closed at once, not after it
            assert closed_by_server(sock)
        head, body = read_answer(queued)  # a shard not begun is refused at once
        assert head.startswith(b"HTTP/1.1 503") and b"stopping" in body
        assert closer.is_alive()  # waits for shard 0, which is held
        held.set()
        head, body = read_answer(in_flight)
        assert head.startswith(b"HTTP/1.1 200") and len(body) > 512
        closer.join(BOUND_S)
        assert not closer.is_alive()
        assert closed_by_server(in_flight)
    finally:
        held.set()
        stop.set()
        sender.join()
        for sock in (idle, trickling, in_flight, queued):
            sock.close()
        if not closer.is_alive():
            closer.join()


def test_closing_refuses_a_shard_that_outlasts_the_grace(job, held):
    service = ShardService(job, queue_size=4)
    running = start_in_thread(service, grace_s=0.5, log=Log())
    running.answer_s = BOUND_S  # the refused request's 503 is never cut by a slow thread start
    in_flight = connect(running.url)
    try:
        in_flight.sendall(b"GET /shard-000000.tar HTTP/1.1\r\nHost: x\r\n\r\n")
        assert service.wait_until(lambda: service.making == 0, BOUND_S)
        closer = threading.Thread(target=running.close)
        closer.start()
        head, body = read_answer(in_flight)  # the generator is still held
        assert head.startswith(b"HTTP/1.1 503") and b"stopping" in body
        closer.join(BOUND_S)
        assert not closer.is_alive()
    finally:
        in_flight.close()
