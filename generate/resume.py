"""The output folder of a generation job: one writer at a time, resumed shard by shard, and
the manifest published once every shard is complete.

Shard i is complete when its record ``.progress/shard-NNNNNN.json`` exists (written after the
tar is renamed, and uploaded, in place) and, in a local folder, the tar still has the record's
size and sha256; a rerun regenerates every other shard, and a rerun with another
``num_images`` resizes the set, keeping every shard whose count is unchanged. One job at a time
writes a folder (``.progress/lock``: the ranks of one torchrun share it, any other writer is
refused by name); the first writer removes the temporaries a killed one left. Under
``torchrun`` rank r takes shards i ≡ r (mod W); whichever rank completes the set writes the
manifest, and rank 0 waits (``wait_timeout`` seconds, naming the shards still missing) for the
others. A published manifest is never rewritten: a rerun over the same shards keeps it as it
is (quality figures measured later live beside the set, see fid.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import sio
from sio.core import lock as core_lock
from sio.core.config import short_text
from sio.core.definition import differences, require_same
from sio.core.files import sha256_file
from sio.core.lock import remove_temporaries, run_id
from sio.core.progress import progress
from sio.core.storage import open_destination
from sio.generate.config import BYTE_NEUTRAL
from sio.generate.job import (
    JOB_FILE,
    LOCK_FILE,
    PROGRESS,
    GenerationError,
    Job,
    record_name,
    shard_name,
)
from sio.generate.writing import Workers, write_shard
from sio.shardset import MANIFEST, Manifest, ShardError, ShardStats, manifest_from_stats

DEFAULT_WAIT_S = 3600.0


class FolderLock(core_lock.FolderLock):
    """The folder lock of every stage (sio.core.lock), kept in ``.progress/lock``; a refused
    writer gets a ``GenerationError``."""

    lock_name = LOCK_FILE
    error = GenerationError


def remove_stale(folder: Path) -> list[Path]:
    """What killed writers left: ``*.tmp`` temporaries of atomic writes and of shards."""
    shards = sorted(folder.glob("shard-*.tar.tmp"))
    for path in shards:
        path.unlink(missing_ok=True)
    return [*remove_temporaries(folder), *remove_temporaries(folder / PROGRESS), *shards]


def _check_job(dest, job: Job) -> None:
    """Refuse a folder holding another job's shards; the same job with another ``num_images``
    (or another setting that changes no byte) goes on: its complete shards stay."""
    definition = job.definition()
    if dest.exists(JOB_FILE):
        try:
            previous = dest.read_json(JOB_FILE)
        except (ValueError, UnicodeDecodeError) as err:
            raise GenerationError(
                f"{dest.url}/{JOB_FILE}: not a readable job record ({err}); delete the folder "
                "or the file to start over"
            ) from None
        ignore = BYTE_NEUTRAL
        if job.config.encoding == "png":  # records are one per sampled batch; PNGs per image
            ignore = (*ignore, "generate.batch_size")
        require_same(
            f"{dest.url} holds shards of a different generation job",
            previous,
            definition,
            ignore=ignore,
            remedy="use another output or delete it",
        )
        if previous == definition:
            return
    dest.write_json(JOB_FILE, definition)


def _read_record(dest, index: int) -> dict | None:
    """Shard ``index``'s progress record, or None (no record, or an unreadable one)."""
    name = record_name(index)
    if not dest.exists(name):
        return None
    try:
        record = dest.read_json(name)
        record["stats"]["shard"]["num_samples"]  # noqa: B018 - the field every check reads
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        print(f"{dest.url}/{name}: unreadable progress record ({err}); regenerating the shard")
        return None
    return record


def _shard_intact(dest, record: dict) -> bool:
    """In a local folder the tar must still have its record's size and sha256."""
    local = getattr(dest, "client", None) is None
    if not local:
        return True
    shard = record["stats"]["shard"]
    path = dest.staging / shard["name"]
    return (
        path.is_file()
        and path.stat().st_size == shard["bytes"]
        and sha256_file(path) == shard["sha256"]
    )


def _shard_done(dest, job: Job, index: int, *, check_bytes: bool = False) -> bool:
    """Shard ``index`` is complete for this job: its record exists, holds the job's count for
    it (a resized job regenerates the shard that was the old last, partial one) and, with
    ``check_bytes``, its tar is intact."""
    record = _read_record(dest, index)
    if record is None:
        return False
    if record["stats"]["shard"]["num_samples"] != len(job.shard_samples(index)):
        return False
    if check_bytes and not _shard_intact(dest, record):
        print(f"{dest.url}/{shard_name(index)}: missing or not what its record says; regenerating")
        return False
    return True


@dataclass
class RunState:
    """One process's part of a job: its destination, its shards, its timing."""

    job: Job
    dest: object
    rank: int
    world_size: int
    wanted: range
    images: int = 0
    waited_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def mine(self) -> list[int]:
        return [
            i
            for i in self.wanted
            if i % self.world_size == self.rank
            and not _shard_done(self.dest, self.job, i, check_bytes=True)
        ]

    def generate(self, indices: list[int]) -> None:
        job, dest = self.job, self.dest
        total = sum(len(job.shard_samples(i)) for i in indices)
        workers = Workers.start(job.config.encode_threads)
        rank = f" [rank {self.rank}]" if self.world_size > 1 else ""  # torchrun only
        desc = f"generate {job.generator.name}{rank}"
        try:
            with progress(total=total, desc=desc, unit="img") as bar:
                for index in indices:
                    record = write_shard(job, index, dest.staging / shard_name(index), workers, bar)
                    dest.publish(shard_name(index))
                    record["rank"] = self.rank
                    dest.write_json(record_name(index), record)
                    self.images += len(job.shard_samples(index))
        finally:
            workers.close()
        self.waited_s += workers.waited_s


def run_job(
    job: Job,
    out,
    *,
    shards: range | None = None,
    rank: int = 0,
    world_size: int = 1,
    staging=None,
    wait_for_all: bool | None = None,
    wait_timeout: float | None = None,
) -> dict | None:
    """Generate this rank's missing shards of ``shards`` (default: all). Whichever process
    completes the set writes the manifest; rank 0 of a torchrun launch waits for the others
    (``wait_timeout`` seconds, default ``SIO_WAIT_TIMEOUT_S`` or an hour). Returns the manifest,
    or None while shards are missing."""
    dest = open_destination(out, staging)
    job.prepare()
    lock = FolderLock(Path(dest.staging), run_id())
    lock.acquire(on_first=lambda: remove_stale(Path(dest.staging)))
    try:
        _check_job(dest, job)
        wanted = shards if shards is not None else range(job.num_shards)
        if wanted.start < 0 or wanted.stop > job.num_shards:
            raise GenerationError(f"shards {wanted.start}:{wanted.stop} outside 0:{job.num_shards}")
        state = RunState(job, dest, rank, world_size, wanted)
        state.generate(state.mine())
        job.last_timing = {
            "images": state.images,
            "seconds": time.perf_counter() - state.started,
            "waited_s": state.waited_s,
        }
        missing = _missing(dest, job)
        if not missing:
            return _publish(job, dest)
        if rank != 0:
            return None
        full = shards is None or (wanted.start == 0 and wanted.stop == job.num_shards)
        if wait_for_all is None:
            wait_for_all = world_size > 1 and full
        if not wait_for_all:
            print(
                f"{dest.url}: {job.num_shards - len(missing)} of {job.num_shards} shards complete; "
                "the manifest is written when all are",
                flush=True,
            )
            return None
        return _wait_for_manifest(job, dest, missing, wait_timeout)
    finally:
        lock.release()


def _missing(dest, job: Job) -> list[int]:
    return [i for i in range(job.num_shards) if not _shard_done(dest, job, i)]


def _names(indices: list[int], limit: int = 5) -> str:
    shown = ", ".join(shard_name(i) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def _wait_for_manifest(job: Job, dest, missing: list[int], timeout: float | None) -> dict:
    """Rank 0 waits for the shards other ranks write; once all are complete, the manifest the
    last of them wrote is returned if it is this job's (``_current_manifest``), else written.
    A manifest alone is never taken as the end: after a resize the folder holds the old one."""
    if timeout is None:
        timeout = float(os.environ.get("SIO_WAIT_TIMEOUT_S", DEFAULT_WAIT_S))
    poll = float(os.environ.get("SIO_POLL_S", "5"))
    deadline, shown = time.monotonic() + timeout, None
    while missing:
        if time.monotonic() > deadline:
            raise GenerationError(
                f"{dest.url}: gave up after {timeout:g} s waiting for {len(missing)} shards "
                f"({_names(missing)}) that other ranks write; are all ranks writing to this "
                "same folder? Rerun with the same --out to finish them"
            )
        if len(missing) != shown:
            print(f"{dest.url}: waiting for {len(missing)} shards ({_names(missing)})", flush=True)
            shown = len(missing)
        time.sleep(poll)
        missing = [i for i in missing if not _shard_done(dest, job, i)]
    return _publish(job, dest)


def _provenance(job: Job) -> dict:
    return {**job.definition(), "seed": job.config.seed, "sio_version": sio.__version__}


def _shard_list(dest, job: Job) -> list[dict]:
    """The manifest's ``shards`` of the job's complete shards, from their progress records."""
    records = [_read_record(dest, i) for i in range(job.num_shards)]
    return [vars(ShardStats.from_json(r["stats"]).shard) for r in records]


def _previous_manifest(dest) -> Manifest | None:
    """The folder's manifest, read through the shard-set contract; None when there is none or
    it is not one (a line names the file and why: the job writes its own in its place)."""
    if not dest.exists(MANIFEST):
        return None
    where = f"{dest.url}/{MANIFEST}"
    try:
        return Manifest.from_json(dest.read_json(MANIFEST), where)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        problem = f"{where}: not valid JSON ({short_text(str(err))})"
    except ShardError as err:
        problem = str(err)
    print(f"{problem}; writing this job's manifest in its place", flush=True)
    return None


def _current_manifest(previous: Manifest | None, dest, job: Job) -> dict | None:
    """The folder's manifest ``previous`` if it is this job's, made the same way (the same
    definition, seed and version) over exactly its complete shards; None for any other, e.g.
    the manifest of the size before a resize, or a missing or unreadable one."""
    if previous is None:
        return None
    provenance = dict(previous.provenance)
    quality = provenance.pop("quality", {})
    if not isinstance(quality, dict) or differences(provenance, _provenance(job)):
        return None
    if [vars(s) for s in previous.shards] != _shard_list(dest, job):
        return None
    return previous.to_json()


def _publish(job: Job, dest) -> dict:
    """The job's manifest: the folder's own when it is this job's over exactly its complete
    shards (a published manifest is never rewritten), else written from the shards' records."""
    manifest = _current_manifest(_previous_manifest(dest), dest, job)
    return manifest if manifest is not None else _write_manifest(job, dest)


def _filter_figures(job: Job, records: list, stats: list) -> dict:
    """Under ``labels.filter: agree``: the candidates drawn, and per class the share the
    classifier agreed with (what the generator itself does; every image kept agrees)."""
    if not job.filtered:
        return {}
    drawn = [sum(r["drawn_per_class"][k] for r in records) for k in range(len(job.class_names))]
    kept = [sum(s.class_counts[k] for s in stats) for k in range(len(job.class_names))]
    per_class = {
        str(name): kept[k] / drawn[k] if drawn[k] else None
        for k, name in enumerate(job.class_names)
    }
    return {
        "filter": "agree",
        "candidates_drawn": sum(drawn),
        "candidate_agreement_per_class": per_class,
    }


def _write_manifest(job: Job, dest) -> dict:
    """The job's manifest from its shards' progress records, with the label agreement the job
    measured (``provenance.quality``)."""
    records = [_read_record(dest, i) for i in range(job.num_shards)]
    stats = [ShardStats.from_json(r["stats"]) for r in records]
    provenance = _provenance(job)
    judged = sum(r["judged"] for r in records)
    if judged:
        provenance["quality"] = {
            "label_agreement": sum(r["agree"] for r in records) / judged,
            "classifier": job.classifier_path,
            **_filter_figures(job, records, stats),
        }
    size = job.generator.image_size
    manifest = manifest_from_stats(
        stats,
        kind="synthetic",
        name=str(dest.url).rstrip("/").rsplit("/", 1)[-1],
        image_size=(size, size),
        channels=job.generator.channels,
        class_names=job.class_names,
        provenance=provenance,
        encoding=job.config.encoding,
    )
    dest.write_json(MANIFEST, manifest.to_json())
    return manifest.to_json()
