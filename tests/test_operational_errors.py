"""Operational errors are one line: a full disk, a read-only folder, no permission, a bad S3
bucket name, a checkpoint that is a malicious pickle, truncated or no state dict. Each, through
the real ``sio`` command, exits 1 with one ``Error:`` line naming the path and the cause and no
traceback (``sio --debug`` shows it), and leaves no half-written file under a final name.

The file system's refusals are injected (tests run as root, whom chmod does not stop): a file
whose write fails with ENOSPC once the disk's room is used, as write(2) does (naming no path),
and a folder whose every write fails with EROFS or EACCES."""

from __future__ import annotations

import builtins
import errno
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sio.cli import get_cli
from sio.core.files import atomic_path, filesystem_error, stale_temporaries
from sio.core.storage import split_s3
from sio.evaluate import ActivationBank
from sio.evaluate.models import ModelError, build_model
from sio.train.checkpoint import CHECKPOINT_FORMAT
from sio.train.models import build_classifier

from .shardsets import two_class_set

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN_CONFIG = "train: {epochs: 1, batch_size: 8, num_workers: 0, crop_padding: 0}\n"


def one_error(output: str) -> str:
    """The only ``Error:`` line of a failed command, which shows no traceback."""
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def sio(*args) -> object:
    return CliRunner().invoke(get_cli(), [str(a) for a in args])


@pytest.fixture(scope="module")
def real_set(tmp_path_factory):
    return two_class_set(tmp_path_factory.mktemp("sets") / "real")


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "pipeline.yaml"
    path.write_text(TRAIN_CONFIG)
    return path


@pytest.fixture
def activations(tmp_path):
    """A small activations file: ``sio evaluate --activations`` scores it in a moment."""
    rng = np.random.default_rng(0)
    sizes = {"train": 12, "val": 5, "test": 7}
    bank = ActivationBank(
        fc_weight=rng.normal(size=(3, 4)).astype(np.float32),
        fc_bias=rng.normal(size=3).astype(np.float32),
        id_features={s: rng.normal(size=(n, 4)).astype(np.float32) for s, n in sizes.items()},
        id_labels={s: rng.integers(0, 3, n).astype(np.int64) for s, n in sizes.items()},
        ood={"near": {"a": rng.normal(size=(6, 4)).astype(np.float32)}, "far": {}},
    )
    path = tmp_path / "act.npz"
    np.savez(path, **bank.to_npz_dict())
    return path


# --- a full disk -----------------------------------------------------------------------------


class FullDisk(io.FileIO):
    """A file on a disk with ``ROOM`` bytes left: the write that passes it stores what fits and
    fails with ENOSPC, naming no path, as write(2) does."""

    ROOM = 2048

    def write(self, data) -> int:
        room = self.ROOM - self.tell()
        if len(data) > room:
            super().write(bytes(memoryview(data)[: max(room, 0)]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def full_disk_open(path, mode="r", *args, **kwargs):
    if "w" not in mode:
        return builtins.open(path, mode, *args, **kwargs)
    return FullDisk(path, "w")


def test_a_full_disk_while_training_is_one_line_and_leaves_no_checkpoint(
    tmp_path, real_set, config, monkeypatch
):
    """The checkpoint (torch's own zip writer, through the file) fills the disk: one line naming
    checkpoint.pt, the temporary removed; ``sio --debug`` shows the traceback too."""
    import sio.core.resumable as checkpoint_module  # the trainers' one checkpoint writer

    monkeypatch.setattr(checkpoint_module, "open", full_disk_open, raising=False)
    out = tmp_path / "run"
    args = ["train", "--real", real_set, "--alpha", "1", "--out", out, "--config", config]
    result = sio(*args, "--device", "cpu")
    assert result.exit_code == 1
    assert one_error(result.output) == f"Error: {out}/checkpoint.pt: no space left on device"
    assert not (out / "checkpoint.pt").exists() and not stale_temporaries(out)
    debug = sio("--debug", *args, "--device", "cpu")
    assert debug.exit_code == 1 and "Traceback" in debug.output
    assert debug.output.rstrip().endswith(f"Error: {out}/checkpoint.pt: no space left on device")


def test_a_full_disk_while_evaluating_is_one_line_and_leaves_no_results(
    tmp_path, activations, monkeypatch
):
    class NearlyFull(FullDisk):
        ROOM = 16

    def write_text(self, data, *args, **kwargs):  # every text file sio writes
        with NearlyFull(self, "w") as file:
            return file.write(data.encode())

    monkeypatch.setattr(Path, "write_text", write_text)
    out = tmp_path / "eval"
    result = sio("evaluate", "--activations", activations, "--detectors", "msp", "--out", out)
    assert result.exit_code == 1
    assert one_error(result.output) == f"Error: {out}/results.json: no space left on device"
    assert not (out / "results.json").exists() and not stale_temporaries(out)


def test_atomic_path_names_the_final_path_and_keeps_the_old_file(tmp_path):
    """A write that fails for want of room leaves the old file and no temporary; the error names
    the final path, not the temporary; an error of another file (an input) keeps its name."""
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(OSError) as raised, atomic_path(path) as tmp, FullDisk(tmp, "w") as file:
        file.write(b"x" * (FullDisk.ROOM + 1))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert filesystem_error(raised.value) == f"{path}: no space left on device"
    assert path.read_text() == "old" and not stale_temporaries(tmp_path)
    elsewhere = tmp_path / "inputs" / "a.json"
    with pytest.raises(PermissionError) as raised, atomic_path(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(elsewhere))
    assert filesystem_error(raised.value) == f"{elsewhere}: permission denied"


# --- a folder the file system refuses to write ------------------------------------------------


def refuse_writes(monkeypatch, folder: Path, code: int) -> None:
    """Every folder made or file opened for writing inside ``folder`` fails with ``code`` (an
    existing folder's mkdir says it exists first, as on Linux)."""
    real_mkdir, real_open = os.mkdir, builtins.open

    def inside(path) -> bool:
        return Path(os.fsdecode(path)).resolve().is_relative_to(folder.resolve())

    def mkdir(path, mode=0o777, **kwargs):
        if inside(path) and not os.path.exists(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_mkdir(path, mode, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and inside(file):
            raise OSError(code, os.strerror(code), os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(builtins, "open", open_)


@pytest.mark.parametrize(
    "code, cause",
    [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")],
)
def test_a_read_only_or_forbidden_folder_is_one_line_for_every_stage(
    tmp_path, real_set, config, activations, monkeypatch, code, cause
):
    """train, evaluate, report and run into a folder (new, or existing) that cannot be written:
    one line naming what could not be made and why; nothing appears in the folder."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    (tmp_path / "run.yaml").write_text(f"output_dir: {folder / 'pipeline'}\n")
    refuse_writes(monkeypatch, folder, code)
    train = ["train", "--real", real_set, "--alpha", "1", "--config", config]
    cases = [
        ([*train, "--out", folder / "new"], folder / "new"),
        ([*train, "--out", folder], folder / ".lock"),
        (["evaluate", "--activations", activations, "--out", folder / "e"], folder / "e"),
        (["report", tmp_path / "a", "--out", folder / "r"], folder / "r"),
        (["run", tmp_path / "run.yaml"], folder / "pipeline"),
    ]
    for args, named in cases:
        result = sio(*args)
        assert result.exit_code == 1, result.output
        assert one_error(result.output) == f"Error: {named}: {cause}", args
    assert list(folder.iterdir()) == []


# --- checkpoints: a malicious pickle, truncated, no state dict --------------------------------


class Payload:
    """Unpickled by anything but a weights-only loader, it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def sio_checkpoint() -> dict:
    model = build_classifier("small_cnn", in_channels=1, num_classes=2, mean=[0.3], std=[0.3])
    return {
        "format": CHECKPOINT_FORMAT,
        "model": "small_cnn",
        "channels": 1,
        "class_names": ["0", "1"],
        "pixel_mean": [0.3],
        "pixel_std": [0.3],
        "model_state": model.state_dict(),
        "alpha": 1.0,
        "seed": 0,
    }


def write_bad(kind: str, path: Path, marker: Path) -> str:
    """Write a bad checkpoint of ``kind`` to ``path``; the cause its error line must name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "malicious":
        torch.save({**sio_checkpoint(), "model_state": Payload(marker)}, path)
        return "a pickle that asks for io.open, refused by the weights-only load"
    if kind == "malicious-plain-pickle":
        path.write_bytes(pickle.dumps({"model_state": Payload(marker)}, protocol=2))
        return "refused by the weights-only load (nothing in it ran)"
    if kind == "truncated":
        buffer = io.BytesIO()
        torch.save(sio_checkpoint(), buffer)
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        return "not a readable sio checkpoint: truncated or corrupt"
    if kind == "empty":
        path.write_bytes(b"")
        return "not a readable sio checkpoint: empty or truncated"
    if kind == "a-list":
        torch.save([1, 2, 3], path)
        return "not an sio checkpoint (format 'sio-checkpoint/1'; it holds a list)"
    if kind == "no-state-dict":
        torch.save({k: v for k, v in sio_checkpoint().items() if k != "model_state"}, path)
        return "an sio checkpoint without model_state; it cannot be used"
    raise AssertionError(kind)


KINDS = ["malicious", "malicious-plain-pickle", "truncated", "empty", "a-list", "no-state-dict"]


def test_the_payload_would_run_if_unpickled(tmp_path):
    """The malicious checkpoints are real: a plain unpickler creates their marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_checkpoint_is_one_line_and_nothing_in_it_runs(tmp_path, kind):
    marker = tmp_path / "the-payload-ran"
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    cause = write_bad(kind, checkpoint, marker)
    args = ["evaluate", "--run", checkpoint.parent, "--benchmark", tmp_path, "--out"]
    result = sio(*args, tmp_path / "eval")
    assert result.exit_code == 1
    line = one_error(result.output)
    assert line.startswith(f"Error: {checkpoint}: ") and cause in line, line
    assert "weights_only" not in result.output and not marker.exists()
    debug = sio("--debug", *args, tmp_path / "eval")
    assert "Traceback" in debug.output and "weights_only" not in debug.output
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["malicious", "truncated"])
def test_a_bad_checkpoint_to_resume_or_as_weights_is_one_line(tmp_path, real_set, config, kind):
    """``sio train --resume`` on a bad checkpoint.pt, and the loader of ``sio evaluate
    --weights`` on the same file: the same one line."""
    marker = tmp_path / "the-payload-ran"
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    write_bad(kind, checkpoint, marker)
    train = ["train", "--real", real_set, "--alpha", "1", "--config", config, "--resume"]
    result = sio(*train, "--out", checkpoint.parent, "--device", "cpu")
    assert result.exit_code == 1
    assert one_error(result.output).startswith(f"Error: {checkpoint}: not a readable")
    with pytest.raises(ModelError) as raised:
        build_model("sio:small_cnn", checkpoint, 2, channels=1)
    message = str(raised.value)
    assert message.startswith(f"{checkpoint}: not a readable PyTorch state dict: ")
    assert "\n" not in message and "weights_only" not in message and not marker.exists()


# --- a bad S3 bucket name ---------------------------------------------------------------------


def test_a_bad_s3_bucket_name_is_one_line(tmp_path, config, monkeypatch):
    """Refused before boto3 sees it (it answered with 26 frames), naming the URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing leaves the machine
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    url = "s3://Bad_Bucket!!/x"
    for args in (
        ["shards", "verify", url],
        ["train", "--real", url, "--alpha", "1", "--out", tmp_path / "o", "--config", config],
    ):
        result = sio(*args)
        assert result.exit_code == 1
        line = one_error(result.output)
        assert line.startswith(f"Error: {url}") and "'Bad_Bucket!!' is not an S3 bucket" in line
        assert "botocore" not in result.output


@pytest.mark.parametrize("bucket", ["my-bucket.v2", "Legacy_Bucket", "abc", "1" * 63])
def test_s3_bucket_names_s3_accepts_pass(bucket):
    assert split_s3(f"s3://{bucket}/a/b/") == (bucket, "a/b")


@pytest.mark.parametrize("bucket", ["Bad_Bucket!!", "..", "ab", "-abc", "abc-", "a..b", "a b"])
def test_s3_bucket_names_s3_refuses_are_refused(bucket):
    with pytest.raises(ValueError, match="is not an S3 bucket name"):
        split_s3(f"s3://{bucket}/x")


# --- a full disk while writing shards; a path the file system cannot make -------------------

SHARD_CONFIG = "shard: {digits: {far_ood_images_per_set: 8}, shard_size: 64}\n"
GENERATE = ["--num-images", 8, "--shard-size", 4, "--batch-size", 4, "--network-batch", 4]


def full_disk_shards(monkeypatch, buffered: bool) -> None:
    """Every shard the one writer opens is on a full disk: the error comes from a ``write`` of
    its own (unbuffered) or when the last megabyte is flushed as the shard closes (buffered)."""
    import sio.shardset.tarwrite as tarwrite

    def open_(path, mode="r", buffering=-1):
        file = FullDisk(path, "w")
        return io.BufferedWriter(file, buffering) if buffered else file

    monkeypatch.setattr(tarwrite, "open", open_, raising=False)


def no_partial_shard(folder: Path) -> None:
    """No shard under a final name and no temporary of one: the writer removed what it began."""
    assert not list(folder.rglob("shard-*.tar")) and not list(folder.rglob("*.tmp"))


@pytest.mark.parametrize("buffered", [False, True], ids=["write", "close"])
def test_a_full_disk_while_sharding_names_the_shard(tmp_path, monkeypatch, buffered):
    config = tmp_path / "shard.yaml"
    config.write_text(SHARD_CONFIG)
    full_disk_shards(monkeypatch, buffered)
    out = tmp_path / "digits"
    result = sio("shard", "digits", "--out", out, "--splits", "id_train", "--config", config)
    assert result.exit_code == 1
    shard = out / "id_train" / "shard-000000.tar"
    assert one_error(result.output) == f"Error: {shard}: no space left on device"
    no_partial_shard(out)


@pytest.mark.parametrize("buffered", [False, True], ids=["write", "close"])
def test_a_full_disk_while_converting_names_the_shard(tmp_path, real_set, monkeypatch, buffered):
    full_disk_shards(monkeypatch, buffered)
    out = tmp_path / "records"
    result = sio("shards", "convert", real_set, out, "--encoding", "records")
    assert result.exit_code == 1
    assert one_error(result.output) == f"Error: {out}/shard-000000.tar: no space left on device"
    no_partial_shard(out)


@pytest.mark.parametrize("buffered", [False, True], ids=["write", "close"])
def test_a_full_disk_while_generating_names_the_shard(
    tmp_path, cond_dir, config, monkeypatch, buffered
):
    """The shard is written in the job's writer thread; its error reaches the command."""
    full_disk_shards(monkeypatch, buffered)
    out = tmp_path / "syn"
    result = sio(
        "generate", "--generator-dir", cond_dir, "--out", out, *GENERATE, "--device", "cpu"
    )
    assert result.exit_code == 1
    assert one_error(result.output) == f"Error: {out}/shard-000000.tar: no space left on device"
    no_partial_shard(out)


@pytest.mark.parametrize(
    "kind, cause",
    [
        ("file", "a part of the path is a file, not a folder"),
        ("long", "file name too long"),
        ("loop", "too many levels of symbolic links"),
    ],
)
def test_a_path_the_file_system_cannot_make_is_one_line(
    tmp_path, activations, monkeypatch, kind, cause
):
    """``--out FILE/sub``, a name over the file system's limit, a symbolic link to itself."""
    monkeypatch.chdir(tmp_path)  # the defaults, not a ./pipeline.yaml
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    out = tmp_path / ("x" * 300 if kind == "long" else kind) / "sub"
    result = sio("evaluate", "--activations", activations, "--detectors", "msp", "--out", out)
    assert result.exit_code == 1
    line = one_error(result.output)
    assert line.startswith(f"Error: {tmp_path}/") and line.endswith(f": {cause}"), line


# --- a generation folder whose manifest is not one ------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory, cond_dir):
    """A complete generation folder, and its manifest."""
    out = tmp_path_factory.mktemp("generated") / "syn"
    result = sio(
        "generate", "--generator-dir", cond_dir, "--out", out, *GENERATE, "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    return out, (out / "manifest.json").read_text()


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[1, 2]", "not an sio shard-set manifest (format 'sio-shards/1')"),
        ('"a string"', "not an sio shard-set manifest (format 'sio-shards/1')"),
        ("{not json", "not valid JSON (Expecting property name"),
        ('{"format": "sio-shards/1", "shards": 5}', "image_size is missing"),
    ],
)
def test_resuming_generation_over_a_garbled_manifest_is_one_line(
    tmp_path, cond_dir, config, generated, text, problem
):
    """The job's own output is rewritten from its shards' records; one line names the file
    and why it was not read (it crashed with AttributeError on a JSON list)."""
    import shutil

    out = tmp_path / "syn"
    shutil.copytree(generated[0], out)
    (out / "manifest.json").write_text(text)
    result = sio(
        "generate", "--generator-dir", cond_dir, "--out", out, *GENERATE, "--device", "cpu"
    )
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    named = [line.strip() for line in result.output.splitlines() if "manifest.json" in line]
    assert len(named) == 1 and named[0].startswith(f"{out}/manifest.json: {problem}"), named
    assert named[0].endswith("; writing this job's manifest in its place")
    assert (out / "manifest.json").read_text() == generated[1]
