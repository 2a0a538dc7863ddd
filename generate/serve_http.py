"""``sio serve``'s HTTP answers: the manifest, a shard (whole or a ``Range``), and errors.

Clients are not trusted to behave: each has ``client_timeout_s`` to send a whole request head (a
deadline, so a byte every few seconds does not keep a connection), an idle connection is closed
after it, an answer the client stops taking is dropped, and a client that vanishes is one log line,
never a traceback. SIGTERM or SIGINT stops accepting requests, closes the idle connections at once,
gives the ones in flight a few seconds (``grace_s``), closes the rest, and exits.

"""

from __future__ import annotations

import contextlib
import io
import re
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

from sio.generate.job import shard_name
from sio.shardset import MANIFEST

if TYPE_CHECKING:
    from sio.generate.serve_server import GenerationServer

SHARD = re.compile(r"/shard-(\d{6,})\.tar")
RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
MAX_DIGITS = 18  # a Range number longer than this is refused before int(): no answer is 10**18 B
WRITE_PIECE = 256 * 1024  # an answer is sent in pieces; each must go within the client timeout


class QueueFull(RuntimeError):
    """The service's queue stayed full: the request is answered 503 (retry)."""


class ServiceStopping(RuntimeError):
    """The service is stopping: the request is answered 503."""


def printable(text: str, limit: int = 40) -> str:
    """``text`` for a one-line message: control characters escaped, at most ``limit``
    characters of it (a hostile client's path or header may be any length)."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text):,} characters)"
    return text.encode("ascii", "backslashreplace").decode().translate(_CONTROL)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def client_name(address) -> str:
    return f"{address[0]}:{address[1]}"


class ClientGone(ConnectionError):
    """The client stopped taking the answer for the client timeout."""


class _Dropped(Exception):
    """The request head did not arrive in time (not a TimeoutError: http.server would log it
    its own way)."""


class _HungUp(Exception):
    """The server is stopping and closed this idle connection."""


class _HeadReader(io.RawIOBase):
    """The connection's bytes. While ``deadline`` is set (a request head is awaited) every recv
    waits only for what is left of it, so a client trickling a byte at a time cannot extend it;
    the socket's own timeout, which bounds each send, is restored after."""

    def __init__(self, handler: Handler):
        self._handler = handler
        self._sock = handler.connection
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is None:
            return self._sock.recv_into(buffer)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Dropped
        self._sock.settimeout(left)
        try:
            count = self._sock.recv_into(buffer)
        except TimeoutError:
            raise _Dropped from None
        finally:
            self._sock.settimeout(self._handler.timeout)
        if count == 0 and self._handler.hung_up:
            raise _HungUp
        return count


class Handler(BaseHTTPRequestHandler):
    server: GenerationServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.client_timeout_s  # on the socket: bounds each send
        super().setup()
        self.rfile.close()  # read through the deadline instead
        self._reader = _HeadReader(self)
        self.rfile = io.BufferedReader(self._reader)
        self.idle = False  # awaiting a request head (shutdown closes such a connection at once)
        self.hung_up = False
        self.answering: str | None = None  # the request being answered, for the log
        self.answered: str | None = None  # the last one answered
        self.server._opened(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server._finished(self)

    @property
    def client(self) -> str:
        return client_name(self.client_address)

    def hang_up(self) -> None:
        """Shut the connection (from another thread): a blocked recv or send returns at once."""
        self.hung_up = True
        with contextlib.suppress(OSError):  # already closed
            self.connection.shutdown(socket.SHUT_RDWR)

    def handle_one_request(self) -> None:
        self.answered, self.answering = self.answering or self.answered, None
        if not self.server._await_request(self):
            self.close_connection = True
            return
        try:
            super().handle_one_request()
        except _Dropped:
            self.close_connection = True
            self.log_error("dropped: no complete request within %g s", self.server.client_timeout_s)
        except _HungUp:
            self.close_connection = True
        except ConnectionError as err:  # BrokenPipe, ConnectionReset, ConnectionAborted
            self.close_connection = True
            what = "closed by the shutdown" if self.hung_up else "client gone"
            if self.answering:
                where = f" while answering {self.answering}"
            else:
                where = f" after {self.answered}" if self.answered else ""
            self.log_error("%s%s: %s", what, where, err.strerror or err)
        finally:
            self.server._stop_awaiting(self)

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # reads the headers (under the deadline)
        self.server._stop_awaiting(self)  # the head is in: no deadline while answering
        if parsed:
            self.answering = f"{self.command} {printable(self.path)}"
        return parsed

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.server.verbose:  # the access log
            self.server.log(f"{self.client}: {printable(format % args, 300)}")

    def log_error(self, format, *args):  # noqa: A002
        self.server.log(f"{self.client}: {printable(format % args, 300)}")

    def do_HEAD(self):  # noqa: N802 - http.server's name
        self._answer(body=False)

    def do_GET(self):  # noqa: N802
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == f"/{MANIFEST}":
            return self._send(MANIFEST, self.server.manifest_bytes, "application/json", body)
        match = SHARD.fullmatch(path)
        if match is None:
            where = f"GET /{MANIFEST} lists the set"
            return self._error(404, f"{printable(path)}: not served here; {where}")
        digits, total = match[1], self.server.service.job.num_shards
        # a number longer than the last shard's is outside the set: no int() of it
        inside = len(digits) <= len(f"{total - 1:06d}") and int(digits) < total
        if not inside or digits != f"{int(digits):06d}":
            return self._error(
                404,
                f"{printable(path[1:])}: outside this set of {total} shards "
                f"({shard_name(0)} .. {shard_name(total - 1)})",
            )
        try:
            data = self.server.service.shard(int(digits))
        except (QueueFull, ServiceStopping) as err:
            return self._error(503, f"busy: {err}; retry", retry_after=5)
        except Exception as err:  # noqa: BLE001 - the client gets the reason, the log one line
            self.log_error("generation failed: %r", err)
            return self._error(500, f"{printable(path)}: generation failed: {err}")
        self._send(path[1:], data, "application/x-tar", body)

    def _send(self, name: str, data: bytes, kind: str, body: bool) -> None:
        start, end = 0, len(data)
        ranged = self.headers.get("Range")
        status = 200
        if ranged:
            span = byte_range(ranged, len(data))
            if isinstance(span, str):
                return self._error(
                    416,
                    f"Range {printable(ranged)!r}: {span}; {name} has {len(data)} bytes "
                    f"(bytes=0-{len(data) - 1})",
                    total=len(data),
                )
            start, end = span
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self._write(memoryview(data)[start:end])

    def _write(self, data) -> None:
        """Send ``data`` a piece at a time: a client that takes none of a piece for the client
        timeout is dropped (a single sendall would bound the whole answer instead)."""
        try:
            for start in range(0, len(data), WRITE_PIECE):
                self.wfile.write(data[start : start + WRITE_PIECE])
        except TimeoutError:
            raise ClientGone(f"took nothing for {self.server.client_timeout_s:g} s") from None

    def _error(self, code: int, message: str, retry_after=None, total=None) -> None:
        payload = (message + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if total is not None:
            self.send_header("Content-Range", f"bytes */{total}")
        self.end_headers()
        if self.command != "HEAD":
            self._write(payload)


def byte_range(header: str, size: int) -> tuple[int, int] | str:
    """``(start, end)`` of the bytes a ``Range: bytes=a-b`` header asks for out of ``size``, or
    why it cannot be served (a number of more than ``MAX_DIGITS`` digits is refused unread)."""
    match = RANGE.match(header.strip())
    if match is None or (not match[1] and not match[2]):
        return "unsupported (bytes=START-END, bytes=START- or bytes=-LAST)"
    longest = max(len(match[1]), len(match[2]))
    if longest > MAX_DIGITS:
        return f"a number of {longest:,} digits"
    if match[1]:
        start = int(match[1])
        end = min(size, int(match[2]) + 1) if match[2] else size
    else:  # the last N bytes
        start, end = max(0, size - int(match[2])), size
    if start >= size or start >= end:
        return "outside the data"
    return start, end
