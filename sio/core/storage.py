"""Where shard sets live: a local folder, an ``s3://bucket/prefix`` or (read only) ``http(s)://``.

Producers write files into ``staging`` and ``publish`` each one when it is complete; small JSON
files (progress records, the manifest) go through ``write_json``/``read_json``. For S3 the
client takes its endpoint from ``AWS_ENDPOINT_URL`` and credentials the usual boto3 way, and
retries transient errors (botocore's standard retry mode, ``SIO_S3_ATTEMPTS`` attempts).

Readers (``open_url``, ``read_bytes``, and webdataset's ``gopen`` once ``register_url_schemes``
ran) stream local files, S3 objects and HTTP(S) URLs; a transient error while reading reopens the
object at the current byte with a ranged request.

Mirrors: a location may be several equivalent base URLs, ``URL1,URL2,...`` (or a list of them),
e.g. one ``sio serve`` per GPU serving one set. ``join_location`` names a file on each of them
(``URL1/name,URL2/name``, in that order), and every reader of such a location tries its URLs in
turn: a transport error on one (refused, reset, timed out, HTTP 429/5xx) moves on to the next at
once, and only when all failed does ``fetch_bytes`` wait. A missing object (404) or a refusal is
the set's content and is raised at once. Which mirror is asked first is the caller's: the shard
set reader puts shard i's mirror ``i mod n`` first (``sio.shardset.read.shard_urls``).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import time
from pathlib import Path

from sio.core.files import write_json_atomic


def is_s3(url: str | Path) -> bool:
    return str(url).startswith("s3://")


# an S3 bucket name: 3 to 63 characters (255 for buckets of before 2018, which may hold capitals
# and "_"), letters, digits, ".", "-" and "_", a letter or digit at each end, no ".."
S3_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")


def split_s3(url: str) -> tuple[str, str]:
    """(bucket, key prefix) of an ``s3://bucket/prefix`` URL; a bucket name S3 would refuse (or
    that could leave a staging folder: "..") is refused here, in one line."""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{url}: an S3 URL is s3://bucket/prefix")
    if not S3_BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"{url}: {bucket[:80]!r} is not an S3 bucket name (letters, digits, '.', '-' or '_', a "
            "letter or digit at each end)"
        )
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
HTTP_TIMEOUT_S = 60  # seconds one read of a socket may wait for a byte
# seconds one fetch of a whole object may take (``fetch_bytes``): a server that trickles a byte
# at a time never trips the per-read timeout; 300 s reads a 4 GiB shard at ~14 MB/s
FETCH_DEADLINE_S = 300.0


def is_url(location: str | Path) -> bool:
    """True for the remote locations sio reads: ``s3://``, ``http://`` and ``https://`` (and a
    list of mirrors, which are URLs)."""
    return as_location(location).startswith(REMOTE_SCHEMES)


MIRROR_SEPARATOR = ","


def as_location(location) -> str:
    """A location as one string: a list or tuple of mirror URLs becomes ``URL1,URL2,...``."""
    if isinstance(location, (list, tuple)):
        urls = [str(url).strip() for url in location]
        if not urls:
            raise ValueError("an empty list of locations")
        if len(urls) > 1:
            bad = [url for url in urls if not url.startswith(REMOTE_SCHEMES) or "," in url]
            if bad:
                raise ValueError(
                    f"{bad[0]}: a list of locations holds the URLs (http://, https://, s3://) of "
                    "services or mirrors serving one set"
                )
        return MIRROR_SEPARATOR.join(urls)
    return str(location)


def mirrors(location) -> tuple[str, ...]:
    """The equivalent URLs of a location: several for ``URL1,URL2,...`` (every part a URL),
    else the location alone (a local path may hold a comma)."""
    text = as_location(location)
    parts = [part.strip() for part in text.split(MIRROR_SEPARATOR)]
    if len(parts) > 1 and all(part.startswith(REMOTE_SCHEMES) for part in parts):
        return tuple(parts)
    return (text,)


def join_location(base, name: str) -> str:
    """``name`` inside a folder or URL prefix (a URL is never turned into a Path, which would
    collapse its ``//``); inside each of a list of mirrors, in their order."""
    urls = mirrors(base)
    if len(urls) > 1:
        return MIRROR_SEPARATOR.join(join_location(url, name) for url in urls)
    base = urls[0]
    if is_url(base):
        return f"{str(base).rstrip('/')}/{name}"
    return str(Path(base) / name)


def rotate(location, first: int) -> str:
    """A list of mirrors starting at mirror ``first mod n`` (a single location unchanged)."""
    urls = mirrors(location)
    if len(urls) == 1:
        return urls[0]
    first %= len(urls)
    return MIRROR_SEPARATOR.join(urls[first:] + urls[:first])


def parent_location(location) -> str:
    """The folder or URL prefix that holds a file (of each mirror, for a list)."""
    urls = mirrors(location)
    if len(urls) > 1:
        return MIRROR_SEPARATOR.join(parent_location(url) for url in urls)
    if is_url(urls[0]):
        return urls[0].rsplit("/", 1)[0]
    return str(Path(urls[0]).parent)


def read_attempts() -> int:
    """How often a remote read is tried before its error is raised (``SIO_READ_ATTEMPTS``)."""
    return max(1, int(os.environ.get("SIO_READ_ATTEMPTS", "5")))


class TransientError(ConnectionError):
    """A remote error worth another try (HTTP 429 or 5xx, a connection closed early)."""


class FetchDeadline(TimeoutError):
    """One fetch of an object took longer than its deadline (a trickling or stalled server):
    a transport fault, retried by ``fetch_bytes`` like any other."""


class RefusedError(PermissionError):
    """An HTTP server answered and refused (4xx other than 404 and 429: credentials, permission,
    a bad request): no wait fixes it, so it is raised at once. S3 errors are waited out: a
    gateway that restarts may refuse keys until it has loaded its identities."""


class ResumingStream(io.RawIOBase):
    """A remote object read front to back. ``opener(offset)`` returns (body, total size) of a
    request starting at byte ``offset``; a transient error while opening or reading is retried
    (up to ``read_attempts()`` tries, short exponential back-off) from the current byte, so a
    dropped connection costs one ranged request, not the shard. ``open_attempts`` bounds the
    tries of the first request alone (1 for a mirror, whose failure moves on to the next).
    Past ``deadline`` (a ``time.monotonic()`` instant) the next read or open raises
    ``FetchDeadline``; a body is read a piece at a time (``read1``: one socket read), so a
    trickle cannot hold a read past it."""

    def __init__(
        self,
        url: str,
        opener,
        transient: tuple[type[BaseException], ...],
        open_attempts: int | None = None,
        deadline: float | None = None,
    ):
        super().__init__()
        self.url, self._opener, self._transient = url, opener, transient
        self.pos, self.deadline, self.size = 0, deadline, None
        self._body, self.size = self._open_at(0, open_attempts or read_attempts())

    def readable(self) -> bool:
        return True

    def _backoff(self, attempt: int, err: BaseException, what: str, limit=None) -> None:
        if attempt >= (limit or read_attempts()):
            raise OSError(f"{self.url}: {what} failed {attempt} times: {err!r}") from err
        time.sleep(min(0.05 * 2**attempt, 1.0))

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            total = "" if self.size is None else f" of {self.size:,}"
            raise FetchDeadline(
                f"{self.url}: not read within its fetch deadline ({self.pos:,}{total} bytes)"
            )

    def _open_at(self, offset: int, attempts: int | None = None):
        for attempt in itertools.count(1):
            self._check_deadline()
            try:
                return self._opener(offset)
            except self._transient as err:
                self._backoff(attempt, err, f"opening at byte {offset}", attempts)

    def _read(self, size: int) -> bytes:
        read1 = getattr(self._body, "read1", None)
        data = read1(size) if read1 is not None else self._body.read(size)
        if not data and size and self.size is not None and self.pos < self.size:
            raise TransientError(f"connection closed at byte {self.pos} of {self.size}")
        return data

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        for attempt in itertools.count(1):
            self._check_deadline()
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


def _http_opener(url: str, deadline: float | None = None):
    import urllib.error
    import urllib.request

    def open_at(offset: int):
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        request = urllib.request.Request(url, headers=headers)
        timeout = HTTP_TIMEOUT_S  # per socket read; a silent server is cut at the deadline
        if deadline is not None:
            timeout = min(timeout, max(deadline - time.monotonic(), 0.01))
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
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


def open_url(
    location: str | Path,
    mode: str = "rb",
    bufsize: int = 1 << 20,
    open_attempts: int | None = None,
    deadline: float | None = None,
    **_,
):
    """A buffered binary reader of a local file, an ``s3://`` object or an ``http(s)://`` URL;
    remote objects are streamed (never downloaded whole first). The signature is webdataset's
    ``gopen`` handler's. Of a list of mirrors, the first that opens (a transport error moves
    on to the next; 404s and refusals are raised at once), in up to ``read_attempts()`` rounds;
    a connection dropped later resumes on the same mirror. ``deadline``: see ResumingStream."""
    if mode != "rb":
        raise ValueError(f"{location}: sio opens shards for reading only (mode {mode!r})")
    urls = mirrors(location)
    if len(urls) > 1:
        return _open_mirrors(urls, bufsize, open_attempts or read_attempts(), deadline)
    location = urls[0]
    if location.startswith("s3://"):
        opener, transient = _s3_opener(location), _s3_transient()
    elif is_url(location):
        opener, transient = _http_opener(location, deadline), _http_transient()
    else:
        return open(location, "rb", buffering=max(bufsize, 8192))  # noqa: SIM115
    raw = ResumingStream(location, opener, transient, open_attempts, deadline)
    return io.BufferedReader(raw, buffer_size=max(bufsize, 1 << 16))


def _open_mirrors(urls: tuple[str, ...], bufsize: int, rounds: int, deadline=None):
    errors = []
    for attempt in range(1, rounds + 1):
        for url in urls:
            try:
                return open_url(url, bufsize=bufsize, open_attempts=1, deadline=deadline)
            except (FileNotFoundError, RefusedError):
                raise
            except OSError as err:
                errors.append(f"{url}: {err}")
        if attempt < rounds:
            time.sleep(min(0.05 * 2**attempt, 1.0))
    raise OSError(f"none of {len(urls)} mirrors answered in {rounds} rounds; last: {errors[-1]}")


class TooLarge(ValueError):
    """An object longer than its reader allows: the content, not the network (never retried)."""


def read_bytes(
    location: str | Path,
    open_attempts: int | None = None,
    limit: int | None = None,
    deadline_s: float | None = None,
) -> bytes:
    """The whole of a (small) local file or remote object, e.g. a manifest; with ``limit``, an
    object of more bytes is a TooLarge naming it, after reading at most ``limit`` + 1 bytes
    (an endless body from a hostile server stops there); with ``deadline_s``, a remote object
    not read within that many seconds is a ``FetchDeadline``."""
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    with open_url(location, open_attempts=open_attempts, deadline=deadline) as stream:
        if limit is None:
            return stream.read()
        pieces, held = [], 0
        while held <= limit and (piece := stream.read(min(1 << 20, limit + 1 - held))):
            pieces.append(piece)
            held += len(piece)
    if held > limit:
        raise TooLarge(f"{location}: more than {limit:,} bytes")
    return b"".join(pieces)


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


def fetch_bytes(
    url: str,
    timeout_s: float,
    say=_say,
    limit: int | None = None,
    deadline_s: float | None = None,
) -> bytes:
    """The whole of a remote object, waiting out transport errors (connection refused or reset,
    timeouts, HTTP 429/5xx) with exponential back-off for up to ``timeout_s`` seconds, one
    "waiting for URL (attempt n)" line per retry; then a TransportError. A missing object
    (FileNotFoundError) is raised at once: that is the set's content, not the network; so is a
    refusal (``RefusedError``: credentials, permissions), which no wait fixes, and an object
    over ``limit`` bytes (``TooLarge``, see ``read_bytes``). Each attempt must read the whole
    object within ``deadline_s`` seconds (None: ``FETCH_DEADLINE_S``); past it the attempt is a
    ``FetchDeadline``, a transport fault, said and retried like the others.

    Of a list of mirrors (``URL1/name,URL2/name``), each is tried in turn (one line per failure,
    "trying the next mirror"), and the wait comes only after a round in which all failed."""
    urls = mirrors(url)
    deadline = time.monotonic() + timeout_s
    per_fetch = FETCH_DEADLINE_S if deadline_s is None else deadline_s
    for attempt in itertools.count(1):
        for k, one in enumerate(urls):
            try:
                attempts = 1 if len(urls) > 1 else None
                return read_bytes(one, attempts, limit, deadline_s=per_fetch)
            except (FileNotFoundError, RefusedError):
                raise
            except OSError as err:
                error = err
                if k + 1 < len(urls):
                    say(f"{one} failed ({err}); trying the next mirror, {urls[k + 1]}")
        left = deadline - time.monotonic()
        where = urls[0] if len(urls) == 1 else f"{urls[0]} and its {len(urls) - 1} mirrors"
        if left <= 0:
            raise TransportError(
                f"{where}: unreachable for {timeout_s:g} s ({attempt} attempts): {error}"
            ) from error
        say(f"waiting for {where} (attempt {attempt}): {error}")
        time.sleep(min(0.2 * 2 ** min(attempt, 8), 15.0, max(left, 0.01)))
    raise AssertionError("unreachable")
