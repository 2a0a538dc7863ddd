"""Hostile shard sets (issue 24): a shard set from a server is data, never a path or a loop.

Every hostile manifest and tar is built here, and remote ones are served by a real HTTP server on
127.0.0.1. A manifest's names, hashes and numbers are checked where it is read (one line naming
the URL, the field and the shortened value); writers build paths only inside their destination
(the traversal tests snapshot the whole temporary tree and find nothing outside the destination
and the cache created, changed or deleted); the tar reader bounds every header field, hashes a
shard before parsing it, and ``verify`` reads with it. A reader that hangs fails its test (each
runs in a thread joined with a generous limit) instead of hanging the suite.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sio.cli import get_cli
from sio.shardset import (
    ShardDataset,
    ShardError,
    ShardInfo,
    ShardStream,
    convert_shard_set,
    iter_samples,
    read_manifest,
    subset_shard_set,
    verify_shard_set,
)
from sio.shardset.format import shard_path
from sio.shardset.tario import CHUNK, MAX_MEMBER, tar_members

from .shardsets import grey_writer

BLOCK = 512
HANG_S = 60  # a guard against a hang, never a wait: every reader here answers in milliseconds


# --- a hang fails the test instead of the suite --------------------------------------------------


def outcome(call, *args, **kwargs):
    """``call``'s exception (None if it returned), run in a thread; the test fails if the call
    has not finished within HANG_S seconds (the hostile input made it loop or block)."""
    result: dict = {}

    def run():
        try:
            call(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_S)
    if thread.is_alive():
        pytest.fail(f"{getattr(call, '__name__', call)} still runs after {HANG_S} s: it hangs")
    return result.get("error")


def refused(call, *args, **kwargs) -> str:
    """The one-line ShardError message ``call`` must raise (promptly)."""
    error = outcome(call, *args, **kwargs)
    assert isinstance(error, ShardError), f"expected a ShardError, got {error!r}"
    message = str(error)
    assert "\n" not in message, message
    return message


def training_refused(url: str, out: Path, batch_size: int = 4) -> str:
    """The one-line ShardError of one epoch of training from ``url`` into ``out``."""
    from sio.train import train_classifier
    from sio.train.config import TrainConfig

    config = TrainConfig(epochs=1, batch_size=batch_size, num_workers=0)
    return refused(
        train_classifier, real=url, synthetic=None, alpha=1.0, seed=0, config=config, out=out
    )


# --- the tree before and after ------------------------------------------------------------------


def snapshot(root: Path, *allowed: Path) -> dict[str, tuple]:
    """Every file, folder and link under ``root`` (links not followed), but those inside
    ``allowed``: its kind, and for a file or link its size, mtime and content (the bytes'
    sha256, the link's target). A folder's mtime is left out: what changed in it shows as its
    entries (and making ``allowed`` changes its parent's mtime)."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if any(path == a or a in path.parents for a in allowed):
                continue
            info, key = path.lstat(), str(path.relative_to(root))
            if stat.S_ISDIR(info.st_mode):
                state[key] = (info.st_mode,)
                continue
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            else:
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            state[key] = (info.st_mode, info.st_size, info.st_mtime_ns, content)
    return state


# --- a good set, served -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(folder, base URL): a folder served over HTTP on 127.0.0.1, holding the good set
    ``good`` (8 grey 8x8 samples in two shards); tests add their hostile copies beside it."""
    root = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(0)
    with grey_writer(root / "good", "real", ("a", "b"), shard_size=4) as writer:
        for i in range(8):
            image = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            writer.write(f"k{i:04d}", image, i % 2, {"i": i})

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def hostile_copy(served, name: str, edit=None, shards: dict[str, bytes] | None = None) -> str:
    """A copy of the good set named ``name`` beside it, its manifest passed through ``edit`` and
    its shards replaced by ``shards``; returns its URL."""
    root, base = served
    folder = root / name
    shutil.copytree(root / "good", folder)
    for shard, data in (shards or {}).items():
        (folder / shard).write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    if edit is not None:
        edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return f"{base}/{name}"


def set_field(path: str, value):
    """An edit setting one manifest field: ``"channels"`` or ``"shards.1.sha256"``."""

    def edit(manifest):
        *parents, last = path.split(".")
        target = manifest
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[int(last) if isinstance(target, list) else last] = value

    return edit


# --- 1. every name, hash and number of a manifest is checked where it is read -------------------

LONG = "x" * 5000
HOSTILE_FIELDS = [
    ("shards.0.sha256", "../../../victim/important", "shards[0].sha256"),
    ("shards.0.sha256", "ABCDEF" + "0" * 58, "shards[0].sha256"),
    ("shards.0.sha256", 12, "shards[0].sha256"),
    ("shards.1.name", "../../x-escape.tar", "shards[1].name"),
    ("shards.1.name", "/abs/path/X.tar", "shards[1].name"),
    ("shards.1.name", "a\\b.tar", "shards[1].name"),
    ("shards.1.name", "..", "shards[1].name"),
    ("shards.1.name", "x\0.tar", "shards[1].name"),
    ("shards.1.name", "shard-000000.tar", "shards[1].name"),  # listed twice
    ("shards.1.name", LONG + ".tar", "shards[1].name"),
    ("shards.0.num_samples", 0, "shards[0].num_samples"),
    ("shards.0.num_samples", -4, "shards[0].num_samples"),
    ("shards.0.num_samples", True, "shards[0].num_samples"),
    ("shards.0.num_samples", 4.0, "shards[0].num_samples"),
    ("shards.0.bytes", -1, "shards[0].bytes"),
    ("shards.0.bytes", "10", "shards[0].bytes"),
    ("image_size", "8x8", "image_size"),
    ("image_size", [8], "image_size"),
    ("image_size", [0, 8], "image_size[0]"),
    ("image_size", [8, 10**9], "image_size[1]"),
    ("channels", 1e308, "channels"),
    ("channels", 2, "channels"),
    ("channels", True, "channels"),
    ("class_names", ["a", 1], "class_names[1]"),
    ("class_counts", [4, -1], "class_counts[1]"),
    ("class_counts", [4, 4, 0], "class_counts"),
    ("kind", ["real"], "kind"),
    ("pixel_mean", [float("nan")], "pixel_mean[0]"),
    ("shards", {"name": "x"}, "shards"),
    ("shards.0", "shard-000000.tar", "shards[0]"),
]


@pytest.mark.parametrize(
    ("case", "path", "value", "field"), [(i, *fields) for i, fields in enumerate(HOSTILE_FIELDS)]
)
def test_a_hostile_manifest_field_is_one_line_naming_url_field_value(
    served, case, path, value, field
):
    url = hostile_copy(served, f"field-{case}", set_field(path, value))
    message = refused(read_manifest, url)
    assert message.startswith(f"{url}/manifest.json: {field} is "), message
    assert len(message) <= len(f"{url}/manifest.json: {field} is ") + 60 + 80, message
    # verify and every reader refuse it the same way (verify said "ok" for "8x8" and 1e308)
    assert refused(verify_shard_set, url) == message
    assert refused(ShardStream, url) == message


def test_a_manifest_field_that_is_missing_is_named(served):
    url = hostile_copy(served, "no-channels", lambda m: m.pop("channels"))
    assert refused(read_manifest, url) == f"{url}/manifest.json: channels is missing: " + (
        "a manifest field is missing"
    )


@pytest.mark.parametrize(
    ("case", "text"),
    [
        ("5000-digit-int", "1" * 5000),
        ("deep-nesting", "[" * 100_000),
        ("a-list", '["format"]'),
        ("a-string", '"sio-shards/1"'),
    ],
)
def test_a_manifest_that_is_not_a_json_object_is_one_line(served, case, text):
    url = hostile_copy(served, f"json-{case}")
    (served[0] / f"json-{case}" / "manifest.json").write_text(text)
    message = refused(read_manifest, url)
    assert message.startswith(f"{url}/manifest.json: "), message
    assert len(message) < 300


def test_the_good_set_and_a_served_on_demand_manifest_are_accepted(served):
    """What the writers and ``sio serve`` write stays readable: plain names, and no size,
    sha256, class counts or pixel statistics for a set served on demand."""
    root, base = served
    assert read_manifest(f"{base}/good").num_samples == 8
    assert verify_shard_set(f"{base}/good") == 8

    def on_demand(manifest):
        for shard in manifest["shards"]:
            shard.update(bytes=None, sha256=None)
        manifest.update(class_counts=[], pixel_mean=[], pixel_std=[])

    url = hostile_copy(served, "on-demand", on_demand)
    assert read_manifest(url).shards[0].sha256 is None
    assert len(list(iter_samples(url))) == 8
    assert "no size and sha256" in refused(verify_shard_set, url)


def test_the_node_cache_cannot_be_led_outside_itself(served, tmp_path, monkeypatch):
    """A remote set whose sha256 is ``../victim/important``: the node cache stores shards as
    ``<cache>/<sha256>.tar`` and deleted ``victim/important.tar``; now training refuses the
    manifest, naming the field, and nothing outside the cache and the run folder changes."""
    cache, victim = tmp_path / "cache", tmp_path / "victim"
    cache.mkdir()
    victim.mkdir()
    (victim / "important.tar").write_bytes(b"the user's file")
    monkeypatch.setenv("SIO_CACHE_DIR", str(cache))
    url = hostile_copy(served, "cache-escape", set_field("shards.0.sha256", "../victim/important"))
    before = snapshot(tmp_path, cache, tmp_path / "run")
    message = training_refused(url, tmp_path / "run")
    assert "shards[0].sha256 is '../victim/important'" in message
    assert snapshot(tmp_path, cache, tmp_path / "run") == before
    assert (victim / "important.tar").read_bytes() == b"the user's file"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("shards.0.num_samples", 0, "shards[0].num_samples"),
        ("shards.0.num_samples", 10**30, "shards[0].num_samples"),
        ("image_size", "8x8", "image_size"),
        ("image_size", [8, 16_385], "image_size[1]"),
        ("channels", 1e308, "channels"),
    ],
)
def test_training_refuses_a_hostile_manifest_in_one_line(served, tmp_path, path, value, field):
    """A shard count of 0 trained on part of the set silently; "8x8" and 1e308 crashed with
    dozens of frames. Now the manifest is refused before anything is read."""
    url = hostile_copy(served, f"train-{field}-{len(repr(value))}", set_field(path, value))
    message = training_refused(url, tmp_path / "run")
    assert f"{url}/manifest.json: {field} is " in message


def test_a_batch_the_manifest_makes_too_large_for_memory_is_refused_before_allocating(
    served, tmp_path
):
    """``image_size: [60000, 60000]`` made the loader allocate 429 GiB for one batch; now a
    batch over a quarter of the machine's memory is one line naming the set and its size."""
    url = hostile_copy(served, "train-huge-images", set_field("image_size", [16_384, 16_384]))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    batch = memory // 4 // 16_384**2 + 1  # just over the quarter, whatever the machine
    message = training_refused(url, tmp_path / "run", batch_size=int(batch))
    assert message.startswith(f"{url}: image_size 16384x16384") and "over a quarter" in message


# --- paths are built only inside their destination ----------------------------------------------


@pytest.mark.parametrize("case", ["relative", "absolute"])
def test_convert_of_a_remote_set_writes_nothing_outside_its_destination(served, tmp_path, case):
    """``sio shards convert URL DST`` wrote a shard named ``../../x-escape.tar`` or
    ``/abs/path/X.tar`` where its name pointed."""
    name = "../../x-escape.tar" if case == "relative" else str(tmp_path / "abs" / "X.tar")
    (tmp_path / "x-escape.tar").write_bytes(b"the user's file")  # what ../../ reaches from dst
    (tmp_path / "abs").mkdir()
    destination = tmp_path / "out" / "dst"
    url = hostile_copy(served, f"convert-{case}", set_field("shards.1.name", name))
    # the server answers that name with a real shard (where its path normalises to)
    root = served[0]
    answered = root / "x-escape.tar" if case == "relative" else root / f"convert-{case}" / name[1:]
    answered.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / "good" / "shard-000001.tar", answered)
    before = snapshot(tmp_path, destination)
    result = CliRunner().invoke(
        get_cli(), ["shards", "convert", url, str(destination), "--encoding", "records"]
    )
    assert result.exit_code != 0
    assert result.output.strip().count("\n") == 0 and "shards[1].name is " in result.output
    assert snapshot(tmp_path, destination) == before
    assert not list((tmp_path / "abs").iterdir())


def test_subset_links_nothing_outside_its_destination(tmp_path):
    """A local manifest naming ``../X.tar``: subset hard-linked the file beside the source to
    the same name beside the destination."""
    source, destination = tmp_path / "src" / "set", tmp_path / "out" / "dst"
    with grey_writer(source, "synthetic", ("a", "b"), shard_size=2) as writer:
        for i in range(4):
            writer.write(f"k{i}", np.full((8, 8), i, np.uint8), i % 2, {})
    shutil.copyfile(source / "shard-000000.tar", tmp_path / "src" / "X.tar")
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../X.tar"
    (source / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(tmp_path, destination)
    message = refused(subset_shard_set, source, 2, destination)
    assert "shards[0].name is '../X.tar'" in message
    assert snapshot(tmp_path, destination) == before
    result = CliRunner().invoke(
        get_cli(), ["shards", "subset", str(source), str(destination), "--num", "2"]
    )
    assert result.exit_code != 0 and "shards[0].name" in result.output
    assert snapshot(tmp_path, destination) == before


def forged(manifest, index: int, name: str):
    """``manifest`` with shard ``index`` renamed past the checks (as a bug or a later change
    might): what the writers' own path check must still refuse."""
    shard = manifest.shards[index]
    object.__setattr__(shard, "name", name)
    return manifest


def test_the_writers_check_their_paths_even_past_the_manifest_check(tmp_path, monkeypatch):
    import sio.shardset.convert as convert_module
    import sio.shardset.subset as subset_module

    source = tmp_path / "src" / "set"
    with grey_writer(source, "real", ("a", "b"), shard_size=2) as writer:
        for i in range(4):
            writer.write(f"k{i}", np.full((8, 8), i, np.uint8), i % 2, {})
    shutil.copyfile(source / "shard-000001.tar", tmp_path / "src" / "X.tar")
    destination = tmp_path / "out" / "dst"
    destination.parent.mkdir()
    before = snapshot(tmp_path, destination)
    for module, call in (
        (convert_module, lambda: convert_shard_set(source, destination, "records")),
        (subset_module, lambda: subset_shard_set(source, 4, destination)),
    ):
        monkeypatch.setattr(
            module, "read_manifest", lambda where: forged(read_manifest(where), 1, "../X.tar")
        )
        assert "shard name is '../X.tar'" in refused(call)
        assert snapshot(tmp_path, destination) == before
    for bad in ("../x.tar", "/etc/x.tar", "a/b.tar", "x.tar/..", ".tar", "x.tmp"):
        with pytest.raises(ShardError, match="not a plain shard file name"):
            shard_path(destination, bad)
    assert shard_path(destination, "shard-000001.tar") == destination / "shard-000001.tar"


def test_a_shard_line_is_checked_wherever_it_is_made():
    with pytest.raises(ShardError, match=r"^sha256 is '\.\./x': not a sha256"):
        ShardInfo("shard-000000.tar", 4, 10, "../x")
    with pytest.raises(ShardError, match=r"^num_samples is 0: must be an integer in 1\.\."):
        ShardInfo("shard-000000.tar", 0, 10, "0" * 64)
    assert ShardInfo("part_7.x-y.tar", 1, 0, None).name == "part_7.x-y.tar"


# --- 2. the tar reader cannot loop or over-read -------------------------------------------------


def tar_header(name: bytes, size_field: bytes, kind: bytes = b"0") -> bytes:
    """A ustar header with a correct checksum; ``size_field`` is the raw 12-byte field."""
    header = bytearray(BLOCK)
    header[: len(name)] = name
    header[100:108] = b"0000444\0"
    header[108:124] = b"0000000\0" * 2
    header[124:136] = size_field
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8
    header[156:157] = kind
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def octal(size: int) -> bytes:
    return b"%011o\0" % size


def base256(size: int) -> bytes:
    if size >= 0:
        return b"\x80" + size.to_bytes(11, "big")
    return (size % 256**12).to_bytes(12, "big")  # two's complement: first byte 0xff


def member(name: bytes, data: bytes, kind: bytes = b"0", size_field: bytes | None = None) -> bytes:
    header = tar_header(name, octal(len(data)) if size_field is None else size_field, kind)
    return header + data + bytes(-len(data) % BLOCK)


def pax_record(key: bytes, value: bytes) -> bytes:
    """A well-formed ``"<length> <key>=<value>\\n"`` (the length counts its own digits)."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax(records: bytes) -> bytes:
    return member(b"././@PaxHeader", records, b"x")


END = bytes(2 * BLOCK)
SAMPLE = member(b"k0.cls", b"0") + member(b"k0.json", b"{}")
HOSTILE_TARS = {
    "pax-length-0": (
        pax(b"0 path=k0.png\n") + SAMPLE + END,
        r"PAX record at byte 0: length '0' is not a positive",
    ),
    "pax-length-negative": (
        pax(b"-9 path=k0.png\n") + SAMPLE + END,
        r"length '-9' is not a positive number",
    ),
    "pax-length-past-the-header": (pax(b"99 path=k0.png\n") + SAMPLE + END, r"length 99 runs"),
    "pax-record-without-equals": (pax(b"9 pathk0\n") + SAMPLE + END, r"has no '='"),
    "pax-size-negative": (pax(pax_record(b"size", b"-1")) + SAMPLE + END, r"PAX size '-1'"),
    "pax-size-not-decimal": (pax(pax_record(b"size", b" 1e3")) + SAMPLE + END, r"PAX size"),
    "pax-size-10^15": (
        pax(pax_record(b"size", b"1000000000000000")) + SAMPLE + END,
        r"member k0\.cls: a size of 1000000000000000 bytes at byte 1536 of the 4096-byte",
    ),
    "pax-path-empty": (pax(pax_record(b"path", b"")) + SAMPLE + END, r"member name '' is empty"),
    "pax-header-of-2-MiB": (
        tar_header(b"././@PaxHeader", octal(2 << 20), b"x") + SAMPLE + END,
        r"a 2097152-byte extended header",
    ),
    "base-256-size-10^15": (
        member(b"k0.png", b"x" * 600, size_field=base256(10**15)) + SAMPLE + END,
        r"member k0\.png: a size of 1000000000000000 bytes at byte 512 of the 4608-byte shard",
    ),
    "base-256-size-negative": (
        member(b"k0.png", b"x", size_field=base256(-5)) + SAMPLE + END,
        r"member k0\.png: a negative size, -5",
    ),
    "octal-size-not-octal": (
        member(b"k0.png", b"x", size_field=b"0000000009x\0") + SAMPLE + END,
        r"member k0\.png: size field .* is not an octal number",
    ),
    "member-cut-short": (member(b"k0.png", b"x" * 600)[:700], r"a size of 600 bytes at byte 512"),
    "bad-checksum": (
        b"\x01" + member(b"k0.png", b"x")[1:] + END,
        r"the member after the start of the archive: bad header checksum",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_a_hostile_tar_header_is_refused_at_once(case):
    data, expected = HOSTILE_TARS[case]
    message = refused(lambda: list(tar_members(io.BytesIO(data), "mem://shard.tar")))
    assert message.startswith("mem://shard.tar: "), message
    assert re.search(expected, message), message


class Unsized(io.RawIOBase):
    """A stream of unknown length (no fileno, no size) that records the largest read asked."""

    def __init__(self, data: bytes):
        self.data, self.largest = io.BytesIO(data), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.largest = max(self.largest, len(buffer))
        return self.data.readinto(buffer)

    def read(self, size: int = -1) -> bytes:
        self.largest = max(self.largest, size)
        return self.data.read(size)


def test_a_huge_size_on_a_stream_of_unknown_length_is_read_in_pieces():
    """Where the shard's length is unknown, a size of 10^15 is refused at once (over the most a
    member may hold), and a size within it never becomes one allocation: the reader asks for at
    most CHUNK bytes at a time and stops at the end of the file."""
    data, _ = HOSTILE_TARS["base-256-size-10^15"]
    message = refused(lambda: list(tar_members(Unsized(data), "mem://shard.tar")))
    assert "1000000000000000 bytes in a shard of unlisted length, over the" in message
    stream = Unsized(member(b"k0.png", bytes(4096), size_field=base256(MAX_MEMBER)))
    message = refused(lambda: list(tar_members(stream, "mem://shard.tar")))
    assert f"member k0.png: 4096 of {MAX_MEMBER} bytes, then the file ends" in message
    assert 0 < stream.largest <= CHUNK


def test_the_reader_reads_what_tarfile_writes():
    """PAX long and non-ASCII names, GNU long names and folders, as Python's tarfile reads them."""
    import tarfile

    names = ["k" * 150 + ".png", "ключ.cls", "d/" + "n" * 120 + ".json"]
    expected = [(name, bytes(i + 1)) for i, name in enumerate(names)]
    for format_ in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=format_) as tar:
            folder = tarfile.TarInfo("d")
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
            for name, data in expected:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        assert list(tar_members(io.BytesIO(buffer.getvalue()), "mem://x.tar")) == expected


def hostile_shard(served, case: str, data: bytes, rehash: bool) -> str:
    """The good set with shard 0 replaced by ``data``; ``rehash``: the manifest lists the new
    bytes' size and sha256 (so only parsing can find the fault), else the old ones."""

    def edit(manifest):
        if rehash:
            manifest["shards"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    return hostile_copy(served, f"tar-{case}-{rehash}", edit, {"shard-000000.tar": data})


@pytest.mark.parametrize(
    "case", ["pax-length-0", "pax-length-negative", "base-256-size-10^15", "pax-size-10^15"]
)
def test_every_reader_and_verify_refuse_a_hostile_tar(served, case):
    """The PAX loop hung training and evaluation; verify hung on the 10^15 size and said "ok"
    for a negative PAX length. Every reader of the contract now names the shard at once."""
    data, _ = HOSTILE_TARS[case]
    url = hostile_shard(served, case, data, True)
    local = str(served[0] / f"tar-{case}-True")  # the same set, read from its folder
    for location in (url, local):
        shard = f"{location}/shard-000000.tar"
        for read in (
            verify_shard_set,
            lambda where: list(iter_samples(where)),
            lambda where: list(ShardStream(where)),
        ):
            message = refused(read, location)
            assert message.startswith(f"{shard}: ") and "(corrupt" in message, message
    message = refused(lambda: ShardDataset(local)[0])
    assert message.startswith(f"{local}/shard-000000.tar: "), message


def test_verify_cli_says_no_in_one_line(served):
    """A negative PAX record length before a whole, valid shard: verify said "ok"."""
    good = (served[0] / "good" / "shard-000000.tar").read_bytes()
    url = hostile_shard(served, "cli", pax(b"-9 path=k0.png\n") + good, True)
    result = CliRunner().invoke(get_cli(), ["shards", "verify", url])
    assert result.exit_code != 0 and "ok" not in result.output
    assert result.output.strip().count("\n") == 0 and "PAX record" in result.output


@pytest.mark.parametrize("case", ["pax-length-0", "base-256-size-10^15"])
def test_a_shard_is_hashed_before_it_is_parsed(served, case):
    """With the manifest's old sha256, a hostile shard is refused by its hash: the parser
    never saw it (it would have named the PAX record or the size)."""
    data, _ = HOSTILE_TARS[case]
    url = hostile_shard(served, case, data, False)
    sized = hostile_copy(
        served, f"sized-{case}", set_field("shards.0.bytes", len(data)), {"shard-000000.tar": data}
    )
    for location, cause in (
        (url, "bytes, the manifest says"),
        (sized, "differs from the manifest's"),
    ):
        for read in (verify_shard_set, lambda where: list(iter_samples(where))):
            message = refused(read, location)
            assert message.startswith(f"{location}/shard-000000.tar: "), message
            assert cause in message and "PAX" not in message and "size of" not in message


def test_training_refuses_a_pax_loop(served, tmp_path):
    """Training (streaming from HTTP) hung at 100 % CPU on a PAX record of length 0."""
    data, _ = HOSTILE_TARS["pax-length-0"]
    url = hostile_shard(served, "train", data, True)
    message = training_refused(url, tmp_path / "run")
    assert "PAX record at byte 0" in message, message


def test_a_shard_without_a_listed_sha256_is_bounded_by_its_http_length(served):
    """A set served on demand lists no sha256 and size, so its shards are parsed as they
    stream; the HTTP body's length still bounds every member (no read of 10^15 bytes)."""
    data, _ = HOSTILE_TARS["base-256-size-10^15"]

    def unlisted(manifest):
        for shard in manifest["shards"]:
            shard.update(bytes=None, sha256=None)

    url = hostile_copy(served, "unlisted-huge", unlisted, {"shard-000000.tar": data})
    message = refused(lambda: list(iter_samples(url)))
    assert message.startswith(f"{url}/shard-000000.tar: member k0.png: a size of "), message
    assert f"at byte 512 of the {len(data)}-byte shard" in message
