"""Tar shards to raw samples, from a path or a URL, with every error naming shard and member.

A shard is opened through webdataset's ``gopen`` (with sio's streaming ``s3://`` and
``http(s)://`` handlers registered, see sio/core/storage.py) and read as a tar stream by a small
reader of its own (ustar, PAX and GNU long names, as Python's tarfile reads them, a few times
faster per member; tarfile dominated the reading of small images). Members are grouped into
samples by key exactly as webdataset groups them (the key is the member name up to the first
dot of its basename), so a sample is ``{"__key__", "__url__", ext: bytes}``. A header with a bad
checksum or data cut short raises ShardError naming the URL and the member. Like tarfile, the
reader ends quietly at end of file on a member boundary; ``check_count`` catches that cut
against the manifest's sample count.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import webdataset

from sio.core.storage import register_url_schemes
from sio.shardset.format import ShardError

_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: split at the first dot of the basename."""
    match = _MEMBER.match(name)
    if not match:
        raise ValueError(f"member {name!r} is not <key>.<extension>")
    return match.group(1), match.group(2)


def open_shard(url: str):
    register_url_schemes()
    try:
        return webdataset.gopen(url)
    except FileNotFoundError as err:
        raise ShardError(f"{url}: shard listed in the manifest is missing ({err})") from None
    except OSError as err:
        raise ShardError(f"{url}: cannot open shard: {err}") from err


BLOCK = 512
_LONG_NAME, _PAX, _PAX_GLOBAL, _FILES = b"L", b"x", b"g", (b"0", b"\0", b"7")


def _number(field: bytes) -> int:
    """A tar header's numeric field: octal text, or base-256 when its first bit is set."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").lstrip(b" ")
    return int(text, 8) if text else 0


def _pax(data: bytes) -> dict[str, str]:
    """The records ``"<length> <key>=<value>\n"`` of a PAX extended header."""
    records, position = {}, 0
    while position < len(data) and data[position : position + 1] != b"\0":
        length = int(data[position : data.index(b" ", position)])
        key, _, value = data[data.index(b" ", position) + 1 : position + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


def _checksum_ok(header: bytes) -> bool:
    """The header's checksum field against its bytes (that field counted as 8 spaces),
    unsigned or, as some old writers made it, signed."""
    stored = _number(header[148:156])
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if stored == unsigned:
        return True
    return stored == unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)


def _read(stream, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ShardError(f"{what}: {len(data)} of {size} bytes, then the file ends (truncated)")
    return data


def tar_members(stream, url: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular file in a tar stream, as Python's tarfile reads them (ustar,
    PAX and GNU long names; header checksums checked), at a fraction of its cost per member.
    The archive ends at its end-of-archive block or, as tarfile allows, at end of file."""
    name = size = None  # from a PAX or GNU long-name header, for the next member
    last = "the start of the archive"
    while True:
        header = stream.read(BLOCK)
        if not header or header == bytes(BLOCK):
            return
        where = f"{url}: the member after {last}"
        if len(header) < BLOCK:
            raise ShardError(f"{where}: a cut header (truncated)")
        if not _checksum_ok(header):
            raise ShardError(f"{where}: bad header checksum (corrupt)")
        member = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        prefix = header[345:500].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and prefix:
            member = prefix.decode("utf-8", "surrogateescape") + "/" + member
        member, length = name or member, _number(header[124:136]) if size is None else size
        name = size = None
        data = _read(stream, length, f"{url}: member {member}")
        _read(stream, -length % BLOCK, f"{url}: member {member}")
        kind = header[156:157]
        if kind == _PAX:
            records = _pax(data)
            name, size = records.get("path"), int(records["size"]) if "size" in records else None
        elif kind == _LONG_NAME:
            name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind in _FILES and not member.endswith("/"):  # old tars mark folders so
            last = member
            yield member, data


def tar_samples(url: str) -> Iterator[dict]:
    """The samples of one shard in order, raw (member bytes, not decoded)."""
    sample = None
    with open_shard(url) as stream:
        try:
            for member, data in tar_members(stream, url):
                key, ext = split_member(member)
                if sample is None or key != sample["__key__"]:
                    if sample is not None:
                        yield sample
                    sample = {"__key__": key, "__url__": url}
                if ext in sample:
                    raise ShardError(f"{url}: sample {key} has two {ext} members")
                sample[ext] = data
        except (OSError, ValueError) as err:
            after = f"sample {sample['__key__']}" if sample else "its start"
            raise ShardError(f"{url}: unreadable tar after {after}: {err}") from err
    if sample is not None:
        yield sample


def check_count(url: str, count: int, expected: int | None, unit: str = "samples") -> None:
    """A shard that ended early (or holds more than listed) is an error naming it."""
    if expected is not None and count != expected:
        raise ShardError(
            f"{url}: {count} {unit} read, the manifest says {expected} (truncated or replaced?)"
        )
