"""A minimal tar writer for shards, byte-identical to ``webdataset.TarWriter(encoder=False,
mtime=0)`` at a fraction of its per-member cost.

webdataset writes each member through ``tarfile.addfile`` (a copied ``TarInfo``, a PAX header
check, a stream buffer); for 32x32 PNGs that costs about as much as encoding the image. Here each
header is a fixed template (ustar, mode 0444, owner ``bigdata``, mtime 0) with the name, size
and checksum filled in, which is exactly what ``tarfile`` produces when no PAX extension is
needed; members that would need one (names over 100 bytes or not ASCII) get ``tarfile``'s own
header. The archive ends as ``tarfile`` ends it: two zero blocks, then zeros up to a multiple of
the 10,240-byte record. The sha256 and size are computed while writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
from pathlib import Path

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
NUL = b"\0"


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uname = info.gname = "bigdata"
    return info


TEMPLATE = _tarinfo("", 0).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
# the header's checksum is the sum of its bytes with the checksum field as 8 spaces: the
# template's share of it, without the name and size fields, is the same for every member
_FIXED = TEMPLATE[100:124], TEMPLATE[136:148], TEMPLATE[156:]
_FIXED_SUM = sum(_FIXED[0]) + sum(_FIXED[1]) + sum(_FIXED[2]) + 8 * ord(" ")


def member_header(name: str, size: int) -> bytes:
    """The 512-byte header tarfile would write for this member (PAX format, as webdataset)."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > 100 or not encoded.isascii() or size >= 8**11:
        return _tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\0" % size
    checksum = _FIXED_SUM + sum(encoded) + sum(size_field)
    name_field = encoded + NUL * (100 - len(encoded))
    return b"".join(
        (name_field, _FIXED[0], size_field, _FIXED[1], b"%06o\0 " % checksum, _FIXED[2])
    )


class TarShard:
    """One tar file: ``add(key, {ext: bytes})`` per sample (members in sorted extension order,
    as webdataset writes them), then ``close()`` -> (size, sha256), or ``abort()``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # a large buffer: one system call per megabyte, not per sample
        self._file = open(self.path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self._digest = hashlib.sha256()
        self.size = 0

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._digest.update(data)
        self.size += len(data)

    def add(self, key: str, members: dict[str, bytes]) -> None:
        chunks = []
        for ext in sorted(members):
            data = members[ext]
            chunks += [member_header(f"{key}.{ext}", len(data)), data, NUL * (-len(data) % BLOCK)]
        self._write(b"".join(chunks))

    def close(self) -> tuple[int, str]:
        end = 2 * BLOCK
        end += -(self.size + end) % RECORD
        self._write(NUL * end)
        self._file.close()
        return self.size, self._digest.hexdigest()

    def abort(self) -> None:
        """Close and remove the file, whatever closing says (on a full disk the buffer's last
        write fails again; the error being handled is the one to show)."""
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)
