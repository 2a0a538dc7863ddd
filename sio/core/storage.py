"""Where shard sets live: a local folder, an ``s3://bucket/prefix`` or (read only) ``http(s)://``.

Producers write files into ``staging`` and ``publish`` each one when it is complete; small JSON
files (progress records, the manifest) go through ``write_json``/``read_json``. For S3 the
client takes its endpoint from ``AWS_ENDPOINT_URL`` and credentials the usual boto3 way, and
retries transient errors (botocore's standard retry mode, ``SIO_S3_ATTEMPTS`` attempts).

Readers (``open_url``, ``read_bytes``, and webdataset's ``gopen`` once ``register_url_schemes``
ran) stream local files, S3 objects and HTTP(S) URLs; a transient error while reading reopens the
object at the current byte with a ranged request.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import time
from pathlib import Path

from sio.core.files import write_json_atomic


def is_s3(url: str | Path) -> bool:
    return str(url).startswith("s3://")


def split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{url}: an S3 URL is s3://bucket/prefix")
    return bucket, key.strip("/")


def s3_client():
    import boto3
    from botocore.config import Config

    attempts = int(os.environ.get("SIO_S3_ATTEMPTS", "8"))
    retries = {"max_attempts": attempts, "mode": "standard"}
    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        config=Config(retries=retries),
    )


class LocalFolder:
    """Files are written in place: publishing is a no-op."""

    def __init__(self, path: str | Path):
        self.url = str(path)
        self.staging = Path(path)
        self.staging.mkdir(parents=True, exist_ok=True)

    def publish(self, name: str) -> None:
        pass

    def exists(self, name: str) -> bool:
        return (self.staging / name).is_file()

    def write_json(self, name: str, data) -> None:
        (self.staging / name).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.staging / name, data)

    def read_json(self, name: str):
        return json.loads((self.staging / name).read_text())


class S3Folder:
    """Files are staged locally, uploaded when complete, and deleted locally after upload."""

    def __init__(self, url: str, staging: str | Path):
        self.url = url.rstrip("/")
        self.bucket, self.prefix = split_s3(url)
        self.staging = Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.client = s3_client()

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def publish(self, name: str) -> None:
        local = self.staging / name
        self.client.upload_file(str(local), self.bucket, self._key(name))
        local.unlink()

    def exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(name))
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def write_json(self, name: str, data) -> None:
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=body)

    def read_json(self, name: str):
        response = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
        return json.loads(response["Body"].read())


def open_destination(url: str | Path, staging: str | Path | None = None):
    """A LocalFolder for a path, an S3Folder (staging in ``staging``) for ``s3://``."""
    if is_s3(url):
        if staging is None:
            bucket, prefix = split_s3(str(url))
            staging = Path.home() / ".cache" / "sio" / "staging" / bucket / prefix
        return S3Folder(str(url), staging)
    return LocalFolder(url)


# --- reading: local paths, s3:// and http(s):// URLs, streamed --------------------------------

REMOTE_SCHEMES = ("s3://", "http://", "https://")
HTTP_TIMEOUT_S = 60


def is_url(location: str | Path) -> bool:
    """True for the remote locations sio reads: ``s3://``, ``http://`` and ``https://``."""
    return str(location).startswith(REMOTE_SCHEMES)


def join_location(base: str | Path, name: str) -> str:
    """``name`` inside a folder or URL prefix (a URL is never turned into a Path, which would
    collapse its ``//``)."""
    if is_url(base):
        return f"{str(base).rstrip('/')}/{name}"
    return str(Path(base) / name)


def read_attempts() -> int:
    """How often a remote read is tried before its error is raised (``SIO_READ_ATTEMPTS``)."""
    return max(1, int(os.environ.get("SIO_READ_ATTEMPTS", "5")))


class TransientError(ConnectionError):
    """A remote error worth another try (HTTP 429 or 5xx, a connection closed early)."""


class RefusedError(PermissionError):
    """An HTTP server answered and refused (4xx other than 404 and 429: credentials, permission,
    a bad request): no wait fixes it, so it is raised at once. S3 errors are waited out: a
    gateway that restarts may refuse keys until it has loaded its identities."""


class ResumingStream(io.RawIOBase):
    """A remote object read front to back. ``opener(offset)`` returns (body, total size) of a
    request starting at byte ``offset``; a transient error while opening or reading is retried
    (up to ``read_attempts()`` tries, short exponential back-off) from the current byte, so a
    dropped connection costs one ranged request, not the shard."""

    def __init__(self, url: str, opener, transient: tuple[type[BaseException], ...]):
        super().__init__()
        self.url, self._opener, self._transient = url, opener, transient
        self.pos = 0
        self._body, self.size = self._open_at(0)

    def readable(self) -> bool:
        return True

    def _backoff(self, attempt: int, err: BaseException, what: str) -> None:
        if attempt >= read_attempts():
            raise OSError(f"{self.url}: {what} failed {attempt} times: {err!r}") from err
        time.sleep(min(0.05 * 2**attempt, 1.0))

    def _open_at(self, offset: int):
        for attempt in itertools.count(1):
            try:
                return self._opener(offset)
            except self._transient as err:
                self._backoff(attempt, err, f"opening at byte {offset}")

    def _read(self, size: int) -> bytes:
        data = self._body.read(size)
        if not data and size and self.size is not None and self.pos < self.size:
            raise TransientError(f"connection closed at byte {self.pos} of {self.size}")
        return data

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        for attempt in itertools.count(1):
            try:
                data = self._read(len(view))
                break
            except self._transient as err:
                self._backoff(attempt, err, f"reading at byte {self.pos}")
                self._body.close()
                self._body, _ = self._open_at(self.pos)
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _http_opener(url: str):
    import urllib.error
    import urllib.request

    def open_at(offset: int):
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                raise FileNotFoundError(f"{url}: not found (HTTP 404)") from None
            if err.code == 429 or err.code >= 500:
                raise TransientError(f"{url}: HTTP {err.code} {err.reason}") from None
            if 400 <= err.code < 500:
                raise RefusedError(f"{url}: HTTP {err.code} {err.reason}") from None
            raise OSError(f"{url}: HTTP {err.code} {err.reason}") from None
        length = response.headers.get("Content-Length")
        if offset and response.status != 206:  # the server ignored the range: skip ahead
            response.read(offset)
            offset = 0
        return response, None if length is None else offset + int(length)

    return open_at


def _http_transient() -> tuple[type[BaseException], ...]:
    import http.client
    import urllib.error

    return (ConnectionError, TimeoutError, http.client.HTTPException, urllib.error.URLError)


def _s3_opener(url: str):
    from botocore.exceptions import ClientError

    bucket, key = split_s3(url)
    client = _process_s3_client()

    def open_at(offset: int):
        ranged = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = client.get_object(Bucket=bucket, Key=key, **ranged)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                raise FileNotFoundError(f"{url}: no such object ({code})") from None
            raise OSError(f"{url}: {err}") from None
        return response["Body"], offset + int(response["ContentLength"])

    return open_at


def _s3_transient() -> tuple[type[BaseException], ...]:
    import botocore.exceptions as boto
    import urllib3.exceptions as urllib3

    return (
        ConnectionError,
        TimeoutError,
        boto.ConnectionError,
        boto.ReadTimeoutError,
        boto.ResponseStreamingError,
        boto.IncompleteReadError,
        urllib3.ProtocolError,
        urllib3.ReadTimeoutError,
    )


_S3_CLIENTS: dict[int, object] = {}


def _process_s3_client():
    """One client per process: boto3 clients are not shared across forked DataLoader workers."""
    pid = os.getpid()
    if pid not in _S3_CLIENTS:
        _S3_CLIENTS.clear()
        _S3_CLIENTS[pid] = s3_client()
    return _S3_CLIENTS[pid]


def open_url(location: str | Path, mode: str = "rb", bufsize: int = 1 << 20, **_):
    """A buffered binary reader of a local file, an ``s3://`` object or an ``http(s)://`` URL;
    remote objects are streamed (never downloaded whole first). The signature is webdataset's
    ``gopen`` handler's."""
    if mode != "rb":
        raise ValueError(f"{location}: sio opens shards for reading only (mode {mode!r})")
    location = str(location)
    if location.startswith("s3://"):
        raw = ResumingStream(location, _s3_opener(location), _s3_transient())
    elif is_url(location):
        raw = ResumingStream(location, _http_opener(location), _http_transient())
    else:
        return open(location, "rb", buffering=max(bufsize, 8192))  # noqa: SIM115
    return io.BufferedReader(raw, buffer_size=max(bufsize, 1 << 16))


def read_bytes(location: str | Path) -> bytes:
    """The whole of a (small) local file or remote object, e.g. a manifest."""
    with open_url(location) as stream:
        return stream.read()


def register_url_schemes() -> None:
    """Make webdataset open ``s3://`` (which it has no handler for) and ``http(s)://`` (instead
    of its ``curl`` subprocess) through ``open_url``: streaming, with retries from the current
    byte, errors naming the URL. Idempotent; called wherever shards are read."""
    import webdataset

    for scheme in ("s3", "http", "https"):
        webdataset.gopen_schemes[scheme] = open_url


class TransportError(OSError):
    """A remote object that stayed unreachable for the whole read timeout: an outage, never
    corrupt data (training stops instead of skipping)."""


def _say(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def fetch_bytes(url: str, timeout_s: float, say=_say) -> bytes:
    """The whole of a remote object, waiting out transport errors (connection refused or reset,
    timeouts, HTTP 429/5xx) with exponential back-off for up to ``timeout_s`` seconds, one
    "waiting for URL (attempt n)" line per retry; then a TransportError. A missing object
    (FileNotFoundError) is raised at once: that is the set's content, not the network; so is a
    refusal (``RefusedError``: credentials, permissions), which no wait fixes."""
    deadline = time.monotonic() + timeout_s
    for attempt in itertools.count(1):
        try:
            return read_bytes(url)
        except (FileNotFoundError, RefusedError):
            raise
        except OSError as err:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(
                    f"{url}: unreachable for {timeout_s:g} s ({attempt} attempts): {err}"
                ) from err
            say(f"waiting for {url} (attempt {attempt}): {err}")
            time.sleep(min(0.2 * 2 ** min(attempt, 8), 15.0, max(left, 0.01)))
    raise AssertionError("unreachable")
