"""``sio serve``'s HTTP server: one thread per connection, deadlines for idle and slow
clients, and a shutdown that closes idle connections at once and gives answers in flight a
grace period."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import traceback
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

from sio.generate.serve_http import Handler, client_name, printable

if TYPE_CHECKING:
    from sio.generate.serve import ShardService


class GenerationServer(ThreadingHTTPServer):
    """The service over HTTP, one thread per connection.

    A client has ``client_timeout_s`` seconds to send each request head, counted from the
    connection or the end of the previous answer (a trickle does not extend it), and must take
    each piece of an answer within it; else it is dropped with one log line. ``close`` (and
    SIGTERM) stops accepting, closes the idle connections at once, gives the requests in flight
    ``grace_s`` seconds, then closes what is left. A client that vanishes is one log line."""

    daemon_threads = True  # close() bounds the wait for the handlers; nothing waits after it
    answer_s = 1.0  # after the grace: for the requests refused at its end to get their 503
    request_queue_size = 128  # listen backlog: socketserver's 5 drops a burst's SYNs (1 s retries)

    def __init__(
        self,
        service: ShardService,
        host: str,
        port: int,
        *,
        verbose: bool = False,
        client_timeout_s: float = 30.0,
        grace_s: float = 3.0,
        log=None,
    ):
        super().__init__((host, port), Handler)
        self.service = service
        self.verbose = verbose
        self.client_timeout_s = client_timeout_s
        self.grace_s = grace_s
        self._log = log  # called with each log line; None: stderr
        self._log_lock = threading.Lock()
        self._manifest: bytes | None = None
        self._manifest_lock = threading.Lock()
        self._handlers: set[Handler] = set()
        self._changed = threading.Condition()  # notified when a connection opens, idles or ends
        self.stopping = False
        self._wound_down = False

    @property
    def manifest_bytes(self) -> bytes:
        """Built on the first request (a set of millions of shards takes a while to list)."""
        with self._manifest_lock:
            if self._manifest is None:
                manifest = self.service.manifest()
                self._manifest = (json.dumps(manifest, sort_keys=True) + "\n").encode()
            return self._manifest

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def connections(self) -> int:
        """Connections open now."""
        with self._changed:
            return len(self._handlers)

    def wait_until(self, predicate, timeout: float | None) -> bool:
        """Wait until ``predicate()`` holds, checked each time a connection opens, ends or
        starts or stops awaiting a request; False if it still does not after ``timeout`` s."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def log(self, line: str) -> None:
        """One line of the log (``line`` holds no newline)."""
        if self._log is not None:
            return self._log(line)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._log_lock:
            sys.stderr.write(f"[{stamp}] sio serve: {line}\n")
            sys.stderr.flush()

    def handle_error(self, request, client_address) -> None:
        """An error a handler did not answer: one line (the traceback too with ``verbose``)."""
        err = sys.exc_info()[1]
        self.log(f"{client_name(client_address)}: {type(err).__name__}: {printable(str(err), 200)}")
        if self.verbose:
            traceback.print_exc()

    # the handlers' states, under self._changed

    def _opened(self, handler: Handler) -> None:
        with self._changed:
            self._handlers.add(handler)
            self._changed.notify_all()

    def _await_request(self, handler: Handler) -> bool:
        """Start the handler's deadline for the next request head; False once stopping."""
        with self._changed:
            if self.stopping:
                return False
            handler.idle = True
            handler._reader.deadline = time.monotonic() + self.client_timeout_s
            self._changed.notify_all()
            return True

    def _stop_awaiting(self, handler: Handler) -> None:
        with self._changed:
            handler.idle = False
            handler._reader.deadline = None
            self._changed.notify_all()

    def _finished(self, handler: Handler) -> None:
        with self._changed:
            self._handlers.discard(handler)
            self._changed.notify_all()

    def close(self) -> None:
        """Stop accepting (``serve_forever`` must be running), then ``wind_down``."""
        self.shutdown()
        self.wind_down()

    def wind_down(self) -> None:
        """After ``serve_forever`` returned: close the listening socket and the idle connections
        at once, refuse the queued shards, give the requests in flight up to ``grace_s`` seconds
        (the shard being made included), then close the connections left and stop the service.
        Returns within about ``grace_s`` + ``answer_s`` + 1 s whatever the clients do."""
        if self._wound_down:
            return
        self._wound_down = True
        deadline = time.monotonic() + self.grace_s
        with self._changed:
            self.stopping = True
            for handler in self._handlers:
                if handler.idle:
                    handler.hang_up()
        self.server_close()
        self.service.close(grace_s=max(0, deadline - time.monotonic()))
        # the answers in flight get what is left of the grace, and those refused at its end
        # (503: stopping) at least answer_s to be written; then the connections left are closed
        left = max(self.answer_s, deadline - time.monotonic())
        with self._changed:
            self._changed.wait_for(lambda: not self._handlers, left)
            for handler in self._handlers:
                handler.hang_up()
            self._changed.wait_for(lambda: not self._handlers, 1.0)


def start_in_thread(service: ShardService, host="127.0.0.1", port=0, **kw) -> GenerationServer:
    """A running server (``port`` 0: a free one) serving from a background thread."""
    server = GenerationServer(service, host, port, **kw)
    threading.Thread(target=server.serve_forever, name="sio-serve-http", daemon=True).start()
    return server


def serve_until_signalled(server: GenerationServer) -> None:
    """Serve in this thread until SIGTERM or SIGINT, then wind down (a few seconds at most)."""
    stopping = threading.Event()

    def stop(signum, frame):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever()
    finally:
        try:
            server.wind_down()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
