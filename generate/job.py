"""``sio generate``: a generator to a synthetic shard set, shard by shard, resumable.

Every image is a function of (generator weights, sampler settings, seed, its index q, its
label) alone: a conditional generator samples image q of class ``q mod K`` from the per-image
seed ``derive_seed(seed, "image", q)`` (see base.py for why the network runs in calls of a fixed
``network_batch``). An unconditional one is pseudo-labelled per block of ``labels.block``
images: block b's candidates are sampled from the seeds ``derive_seed(seed, "candidate", b, j)``,
j = 0, 1, ..., labelled by the classifier, and image q (slot s of its block) is, with a quota,
the ``s div K``-th candidate of its class ``q mod K``, without one the s-th candidate kept. So
the same images come out whatever the batch size, shard size or rank count, a shard (or any
slice) can be regenerated alone, and ``sio serve`` gives the bytes ``sio generate`` writes.

Shard i holds images ``[i·S, min((i+1)·S, N))``. It is complete when its record
``.progress/shard-NNNNNN.json`` exists (written after the tar is renamed, and uploaded, in place)
and, in a local folder, the tar still has the record's size and sha256; a rerun regenerates every
other shard, and a rerun with another ``num_images`` resizes the set, keeping every shard whose
count is unchanged. One job at a time writes a folder (``.progress/lock``: the ranks of one
torchrun share it, any other writer is refused by name); the first writer removes the
temporaries a killed one left. Under ``torchrun`` rank r takes shards i ≡ r (mod W); whichever
rank completes the set writes the manifest, and rank 0 waits (``wait_timeout`` seconds, naming
the shards still missing) for the others.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

import sio
from sio.core import lock as core_lock
from sio.core.config import short_text, to_dict
from sio.core.definition import differences, require_same
from sio.core.files import sha256_file
from sio.core.lock import remove_temporaries, run_id
from sio.core.seeding import derive_seed
from sio.core.storage import open_destination
from sio.generate.base import fixed_calls
from sio.generate.config import GenerateConfig, LabelConfig
from sio.generate.labels import balanced_labels, classify
from sio.shardset import (
    MANIFEST,
    Manifest,
    ShardError,
    ShardFileWriter,
    ShardStats,
    encode_png,
    manifest_from_stats,
)
from sio.shardset.records import encode_record, record_key

PROGRESS = ".progress"
JOB_FILE = f"{PROGRESS}/job.json"
LOCK_FILE = f"{PROGRESS}/lock"
MAX_CANDIDATES_PER_IMAGE = 50  # pseudo-labelling gives up after 50 candidates per image
# generate settings of the writing process alone (no byte of any shard depends on them)
PROCESS_ONLY = ("encode_threads",)
# settings that change no byte of a shard: a resume may change them
BYTE_NEUTRAL = ("generate.num_images", *(f"generate.{key}" for key in PROCESS_ONLY))
DEFAULT_WAIT_S = 3600.0


class GenerationError(ValueError):
    """A job that cannot go on (shown as one ``Error:`` line)."""


@dataclass
class Job:
    generator: object
    config: GenerateConfig
    class_names: tuple[str, ...]
    classifier: object = None
    classifier_path: str | None = None
    labels: LabelConfig = field(default_factory=LabelConfig)
    classifier_sha256: str | None = None  # default: of the file at classifier_path

    def __post_init__(self):
        if self.classifier is not None and self.classifier_sha256 is None:
            self.classifier_sha256 = classifier_fingerprint(self.classifier, self.classifier_path)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.config.num_images / self.config.shard_size)

    def shard_samples(self, index: int) -> range:
        """The indices of the images of shard ``index``."""
        first = index * self.config.shard_size
        return range(first, min(first + self.config.shard_size, self.config.num_images))

    def definition(self) -> dict:
        return {
            "generator": self.generator.name,
            "checkpoint_sha256": self.generator.checkpoint_sha256(),
            "settings": self.generator.describe(),
            "generate": to_dict(self.config),
            "class_names": list(self.class_names),
            "labels": self._label_mode(),
            "classifier_sha256": self.classifier_sha256,
        }

    def _label_mode(self) -> dict:
        if self.generator.conditional:
            return {"mode": "conditional"}
        return {"mode": "pseudo", **to_dict(self.labels)}

    def prepare(self) -> None:
        """Fix the generator's rows per network call (every image a function of its index)."""
        self.generator.prepare(network_batch=self.config.network_batch)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's softmax, in calls of ``network_batch`` rows like the generator."""
        return fixed_calls(
            lambda x: classify(self.classifier, x), self.config.network_batch, images
        )


def classifier_fingerprint(classifier, path) -> str:
    """sha256 of the classifier's checkpoint file, else of its parameters and buffers."""
    if path and Path(path).is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for name, tensor in sorted(classifier.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"state:{digest.hexdigest()}"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def record_name(index: int) -> str:
    return f"{PROGRESS}/{shard_name(index)}.json"


def image_seed(seed: int, index: int) -> int:
    return derive_seed(seed, "image", index)


def candidate_seed(seed: int, block: int, candidate: int) -> int:
    return derive_seed(seed, "candidate", block, candidate)


@dataclass
class Batch:
    """Consecutive images of a shard, with their labels and provenance."""

    images: torch.Tensor
    labels: torch.Tensor
    metas: list[dict]
    agree: int = 0


def _sample_calls(job: Job, labels: torch.Tensor, seeds: list[int], step=None) -> torch.Tensor:
    """``sample_seeds`` one network call at a time (the calls ``fixed_calls`` makes, so the
    same bytes), calling ``step(rows)`` after each: a bar moves per network batch."""
    size = job.config.network_batch
    parts = []
    for start in range(0, len(seeds), size):
        parts.append(
            job.generator.sample_seeds(labels[start : start + size], seeds[start : start + size])
        )
        if step is not None:
            step(len(parts[-1]))
    return torch.cat(parts)


def conditional_batches(job: Job, samples: range, step=None):
    """The images of ``samples`` in batches of ``batch_size``; ``step(rows)`` per network call."""
    size, num_classes = job.config.batch_size, job.generator.num_classes
    for start in range(samples.start, samples.stop, size):
        indices = range(start, min(start + size, samples.stop))
        labels = balanced_labels(indices.start, len(indices), num_classes)
        seeds = [image_seed(job.config.seed, q) for q in indices]
        images = _sample_calls(job, labels, seeds, step)
        metas = [{"seed": s, "index": q} for s, q in zip(seeds, indices, strict=True)]
        agree = 0
        if job.classifier is not None:
            probs = job.classify(images)
            for k, meta in enumerate(metas):
                meta["classifier_prob"] = round(float(probs[k, labels[k]]), 6)
            agree = int((probs.argmax(1) == labels).sum())
        yield Batch(images, labels, metas, agree)


def pseudo_batches(job: Job, samples: range, step=None):
    """The pseudo-labelled images of ``samples``, block by block (see the module docstring);
    ``step(rows)`` per batch kept."""
    block = job.labels.block
    start = samples.start
    while start < samples.stop:
        b = start // block
        end = min(samples.stop, (b + 1) * block)
        picked = _pick_candidates(job, b, range(start - b * block, end - b * block))
        for first in range(0, len(picked), job.config.batch_size):
            part = picked[first : first + job.config.batch_size]
            if step is not None:
                step(len(part))
            yield Batch(
                torch.stack([image for image, _, _ in part]),
                torch.tensor([meta["label"] for _, meta, _ in part]),
                [meta["meta"] for _, meta, _ in part],
            )
        start = end


def _pick_candidates(job: Job, block: int, slots: range) -> list:
    """(image, {"label", "meta"}, slot) for each slot of ``slots`` in block ``block``."""
    classes = len(job.class_names)
    base = block * job.labels.block
    quota = job.labels.quota
    # with a quota, slot s (image q = base + s) is the (s div K)-th candidate of class q mod K
    wanted = {}
    for s in slots:
        key = ((base + s) % classes, s // classes) if quota else s
        wanted[key] = s
    found, counts, kept = {}, [0] * classes, 0
    limit = MAX_CANDIDATES_PER_IMAGE * max(1, slots.stop)
    j = 0
    while len(found) < len(wanted):
        if j >= limit:
            left = [key for key, s in wanted.items() if s not in found]
            images = range(base + slots.start, base + slots.stop)
            raise GenerationError(_give_up(job, images, left, j))
        batch = range(j, j + job.config.batch_size)
        seeds = [candidate_seed(job.config.seed, block, c) for c in batch]
        images = job.generator.sample_seeds(None, seeds)
        confidence, labels = job.classify(images).max(1)
        for row, (label, conf) in enumerate(zip(labels.tolist(), confidence.tolist(), strict=True)):
            if conf < job.labels.min_confidence:
                continue
            if quota:
                key = (label, counts[label])
                counts[label] += 1
            else:
                key = kept
                kept += 1
            if key in wanted:
                s = wanted[key]
                meta = {
                    "seed": seeds[row],
                    "index": base + s,
                    "candidate": j + row,
                    "pseudo_label_confidence": round(conf, 6),
                }
                found[s] = (images[row], {"label": label, "meta": meta}, s)
        j += job.config.batch_size
    return [found[s] for s in slots]


def _give_up(job: Job, images: range, left: list, tried: int) -> str:
    missing: dict[str, int] = {}
    for key in left:
        name = job.class_names[key[0]] if job.labels.quota else "any class"
        missing[name] = missing.get(name, 0) + 1
    counts = ", ".join(f"{name}: {n}" for name, n in missing.items())
    remedy = "lower labels.min_confidence" + (
        " or turn off labels.quota" if job.labels.quota else ""
    )
    return (
        f"images {images.start}..{images.stop - 1}: after {tried} candidates the classifier "
        f"still leaves open slots ({counts}); {remedy}"
    )


def _write_png_batch(writer: ShardFileWriter, encoders, batch: Batch, name: str) -> None:
    """PNG-encode a batch in the encoder threads and write it sample by sample."""
    arrays = batch.images.permute(0, 2, 3, 1).numpy()
    if arrays.shape[-1] == 1:
        arrays = arrays[..., 0]
    for png, label, meta in zip(
        encoders.map(encode_png, arrays), batch.labels.tolist(), batch.metas, strict=True
    ):
        writer.write(
            f"syn-{meta['index']:08d}",
            png,
            label,
            {"source": "synthetic", "generator": name, **meta},
        )
    writer.add_pixels(batch.images.numpy())


def _write_record(writer: ShardFileWriter, encoders, batch: Batch, name: str) -> None:
    """Write a batch as one record of raw uint8 images (no image encoding)."""
    keys = [f"syn-{meta['index']:08d}" for meta in batch.metas]
    provenance = [{"source": "synthetic", "generator": name, **meta} for meta in batch.metas]
    arrays = batch.images.numpy()
    members = encode_record(arrays, batch.labels.numpy(), keys, provenance)
    writer.write_record(record_key(batch.metas[0]["index"]), members, batch.labels.numpy())
    writer.add_pixels(arrays)


@dataclass
class Workers:
    """The threads beside the sampler: image encoders and the one tar writer."""

    encoders: ThreadPoolExecutor
    writer: ThreadPoolExecutor
    waited_s: float = 0.0

    @classmethod
    def start(cls, encode_threads: int) -> Workers:
        return cls(ThreadPoolExecutor(encode_threads), ThreadPoolExecutor(1))

    def close(self) -> None:
        self.encoders.shutdown()
        self.writer.shutdown()

    def wait(self, future: Future) -> None:
        start = time.perf_counter()
        future.result()
        self.waited_s += time.perf_counter() - start


def write_shard(job: Job, index: int, path: Path, workers: Workers, progress=None) -> dict:
    """Generate shard ``index`` to ``path`` (under ``path.tmp`` until complete); returns its
    progress record: stats, label agreement and how many images it was judged on."""
    writer = ShardFileWriter(path, len(job.class_names), job.generator.channels)
    batches = conditional_batches if job.generator.conditional else pseudo_batches
    write = _write_record if job.config.encoding == "records" else _write_png_batch
    pending: list[Future] = []
    agree = 0
    step = progress.update if progress is not None else None  # per network call (per batch)
    try:
        for batch in batches(job, job.shard_samples(index), step):
            agree += batch.agree
            if len(pending) >= 2:  # at most two batches waiting for the writer
                workers.wait(pending.pop(0))
            pending.append(
                workers.writer.submit(write, writer, workers.encoders, batch, job.generator.name)
            )
        for future in pending:
            workers.wait(future)
    except BaseException:
        for future in pending:
            future.cancel()
        for future in pending:
            if not future.cancelled():
                future.exception()
        writer.abort()
        raise
    stats = writer.close()
    # label agreement judges conditioning labels; pseudo-labels agree with the classifier by design
    judged = (
        stats.shard.num_samples if job.classifier is not None and job.generator.conditional else 0
    )
    return {"stats": stats.to_json(), "agree": agree, "judged": judged}


# --- the output folder: lock, job definition, completed shards -------------------------------


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
            with tqdm(total=total, desc=desc, unit="img", leave=False) as bar:
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
            return _write_manifest(job, dest, _previous_manifest(dest))
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
    previous = _previous_manifest(dest)
    manifest = _current_manifest(previous, dest, job)
    return manifest if manifest is not None else _write_manifest(job, dest, previous)


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


def _write_manifest(job: Job, dest, previous: Manifest | None) -> dict:
    """The job's manifest from its shards' progress records, keeping the quality measured on
    ``previous`` (the folder's manifest) when it lists the very same shards."""
    records = [_read_record(dest, i) for i in range(job.num_shards)]
    stats = [ShardStats.from_json(r["stats"]) for r in records]
    provenance = _provenance(job)
    quality = _kept_quality(previous, [vars(s.shard) for s in stats])
    judged = sum(r["judged"] for r in records)
    if judged:
        quality["label_agreement"] = sum(r["agree"] for r in records) / judged
        quality["classifier"] = job.classifier_path
    if quality:
        provenance["quality"] = quality
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


def _kept_quality(previous: Manifest | None, shards: list[dict]) -> dict:
    """The quality measured on the set so far (e.g. ``sio fid``), kept when the manifest is
    rewritten over the very same shards; dropped when any shard changed."""
    if previous is None or [vars(s) for s in previous.shards] != shards:
        return {}
    quality = previous.provenance.get("quality")
    quality = dict(quality) if isinstance(quality, dict) else {}
    quality.pop("label_agreement", None)
    quality.pop("classifier", None)
    return quality
