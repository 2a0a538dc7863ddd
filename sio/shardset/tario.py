"""Tar shards to raw samples, from a path or a URL, with every error naming shard and member.

A shard is opened through ``sio.core.storage.open_url`` (local files, and streamed ``s3://`` and
``http(s)://`` objects) and read as a tar stream by a small reader of its own (ustar, PAX and GNU
long names, as Python's tarfile reads them, a few times faster per member; tarfile dominated the
reading of small images). Members are grouped into samples by key exactly as webdataset groups
them (the key is the member name up to the first dot of its basename), so a sample is
``{"__key__", "__url__", ext: bytes}``.

A shard is data from wherever it came from, so the reader is bounded: every header field is
checked (checksum, octal or base-256 sizes, each PAX record's length and fields), no member is
read past the shard's length where it is known (in memory, a local file, an HTTP or S3 body of
known length), and reads go in pieces of at most ``CHUNK`` bytes, so a size field never decides
an allocation. Anything else raises ShardError naming the URL and the member. Where the manifest
gives a shard's sha256, ``tar_samples`` reads the whole shard and checks its size and sha256
before parsing a byte of it (``read_checked``). Like tarfile, the reader ends quietly at end of
file on a member boundary; ``check_count`` catches that cut against the manifest's sample count.

Every reader of the contract (``tar_samples`` and so ``iter_samples``, convert and subset;
verify; ``shard.decode_shard`` for training) groups members with ``group_samples`` and checks a
shard's bytes with ``check_shard_bytes``: one grouping, one check, one wording.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from collections.abc import Iterator

from sio.core.storage import open_url
from sio.shardset.format import ShardError, shorten

_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: split at the first dot of the basename."""
    match = _MEMBER.match(name)
    if not match:
        raise ValueError(f"member {shown(name)} is not <key>.<extension>")
    return match.group(1), match.group(2)


def shown(name: str) -> str:
    """A member name for a message: as it is when short and printable, else shortened repr."""
    return name if len(name) <= 60 and name.isprintable() else shorten(name)


def open_shard(url: str):
    try:
        return open_url(url)
    except FileNotFoundError as err:
        raise ShardError(f"{url}: shard listed in the manifest is missing ({err})") from None
    except OSError as err:
        raise ShardError(f"{url}: cannot open shard: {err}") from err


BLOCK = 512
CHUNK = 1 << 20  # the most one read asks for: a size field never decides an allocation
MAX_META = 1 << 20  # the data of a PAX or GNU long-name header
MAX_MEMBER = 1 << 30  # one member of a shard whose length is not known (a stream)
MAX_NAME = 4096  # bytes of a member name
_LONG_NAME, _PAX, _PAX_GLOBAL, _FILES = b"L", b"x", b"g", (b"0", b"\0", b"7")
_OCTAL = re.compile(rb"[0-7]*")
_DECIMAL = re.compile(r"[0-9]{1,20}")
_PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")


def _number(field: bytes) -> int:
    """A tar header's numeric field: octal text, or base-256 (GNU: first byte 0x80 for a
    positive, 0xff for a negative number); ValueError for anything else."""
    if field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not _OCTAL.fullmatch(text):
        raise ValueError(f"{shorten(field)} is not an octal number")
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    """The header's checksum field against its bytes (that field counted as 8 spaces),
    unsigned or, as some old writers made it, signed."""
    try:
        stored = _number(header[148:156])
    except ValueError:
        return False
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if stored == unsigned:
        return True
    return stored == unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)


def stream_length(stream) -> int | None:
    """The bytes left in ``stream`` where it knows them: in memory, a regular file, a remote
    body of known length (``open_url``'s, not yet read); else None."""
    try:
        if isinstance(stream, io.BytesIO):
            with stream.getbuffer() as view:
                return view.nbytes - stream.tell()
        raw = getattr(stream, "raw", stream)
        if isinstance(getattr(raw, "size", None), int) and getattr(raw, "pos", None) == 0:
            return raw.size
        status = os.fstat(stream.fileno())
        return status.st_size - stream.tell() if stat.S_ISREG(status.st_mode) else None
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


class _Bounded:
    """A tar stream read in pieces of at most CHUNK bytes, never past its known length."""

    def __init__(self, stream, length: int | None):
        self.stream, self.length, self.position = stream, length, 0

    def read(self, size: int, what: str) -> bytes:
        if self.length is None and size > MAX_MEMBER:
            raise ShardError(
                f"{what}: a size of {size} bytes in a shard of unlisted length, over the "
                f"{MAX_MEMBER:,} a member may hold (corrupt or hostile)"
            )
        if size < 0 or (self.length is not None and self.position + size > self.length):
            end = "" if self.length is None else f" of the {self.length}-byte shard"
            raise ShardError(
                f"{what}: a size of {size} bytes at byte {self.position}{end} (corrupt or "
                "truncated)"
            )
        data = self.stream.read(min(size, CHUNK))
        if len(data) < size and data:
            data = self._rest(data, size)
        self.position += len(data)
        if len(data) != size:
            raise ShardError(f"{what}: {len(data)} of {size} bytes, then the file ends (truncated)")
        return data

    def _rest(self, first: bytes, size: int) -> bytes:
        pieces, held = [first], len(first)
        while held < size:
            piece = self.stream.read(min(size - held, CHUNK))
            if not piece:
                break
            pieces.append(piece)
            held += len(piece)
        return b"".join(pieces)

    def header(self, what: str) -> bytes | None:
        """The next 512-byte header, or None at the end of the archive or of the file."""
        if self.length is not None and self.position >= self.length:
            return None
        first = self.stream.read(BLOCK)
        header = first if len(first) in (0, BLOCK) else self._rest(first, BLOCK)
        self.position += len(header)
        if not header or header == bytes(BLOCK):
            return None
        if len(header) < BLOCK:
            raise ShardError(f"{what}: a cut header (truncated)")
        return header


def _pax_record(data: bytes, position: int, what: str) -> tuple[str, str, int]:
    """(key, value, end) of the PAX record ``"<length> <key>=<value>\n"`` at ``position``."""
    match = _PAX_LENGTH.match(data, position)
    length = int(match[1]) if match else 0
    end = position + length
    where = f"{what}: PAX record at byte {position}"
    if not match or length <= len(match[0]):
        text = data[position : position + 20].split(b" ", 1)[0].decode("ascii", "replace")
        raise ShardError(f"{where}: length {shorten(text)} is not a positive number (corrupt)")
    if end > len(data) or data[end - 1 : end] != b"\n":
        raise ShardError(
            f"{where}: length {length} runs past the {len(data)}-byte header or does not end "
            "a record (corrupt)"
        )
    key, equals, value = data[position + len(match[0]) : end - 1].partition(b"=")
    if not equals:
        raise ShardError(f"{where}: {shorten(key)} has no '=' (corrupt)")
    return key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"), end


def _pax(data: bytes, what: str) -> tuple[str | None, int | None]:
    """The (path, size) a PAX extended header sets for the next member (None: not set)."""
    records, position = {}, 0
    while position < len(data) and data[position] != 0:
        key, value, position = _pax_record(data, position, what)
        records[key] = value
    path, size = records.get("path"), records.get("size")
    if size is not None and not _DECIMAL.fullmatch(size):
        raise ShardError(f"{what}: PAX size {shorten(size)} is not a decimal number (corrupt)")
    return None if path is None else _name(path, what), None if size is None else int(size)


def _name(name: str, what: str) -> str:
    """A member name from a PAX or GNU long-name header: non-empty, bounded, no NUL."""
    if not name or "\0" in name or len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
        raise ShardError(f"{what}: member name {shorten(name)} is empty, too long or holds NUL")
    return name


def _header_name(header: bytes) -> str:
    member = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    prefix = header[345:500].split(b"\0", 1)[0]
    if header[257:262] == b"ustar" and prefix:
        member = prefix.decode("utf-8", "surrogateescape") + "/" + member
    return member


def _header_size(header: bytes, what: str) -> int:
    try:
        size = _number(header[124:136])
    except ValueError as err:
        raise ShardError(f"{what}: size field {err} (corrupt)") from None
    if size < 0:
        raise ShardError(f"{what}: a negative size, {size} (corrupt)")
    return size


def tar_members(stream, url: str, length: int | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular file in a tar stream, as Python's tarfile reads them (ustar,
    PAX and GNU long names; header checksums checked), at a fraction of its cost per member.
    ``length``: the stream's bytes (default: what ``stream_length`` finds), which no member may
    pass. The archive ends at its end-of-archive block or, as tarfile allows, at end of file."""
    source = _Bounded(stream, stream_length(stream) if length is None else length)
    name = size = None  # from a PAX or GNU long-name header, for the next member
    last = "the start of the archive"
    while (header := source.header(f"{url}: the member after {last}")) is not None:
        if not _checksum_ok(header):
            raise ShardError(f"{url}: the member after {last}: bad header checksum (corrupt)")
        member = name or _header_name(header)
        what = f"{url}: member {shown(member)}"
        member_size = _header_size(header, what) if size is None else size
        name = size = None
        kind = header[156:157]
        if kind in (_PAX, _PAX_GLOBAL, _LONG_NAME) and member_size > MAX_META:
            raise ShardError(f"{what}: a {member_size}-byte extended header (corrupt)")
        data = source.read(member_size, what)
        source.read(-member_size % BLOCK, what)
        if kind == _PAX:
            name, size = _pax(data, what)
        elif kind == _LONG_NAME:
            name = _name(data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"), what)
        elif kind in _FILES and not member.endswith("/"):  # old tars mark folders so
            last = member
            yield member, data


def check_shard_bytes(url: str, data: bytes, sha256: str | None, size: int | None = None) -> None:
    """The one check of a shard's bytes against its manifest entry, before anything parses
    them: its ``size`` and ``sha256`` where given (None or "": not listed); a ShardError of
    one line naming ``url`` otherwise."""
    if size is not None and len(data) != size:
        got = f"more than {size}" if len(data) > size else str(len(data))
        raise ShardError(f"{url}: {got} bytes, the manifest says {size} (truncated or replaced?)")
    if sha256:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ShardError(
                f"{url}: its sha256 {actual[:16]}… differs from the manifest's {sha256[:16]}… "
                "(replaced or corrupt)"
            )


def read_checked(url: str, size: int | None, sha256: str) -> bytes:
    """The whole of a shard, checked (``check_shard_bytes``) before anything parses it; never
    more than ``size`` + 1 bytes are read."""
    pieces, held = [], 0
    limit = None if size is None else size + 1
    with open_shard(url) as stream:
        try:
            while limit is None or held < limit:
                piece = stream.read(CHUNK if limit is None else min(CHUNK, limit - held))
                if not piece:
                    break
                pieces.append(piece)
                held += len(piece)
        except OSError as err:
            raise ShardError(f"{url}: cannot read the shard after {held} bytes: {err}") from err
    data = b"".join(pieces)
    check_shard_bytes(url, data, sha256, size)
    return data


def group_samples(stream, url: str, length: int | None = None) -> Iterator[dict]:
    """The samples of a tar stream in order, grouped as webdataset groups them: consecutive
    members of one key make ``{"__key__", "__url__", ext: bytes}``. An extension twice in one
    sample, a member name that is not ``<key>.<extension>`` or an unreadable tar is a
    ShardError naming ``url``. ``length`` as for ``tar_members``."""
    sample = None
    try:
        for member, data in tar_members(stream, url, length):
            key, ext = split_member(member)
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            if ext in sample:
                raise ShardError(f"{url}: sample {shown(key)} has two {shown(ext)} members")
            sample[ext] = data
    except (OSError, ValueError) as err:
        after = f"sample {shown(sample['__key__'])}" if sample else "its start"
        raise ShardError(f"{url}: unreadable tar after {after}: {err}") from err
    if sample is not None:
        yield sample


def bytes_samples(data: bytes, url: str) -> Iterator[dict]:
    """``group_samples`` of a shard's bytes in memory (checked before, by the caller)."""
    return group_samples(io.BytesIO(data), url, len(data))


def tar_samples(url: str, sha256: str | None = None, size: int | None = None) -> Iterator[dict]:
    """The samples of one shard in order, raw (member bytes, not decoded). With the manifest's
    ``sha256`` (and ``size``) the shard is read whole and checked before it is parsed."""
    if sha256 is not None:
        yield from bytes_samples(read_checked(url, size, sha256), url)
        return
    with open_shard(url) as stream:
        yield from group_samples(stream, url, size)


def check_count(url: str, count: int, expected: int | None, unit: str = "samples") -> None:
    """A shard that ended early (or holds more than listed) is an error naming it."""
    if expected is not None and count != expected:
        raise ShardError(
            f"{url}: {count} {unit} read, the manifest says {expected} (truncated or replaced?)"
        )
