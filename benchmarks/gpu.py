"""Every GPU figure of sio in one prepared run, written as it goes.

Usage: python benchmarks/gpu.py --device cuda|cpu [--small] [--out FILE.json] [--nvidia DIR]
[--budget SECONDS]

What it measures, in this order (most wanted first, so a run cut short keeps those):

1. ceiling: the compute-only ceiling of the training step. ResNet-18 (CIFAR stem, 10 classes),
   the trainer's step (cross-entropy, SGD + Nesterov, weight decay, a LambdaLR step) on one
   synthetic uint8 batch resident on the device, at B = 128 and 512: fp32, bf16 autocast +
   channels_last (train/gpu.py), the same with the one-gather crop/flip of train/gpu.py from a
   resident padded set (what on-device augmentation costs), and with cudnn.benchmark.
2. trainer: ``sio.train.train_classifier`` (its public API, a TrainConfig) on a 32x32 RGB records
   shard set, alpha = 0.8, crop 4 + flip, records streaming (DataLoader workers) and resident,
   B = 128 and 512; its images/s is the trainer's own log line (epochs after the first), and
   ``vs_ceiling`` its ratio to the ceiling of the same precision and layout (target >= 0.8).
   Each run is once fp32 and once with the trainer's own GPU options (TrainConfig
   ``precision: bf16, channels_last: true, device_augment: true``; ``compile: true`` in section
   6), what a user sets in ``pipeline.yaml``; ``trainer_options`` in the JSON lists them. Pinned
   memory, non-blocking copies, cudnn.benchmark and a synchronised epoch clock are the
   trainer's own on a GPU (train/accelerate.py).
3. loader: batches of the trainer's loader alone, in this process with one torch thread (what one
   DataLoader worker does): records and PNG streaming, resident (on the device), and the
   one-gather crop/flip from a resident padded set; alpha = 0.8.
4. generation (random weights, images/s of ``sample``, uint8 on the host): the built-in DDPM
   (sio's default UNet at 32x32 RGB, DDIM-20); google/ddpm-cifar10-32's UNet (35.7 M) with
   DDIM-50, fp32 and bf16; BigGAN-deep at 128 px (pytorch-pretrained-biggan's default config,
   50.4 M), fp32 and bf16; sio's StyleGAN2 at stylegan2-ada's CIFAR-10 configuration, fp32 and
   bf16.
5. evaluation: every detector on a CIFAR-scale activations file built here from a seeded
   generator (50,000 x 512 train, 1,000 val, 9,000 test, six OOD sets of 10,000), written and
   read back with ``load_activations``; ODIN needs images and is listed as skipped. The detectors
   run on the host (numpy, faiss): a GPU changes nothing there.
6. compile: torch.compile of the StyleGAN2 and of the ceiling's model (bf16, B = 512), and the
   trainer with its GPU options plus ``compile: true`` (resident, B = 512; its first epoch,
   which compiles, is dropped like every first epoch). Compile time is recorded apart.
7. nvidia (with ``--nvidia DIR``, a stylegan2-ada-pytorch checkout): NVIDIA's Generator at the
   CIFAR-10 configuration (num_fp16_res 4, conv_clamp 256), its default path and force_fp32.

Each measurement records images/s (or seconds), its sizes and the peak GPU memory
(``torch.cuda.max_memory_allocated`` from a reset; null on the CPU). GPU times are CUDA events
after warm-up; host loaders use wall time. After each measurement the whole JSON is rewritten
atomically (``complete: false`` until the end), so a run killed at any point leaves valid JSON
with every number taken so far. A measurement that would pass ``--budget`` seconds (default 420
on cuda: the plan below ends near 5 minutes) is recorded as ``not_run``; one that fails records
its error, and the script exits 1.

Plan on an H200 (times estimated from the H100 figures in shared/reference/performance.md; the
JSON's own replace them): imports and the shard sets (20,000 real + 10,000 synthetic 32x32, in
records and PNG) ~25 s; ceiling 8 x 50 steps ~15 s; trainer 4 runs (8 with bf16 options) of 3
epochs, 200 steps at B = 128 and 100 at B = 512, ~50-100 s; loader ~15 s; generation ~60 s
(DDIM-50 at batch 1024 is ~5-7 s a call); evaluation ~15 s; compile ~60-120 s; nvidia ~60-120 s
(its CUDA plugins compile on the first call). About 4-6 minutes in all, under the 420 s budget;
run it as ``timeout 530 python3 benchmarks/gpu.py --device cuda --out $OUT/gpu.json``.
``--small`` keeps every path and shrinks every size (small_cnn, 16x16 images, B = 8 and 16,
narrow networks, tiny sets, one torch thread, StyleGAN2 and the ceiling compiled with the
``eager`` backend) so a 2-core CPU runs it in seconds; its numbers are a smoke test only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the trainer's progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sio.core.environment import describe_machine  # noqa: E402
from sio.core.files import atomic_path, write_json_atomic  # noqa: E402
from sio.train.config import TrainConfig  # noqa: E402
from sio.train.gpu import (  # noqa: E402
    autocast,
    channels_last,
    draw_crop_flip,
    pad_images,
    step_generator,
    take_crop_flip,
)

SECTIONS = ("ceiling", "trainer", "loader", "generation", "evaluation", "compile", "nvidia")
ALPHA, CLASSES, PAD = 0.8, 10, 4
# the trainer's GPU options (TrainConfig fields) its second set of runs sets, and section 6's
GPU_OPTIONS = {"precision": "bf16", "channels_last": True, "device_augment": True}
COMPILE_OPTION = {"compile": True}

FULL = {
    "image": 32,
    "model": "resnet18_32",
    "batches": (128, 512),
    "ceiling_steps": (15, 50),  # warm-up, timed
    "pool": 8192,
    "real": 20_000,
    "synthetic": 10_000,
    "shard": 2000,
    "record": 1000,
    "epochs": 3,
    "steps": {128: 200, 512: 100},
    "workers": 4,
    "loader_steps": {"records": (5, 100), "png": (2, 20), "resident": (5, 100), "gather": (5, 200)},
    "builtin": {"batch": 1000, "calls": 2, "steps": 20, "blocks": (32, 64)},
    "cifar_unet": {"batch": 1024, "calls": 1, "steps": 50, "width": 1},
    "biggan": {"batch": 256, "calls": 10, "width": 128, "tiny": False},
    "stylegan2": {"batch": 1024, "calls": 10, "channel_base": 32768, "channel_max": 512},
    "bank": {"train": 50_000, "val": 1_000, "test": 9_000, "ood": 10_000, "width": 512},
    "compile_backend": "inductor",
}
SMALL = {
    "image": 16,
    "model": "small_cnn",
    "batches": (8, 16),
    "ceiling_steps": (1, 2),
    "pool": 64,
    "real": 240,
    "synthetic": 120,
    "shard": 60,
    "record": 30,
    "epochs": 2,
    "steps": {8: 2, 16: 2},
    "workers": 1,
    "loader_steps": {"records": (1, 4), "png": (1, 2), "resident": (1, 4), "gather": (1, 4)},
    "builtin": {"batch": 2, "calls": 1, "steps": 2, "blocks": (8, 16)},
    "cifar_unet": {"batch": 1, "calls": 1, "steps": 2, "width": 8},
    "biggan": {"batch": 1, "calls": 1, "width": 8, "tiny": True},
    "stylegan2": {"batch": 2, "calls": 1, "channel_base": 256, "channel_max": 16},
    "bank": {"train": 600, "val": 100, "test": 200, "ood": 150, "width": 64},
    "compile_backend": "eager",
}
# rough seconds of each measurement at full size on an H200 (for --budget; 0 with --small)
ESTIMATES = {"ceiling": 3, "trainer": 15, "loader": 4, "generation": 10, "evaluation": 20}
ESTIMATES.update({"compile": 60, "nvidia": 90})


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


class Bench:
    """The run's JSON, rewritten after every measurement, and its table rows."""

    def __init__(self, args):
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.small = args.small
        self.size = SMALL if args.small else FULL
        self.out = Path(args.out)
        self.budget = args.budget if args.budget is not None else (420.0 if self.cuda else None)
        self.start = time.perf_counter()
        self.errors = 0
        self.gpu_options, self.compile_option = dict(GPU_OPTIONS), dict(COMPILE_OPTION)
        self.data = {
            "complete": False,
            "device": str(self.device),
            "small": self.small,
            "budget_s": self.budget,
            "sizes": {k: v for k, v in self.size.items() if k != "steps"}
            | {"steps_per_epoch": {str(k): v for k, v in self.size["steps"].items()}},
            "alpha": ALPHA,
            "machine": machine(self.device),
            "trainer_options": {
                "gpu_options": self.gpu_options,
                "compile": {**self.gpu_options, **self.compile_option},
                "note": "TrainConfig fields of the trainer rows named gpu_options and of "
                "compile.trainer_*; the fp32 rows set none of them",
            },
            "sections": {name: {} for name in SECTIONS},
        }
        self.write()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def write(self) -> None:
        self.data["elapsed_s"] = self.elapsed()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out, self.data)

    def measure(self, section: str, key: str, run) -> dict:
        """Run one measurement (``run()`` returns its entry), record it and rewrite the JSON."""
        estimate = 0 if self.small else ESTIMATES[section]
        if self.budget is not None and self.elapsed() + estimate > self.budget:
            entry = {"not_run": f"the time budget of {self.budget:.0f} s would be passed"}
        else:
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                entry = run()
                entry["peak_gpu_bytes"] = torch.cuda.max_memory_allocated() if self.cuda else None
            except Exception as error:  # one broken measurement must not lose the others
                traceback.print_exc()
                entry = {"error": f"{type(error).__name__}: {error}"}
                self.errors += 1
        self.data["sections"][section][key] = entry
        self.write()
        print(f"[{self.elapsed():6.1f} s] {section} {key}: {summary(entry)}", file=sys.stderr)
        return entry

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, call, calls: int, warmup: int) -> float:
        """Seconds for ``calls`` calls of ``call(i)`` after ``warmup`` calls: CUDA events on a
        GPU, wall time on the CPU."""
        for i in range(warmup):
            call(i)
        self.sync()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(warmup, warmup + calls):
                call(i)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000
        start = time.perf_counter()
        for i in range(warmup, warmup + calls):
            call(i)
        return time.perf_counter() - start


def machine(device: torch.device) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    info = {**describe_machine(), "numpy": np.__version__}
    for package in ("diffusers", "faiss-cpu", "pytorch-pretrained-biggan", "webdataset"):
        with contextlib.suppress(PackageNotFoundError):
            info[package] = version(package)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            cuda_runtime=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            gpu_memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            info["nvidia_smi"] = smi.stdout.strip()
    return info


def summary(entry: dict) -> str:
    for key in ("not_run", "error"):
        if key in entry:
            return f"{key}: {entry[key]}"
    if "images_per_s" in entry:
        text = f"{entry['images_per_s']:,.0f} images/s"
        if "vs_ceiling" in entry:
            text += f" ({entry['vs_ceiling']:.2f} of the ceiling)"
        return text
    return f"{entry.get('total_s', 0):.2f} s"


# ---------------------------------------------------------------- 1. the compute ceiling


def classifier(bench: Bench, model: str):
    from sio.train import build_classifier

    return build_classifier(
        model, in_channels=3, num_classes=CLASSES, mean=(0.5,) * 3, std=(0.25,) * 3
    ).to(bench.device)


def ceiling(
    bench: Bench, batch: int, precision: str, layout: bool, *, augment=False, compile=False
):
    """images/s of the training step alone on device-resident uint8 batches."""
    torch.manual_seed(0)
    model = channels_last(classifier(bench, bench.size["model"]), layout)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    forward = torch.compile(model, backend=bench.size["compile_backend"]) if compile else model
    pool_size = max(bench.size["pool"], batch)
    generator = torch.Generator().manual_seed(0)
    pool = torch.randint(
        0,
        256,
        (pool_size, 3, bench.size["image"], bench.size["image"]),
        dtype=torch.uint8,
        generator=generator,
    )
    labels = torch.randint(0, CLASSES, (pool_size,), generator=generator).to(bench.device)
    pool = pool.to(bench.device)
    padded = pad_images(pool, PAD) if augment else None
    fixed = channels_last(pool[:batch], layout)

    def step(i):
        if augment:
            rows_gen = step_generator(0, i)
            rows = torch.randint(0, pool_size, (batch,), generator=rows_gen)
            draws = draw_crop_flip(rows_gen, batch, padding=PAD, hflip=True)
            images = take_crop_flip(padded, rows, draws, channels_last=layout)
            targets = labels[rows.to(bench.device)]
        else:
            images, targets = fixed, labels[:batch]
        with autocast(bench.device, precision):
            loss = F.cross_entropy(forward(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()

    warmup, calls = bench.size["ceiling_steps"]
    compile_s = None
    if compile:
        start = time.perf_counter()
        step(0)
        bench.sync()
        compile_s = time.perf_counter() - start
    seconds = bench.timed(step, calls, warmup)
    entry = {
        "images_per_s": batch * calls / seconds,
        "batch": batch,
        "steps": calls,
        "warmup_steps": warmup,
        "seconds": seconds,
        "precision": precision,
        "channels_last": layout,
        "device_augment": augment,
        "model": bench.size["model"],
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if compile_s is not None:
        entry.update(compile_s=compile_s, compile_backend=bench.size["compile_backend"])
    return entry


def ceiling_key(batch: int, precision: str, layout: bool) -> str:
    return f"{precision}{'_channels_last' if layout else ''}_b{batch}"


def run_ceilings(bench: Bench) -> None:
    combinations = [("fp32", False), ("bf16", True)]
    if precision_of(bench.gpu_options) not in combinations:  # the trainer's own, for its ratio
        combinations.append(precision_of(bench.gpu_options))
    for batch in bench.size["batches"]:
        for precision, layout in combinations:
            bench.measure(
                "ceiling",
                ceiling_key(batch, precision, layout),
                lambda b=batch, p=precision, c=layout: ceiling(bench, b, p, c),
            )
    for batch in bench.size["batches"]:
        bench.measure(
            "ceiling",
            f"bf16_channels_last_device_augment_b{batch}",
            lambda b=batch: ceiling(bench, b, "bf16", True, augment=True),
        )
        with cudnn_benchmark():
            bench.measure(
                "ceiling",
                f"bf16_channels_last_cudnn_benchmark_b{batch}",
                lambda b=batch: ceiling(bench, b, "bf16", True),
            )


@contextlib.contextmanager
def cudnn_benchmark():
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


# ---------------------------------------------------------------- shard sets for 2 and 3


def natural(n: int, side: int, seed: int) -> np.ndarray:
    from sio.shards.samplefiles import natural_images

    return natural_images(n, side, seed=seed)  # N x H x W x 3


def write_records(folder: Path, images: np.ndarray, kind: str, size: dict) -> Path:
    """A records shard set (``shard`` images per shard, ``record`` per record)."""
    from sio.shardset import MANIFEST, ShardFileWriter, manifest_from_stats
    from sio.shardset.records import encode_record

    folder.mkdir(parents=True)
    chw = images.transpose(0, 3, 1, 2)
    labels = np.arange(len(images)) % CLASSES
    stats = []
    for number, first in enumerate(range(0, len(images), size["shard"])):
        writer = ShardFileWriter(folder / f"shard-{number:06d}.tar", CLASSES, 3)
        for start in range(first, min(first + size["shard"], len(images)), size["record"]):
            end = min(start + size["record"], first + size["shard"], len(images))
            keys = [f"{kind}-{i:08d}" for i in range(start, end)]
            meta = [{"source": kind, "index": i} for i in range(start, end)]
            members = encode_record(chw[start:end], labels[start:end], keys, meta)
            writer.write_record(f"{kind}-r{start:08d}", members, labels[start:end])
            writer.add_pixels(chw[start:end])
        stats.append(writer.close())
    manifest = manifest_from_stats(
        stats,
        kind=kind,
        name=kind,
        image_size=(size["image"],) * 2,
        channels=3,
        class_names=tuple(str(c) for c in range(CLASSES)),
        provenance={"benchmark": "benchmarks/gpu.py"},
        encoding="records",
    )
    write_json_atomic(folder / MANIFEST, manifest.to_json())
    return folder


def write_png(folder: Path, images: np.ndarray, kind: str, size: dict) -> Path:
    from sio.shardset import ShardSetWriter

    with ShardSetWriter(
        folder,
        kind=kind,
        name=kind,
        image_size=(size["image"],) * 2,
        channels=3,
        class_names=[str(c) for c in range(CLASSES)],
        shard_size=size["shard"],
    ) as writer:
        for i, image in enumerate(images):
            writer.write(f"{kind}-{i:08d}", image, i % CLASSES, {"source": kind, "index": i})
    return folder


class Sets:
    """The real and synthetic sets, written on first use (a run cut short may need none)."""

    def __init__(self, bench: Bench, root: Path):
        self.bench, self.root, self._sets = bench, root, {}

    def get(self, encoding: str) -> tuple[Path, Path]:
        if encoding not in self._sets:
            size, start = self.bench.size, time.perf_counter()
            write = write_records if encoding == "records" else write_png
            self._sets[encoding] = tuple(
                write(
                    self.root / f"{kind}-{encoding}",
                    natural(size[kind], size["image"], seed),
                    kind,
                    size,
                )
                for kind, seed in (("real", 0), ("synthetic", 1))
            )
            took = time.perf_counter() - start
            self.bench.data.setdefault("shard_sets_written_s", {})[encoding] = took
        return self._sets[encoding]


# ---------------------------------------------------------------- 2. the trainer


def trainer(bench: Bench, sets: Sets, batch: int, mode: str, options: dict) -> dict:
    from sio.train import train_classifier  # the public API, and nothing else of the trainer

    size = bench.size
    base = {"preset": "cifar"} if size["model"] == "resnet18_32" else {"model": size["model"]}
    config = TrainConfig(
        **base,
        epochs=size["epochs"],
        batch_size=batch,
        steps_per_epoch=size["steps"][batch],
        num_workers=size["workers"],
        resident=mode == "resident",
        crop_padding=PAD,
        hflip=True,
        **options,
    )
    real, synthetic = sets.get("records")
    with tempfile.TemporaryDirectory(dir=sets.root) as out:
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            train_classifier(
                real=real,
                synthetic=synthetic,
                alpha=ALPHA,
                seed=0,
                config=config,
                out=out,
                device=str(bench.device),
            )
        wall = time.perf_counter() - start
        log = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    rates = [record["images_per_s"] for record in log]
    return {
        "images_per_s": statistics.median(rates[1:] or rates),
        "epoch_images_per_s": rates,
        "batch": batch,
        "mode": mode,
        "epochs": len(log),
        "steps_per_epoch": size["steps"][batch],
        "workers": size["workers"] if mode == "records" else 1,
        "effective_alpha": log[-1]["effective_alpha"],
        "wall_s": wall,
        "options": {**options},
        "model": size["model"],
        "timing": "the trainer's log: images per second of each epoch's loop (host clock, "
        "read after a device synchronize); the first epoch dropped",
    }


def precision_of(options: dict) -> tuple[str, bool]:
    return options.get("precision", "fp32"), bool(options.get("channels_last", False))


def with_ceiling(bench: Bench, entry: dict, batch: int, options: dict) -> dict:
    """The trainer's ratio to the compute-only ceiling of the same precision and layout; with
    device_augment also to that ceiling plus the one-gather crop/flip."""
    ceilings = bench.data["sections"]["ceiling"]
    key = ceiling_key(batch, *precision_of(options))
    reference = ceilings.get(key, {})
    if "images_per_s" in entry and "images_per_s" in reference:
        entry.update(ceiling=key, vs_ceiling=entry["images_per_s"] / reference["images_per_s"])
    augmented = ceilings.get(f"{key[: -len(f'_b{batch}')]}_device_augment_b{batch}", {})
    if options.get("device_augment") and "images_per_s" in entry and "images_per_s" in augmented:
        entry["vs_ceiling_device_augment"] = entry["images_per_s"] / augmented["images_per_s"]
    return entry


def run_trainer(bench: Bench, sets: Sets) -> None:
    variants = {"fp32": {}, "gpu_options": dict(bench.gpu_options)}
    for name, options in variants.items():
        for mode in ("records", "resident"):
            for batch in bench.size["batches"]:
                bench.measure(
                    "trainer",
                    f"{name}_{mode}_b{batch}",
                    lambda b=batch, m=mode, o=options: with_ceiling(
                        bench, trainer(bench, sets, b, m, o), b, o
                    ),
                )


# ---------------------------------------------------------------- 3. the loader alone


def loader(bench: Bench, sets: Sets, path: str, batch: int) -> dict:
    from sio.train import batch_counts
    from sio.train.resident import ResidentBatches, load_resident
    from sio.train.sources import ShardSource
    from sio.train.stream import MixedBatches, MixSpec, SharedEpoch

    n_real, n_syn = batch_counts(batch, ALPHA)
    warmup, calls = bench.size["loader_steps"][path]
    real, synthetic = sets.get("png" if path == "png" else "records")
    sources = {"real": ShardSource.open(real), "synthetic": ShardSource.open(synthetic)}
    spec = MixSpec(
        real_urls=sources["real"].urls,
        synthetic_urls=sources["synthetic"].urls,
        n_real=n_real,
        n_syn=n_syn,
        channels=3,
        image_size=(bench.size["image"],) * 2,
        steps_per_epoch=warmup + calls,
        seed=0,
        crop_padding=PAD,
        hflip=True,
        encodings=tuple((name, source.encoding) for name, source in sources.items()),
    )
    on_device = path in ("resident", "gather")
    where = bench.device if on_device else torch.device("cpu")
    if path == "gather":
        resident = load_resident(sources["real"], where)
        padded, count = pad_images(resident.images, PAD), len(resident.labels)

        def batches():
            for step in range(warmup + calls):
                generator = step_generator(0, step)
                rows = torch.randint(0, count, (batch,), generator=generator)
                draws = draw_crop_flip(generator, batch, padding=PAD, hflip=True)
                yield take_crop_flip(padded, rows, draws)

        iterator = batches()
    elif path == "resident":
        resident = {name: load_resident(source, where) for name, source in sources.items()}
        counts = {"real": (n_real,), "synthetic": (n_syn,)}
        iterator = iter(ResidentBatches(spec, SharedEpoch(0), resident, counts))
    else:
        iterator = iter(MixedBatches(spec, SharedEpoch(0)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker's one thread
    try:
        if on_device:
            seconds = bench.timed(lambda i: next(iterator), calls, warmup)
        else:
            for _ in range(warmup):
                next(iterator)
            start = time.perf_counter()
            for _ in range(calls):
                next(iterator)
            seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return {
        "images_per_s": batch * calls / seconds,
        "batch": batch,
        "composition": [n_real, n_syn],
        "batches": calls,
        "seconds": seconds,
        "where": str(where),
        "torch_threads": 1,
    }


def run_loader(bench: Bench, sets: Sets) -> None:
    for path in ("records", "resident", "gather"):
        for batch in bench.size["batches"]:
            bench.measure(
                "loader", f"{path}_b{batch}", lambda p=path, b=batch: loader(bench, sets, p, b)
            )
    batch = bench.size["batches"][0]
    bench.measure("loader", f"png_b{batch}", lambda: loader(bench, sets, "png", batch))


# ---------------------------------------------------------------- 4. generation


def builtin_ddpm(bench: Bench):
    from sio.generate import DDPMGenerator
    from sio.generate.config import DDPMModelConfig, SamplerConfig
    from sio.generate.ddpm.model import build_scheduler, build_unet

    model = DDPMModelConfig(block_out_channels=bench.size["builtin"]["blocks"])
    side = bench.size["image"]
    unet = build_unet(model, image_size=side, channels=3, num_classes=CLASSES)
    names = tuple(str(c) for c in range(CLASSES))
    steps = bench.size["builtin"]["steps"]
    return DDPMGenerator(
        unet.to(bench.device),
        build_scheduler(),
        class_names=names,
        null_class=CLASSES,
        sampler=SamplerConfig(steps=steps),
    )


def cifar_unet(bench: Bench):
    """google/ddpm-cifar10-32's UNet (35.7 M parameters; --small: 1/8 of the widths)."""
    from diffusers import DDPMScheduler, UNet2DModel

    from sio.generate import DDPMGenerator
    from sio.generate.config import SamplerConfig

    width = bench.size["cifar_unet"]["width"]
    unet = UNet2DModel(
        sample_size=bench.size["image"],
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(c // width for c in (128, 256, 256, 256)),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_eps=1e-6,
        norm_num_groups=32 // width,
        freq_shift=1,
        flip_sin_to_cos=False,
        num_class_embeds=CLASSES,
    )
    steps = bench.size["cifar_unet"]["steps"]
    return DDPMGenerator(
        unet.to(bench.device),
        DDPMScheduler(),
        class_names=tuple(str(c) for c in range(CLASSES)),
        sampler=SamplerConfig(kind="ddim", steps=steps),
    )


def biggan(bench: Bench):
    """BigGAN-deep-128: pytorch-pretrained-biggan's default BigGANConfig (50.4 M), random."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    from sio.generate import BigGANGenerator
    from sio.generate.config import BigGANSettings

    size = bench.size["biggan"]
    if size["tiny"]:  # --small: 3 up-sampling blocks from 4 px, 32 px out
        layers = [(True, 16, 8), (False, 8, 4), (True, 4, 2), (False, 2, 1), (True, 1, 1)]
        config = BigGANConfig(
            output_dim=32,
            channel_width=size["width"],
            layers=layers,
            attention_layer_position=len(layers) // 2,
        )
    else:
        config = BigGANConfig(channel_width=size["width"])
    settings = BigGANSettings(imagenet_classes=tuple(range(CLASSES)))
    model = BigGAN(config).to(bench.device)
    return BigGANGenerator(model, settings, image_size=config.output_dim, weights=Path("random"))


def stylegan2(bench: Bench):
    """stylegan2-ada-pytorch's CIFAR-10 architecture (--cfg=cifar --cond=1: 2 mapping layers,
    channel_base 32768, channel_max 512, conv_clamp 256) in sio's clean-room network."""
    from sio.generate import StyleGAN2Generator
    from sio.generate.stylegan2.network import StyleGAN2
    from sio.generate.stylegan2.spec import GeneratorSpec, MappingSpec, SynthesisSpec

    size = bench.size["stylegan2"]
    spec = GeneratorSpec(
        z_dim=512,
        c_dim=CLASSES,
        w_dim=512,
        img_resolution=bench.size["image"],
        img_channels=3,
        mapping=MappingSpec(num_layers=2),
        synthesis=SynthesisSpec(
            channel_base=size["channel_base"], channel_max=size["channel_max"], conv_clamp=256
        ),
    )
    torch.manual_seed(0)
    return StyleGAN2Generator(StyleGAN2(spec).to(bench.device), weights=Path("random"))


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def generation(bench: Bench, build, size_key: str, precision: str, compile=False) -> dict:
    generator = build(bench)
    names = [name for name in ("unet", "model", "network") if hasattr(generator, name)]
    network = getattr(generator, names[0])
    count = parameters(network)
    generator.prepare(precision=precision)
    compile_s = None
    if compile:
        backend = bench.size["compile_backend"]
        generator.network = torch.compile(generator.network, backend=backend)
    size = bench.size[size_key]
    batch, calls = size["batch"], size["calls"]
    labels = torch.arange(batch) % generator.num_classes
    diffusion = hasattr(generator, "unet")
    steps = size.get("steps")

    def call(i, steps=steps):
        if diffusion:
            generator.sample(batch, labels, i, steps=steps)
        else:
            generator.sample(batch, labels, i)

    if compile:
        start = time.perf_counter()
        call(0)
        bench.sync()
        compile_s = time.perf_counter() - start
    # warm-up: diffusion samplers with 2 steps (the same kernels as 50), GANs one call
    for i in range(1 if not compile else 0):
        call(i, steps=min(2, steps) if diffusion else None)
    seconds = bench.timed(call, calls, warmup=0)
    entry = {
        "images_per_s": batch * calls / seconds,
        "batch": batch,
        "calls": calls,
        "seconds": seconds,
        "precision": precision,
        "parameters": count,
        "image_size": generator.image_size,
    }
    if diffusion:
        entry.update(sampler_steps=steps, unet_evals_per_s=batch * calls * steps / seconds)
    if compile_s is not None:
        entry.update(compile_s=compile_s, compile_backend=bench.size["compile_backend"])
    return entry


def run_generation(bench: Bench) -> None:
    bench.measure("generation", "builtin_ddpm_ddim20_fp32", lambda: gen(builtin_ddpm, "builtin"))
    for precision in ("fp32", "bf16"):
        bench.measure(
            "generation",
            f"ddpm_cifar10_unet_ddim50_{precision}",
            lambda p=precision: gen(cifar_unet, "cifar_unet", p),
        )
    for precision in ("fp32", "bf16"):
        bench.measure(
            "generation",
            f"biggan_deep_128_{precision}",
            lambda p=precision: gen(biggan, "biggan", p),
        )
    for precision in ("fp32", "bf16"):
        bench.measure(
            "generation",
            f"stylegan2_cifar10_{precision}",
            lambda p=precision: gen(stylegan2, "stylegan2", p),
        )


BENCH: Bench | None = None


def gen(build, size_key: str, precision: str = "fp32", compile=False) -> dict:
    return generation(BENCH, build, size_key, precision, compile)


# ---------------------------------------------------------------- 5. evaluation


def activations(size: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """A structured random activations file's arrays: non-negative features around per-class
    means (a shared floor plus up to 64 raised units), a nearest-mean last layer."""
    rng = np.random.default_rng(seed)
    width = size["width"]
    means = np.full((CLASSES, width), 0.3, np.float32)
    for k in range(CLASSES):
        active = min(64, width // 2)
        means[k, rng.choice(width, active, replace=False)] += rng.uniform(0.15, 0.45, active)

    def sample(centres, noise):
        values = centres + rng.standard_normal(centres.shape, dtype=np.float32) * noise
        return np.maximum(values, 0.0, out=values)

    # the nearest-class-mean classifier as the last layer: z_k = h . m_k - |m_k|^2 / 2
    arrays = {
        "fc.weight": means + rng.normal(0, 0.01, means.shape).astype(np.float32),
        "fc.bias": (-0.5 * (means * means).sum(axis=1)).astype(np.float32),
    }
    for split in ("train", "val", "test"):
        labels = rng.integers(0, CLASSES, size[split])
        arrays[f"id.{split}.features"] = sample(means[labels], 0.6)
        arrays[f"id.{split}.labels"] = labels.astype(np.int64)
    pairs = rng.integers(0, CLASSES, (2, size["ood"]))
    other = np.roll(means, 7, axis=1)
    ood = {
        "near.mixture": sample(0.5 * (means[pairs[0]] + means[pairs[1]]), 0.6),
        "near.faint": sample(0.3 + 0.5 * (means[pairs[0]] - 0.3), 0.6),
        "far.other_classes": sample(other[pairs[0]], 0.6),
        "far.dim": sample(np.full((size["ood"], width), 0.1, np.float32), 0.3),
        "far.bright": sample(3.0 * means[pairs[0]], 0.6),
        "far.noise": sample(np.zeros((size["ood"], width), np.float32), 1.0),
    }
    arrays.update({f"ood.{name}.features": values for name, values in ood.items()})
    return arrays


def evaluation(bench: Bench, root: Path) -> dict:
    from sio.evaluate import evaluate_bank, load_activations
    from sio.evaluate.config import ALL_DETECTORS, EvaluateConfig

    size = bench.size["bank"]
    start = time.perf_counter()
    arrays = activations(size)
    path = root / "activations.npz"
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, **arrays)
    bank = load_activations(path)
    build_s = time.perf_counter() - start
    config = EvaluateConfig()
    detectors, skipped = {}, {}
    for method in ALL_DETECTORS:
        begin = time.perf_counter()
        results = evaluate_bank(bank, [method], config=config)
        seconds = time.perf_counter() - begin
        if method in results["skipped"]:
            skipped[method] = results["skipped"][method]
            continue
        metrics = results["methods"][method]
        detectors[method] = {
            "seconds": seconds,
            "near_auroc": metrics["near"]["mean"]["auroc"],
            "far_auroc": metrics["far"]["mean"]["auroc"],
        }
    rows = sum(len(v) for k, v in arrays.items() if k.endswith("features") and ".train." not in k)
    return {
        "total_s": sum(d["seconds"] for d in detectors.values()),
        "build_write_read_s": build_s,
        "detectors": detectors,
        "skipped": skipped,
        "sizes": dict(size),
        "scored_rows": rows,
        "file_bytes": path.stat().st_size,
        "runs_on": "host CPU (numpy, faiss): no detector uses the GPU",
    }


# ---------------------------------------------------------------- 6. compile, 7. nvidia


def run_compile(bench: Bench, sets: Sets) -> None:
    bench.measure(
        "compile", "stylegan2_cifar10_fp32", lambda: gen(stylegan2, "stylegan2", "fp32", True)
    )
    batch = bench.size["batches"][-1]
    bench.measure(
        "compile",
        f"ceiling_bf16_channels_last_b{batch}",
        lambda: ceiling(bench, batch, "bf16", True, compile=True),
    )
    if bench.small:  # tests/test_accelerate.py compiles a trainer run (inductor) instead
        bench.data["sections"]["compile"]["trainer"] = {
            "not_run": "--small: the trainer compiles with inductor, ~30 s on a small CPU"
        }
        return
    options = {**bench.gpu_options, **bench.compile_option}
    bench.measure(
        "compile",
        f"trainer_resident_b{batch}",
        lambda: with_ceiling(
            bench, trainer(bench, sets, batch, "resident", options), batch, options
        ),
    )


def nvidia(bench: Bench, folder: Path, force_fp32: bool) -> dict:
    """NVIDIA's own Generator (stylegan2-ada-pytorch's training/networks.py) at --cfg=cifar."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    from training.networks import Generator  # NVIDIA's checkout, given with --nvidia

    size = bench.size["stylegan2"]
    torch.manual_seed(0)
    network = Generator(
        z_dim=512,
        c_dim=CLASSES,
        w_dim=512,
        img_resolution=bench.size["image"],
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={
            "channel_base": size["channel_base"],
            "channel_max": size["channel_max"],
            "num_fp16_res": 4,
            "conv_clamp": 256,
        },
    )
    network = network.eval().requires_grad_(False).to(bench.device)
    batch, calls = size["batch"], size["calls"]
    c = F.one_hot(torch.arange(batch) % CLASSES, CLASSES).float().to(bench.device)

    @torch.no_grad()
    def call(i):  # as generate.py does it, with sio's quantisation and copy to the host
        z = torch.from_numpy(np.random.RandomState(i).randn(batch, 512)).float().to(bench.device)
        images = network(z, c, truncation_psi=1, noise_mode="const", force_fp32=force_fp32)
        (images * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu()

    start = time.perf_counter()
    call(0)  # on a GPU its first call builds NVIDIA's CUDA plugins
    bench.sync()
    first_s = time.perf_counter() - start
    seconds = bench.timed(call, calls, warmup=1)
    from torch_utils.ops import bias_act, upfirdn2d  # NVIDIA's: did its CUDA plugins build?

    plugins = {"bias_act": bias_act._plugin is not None, "upfirdn2d": upfirdn2d._plugin is not None}
    return {
        "images_per_s": batch * calls / seconds,
        "batch": batch,
        "calls": calls,
        "seconds": seconds,
        "first_call_s": first_s,
        "force_fp32": force_fp32,
        "parameters": parameters(network),
        "cuda_plugins_built": plugins,
    }


def run_nvidia(bench: Bench, folder: str | None) -> None:
    if not folder:
        bench.data["sections"]["nvidia"]["stylegan2_ada"] = {"not_run": "no --nvidia DIR given"}
        return
    modes = (True, False) if bench.cuda else (True,)  # its fp16 layers run on a GPU only
    for force in modes:
        key = "force_fp32" if force else "default_fp16_top4"
        bench.measure("nvidia", key, lambda f=force: nvidia(bench, Path(folder), f))
    ours = bench.data["sections"]["generation"].get("stylegan2_cifar10_fp32", {})
    theirs = bench.data["sections"]["nvidia"].get("force_fp32", {})
    if "images_per_s" in ours and "images_per_s" in theirs:
        bench.data["sections"]["nvidia"]["sio_fp32_over_nvidia_fp32"] = {
            "ratio": ours["images_per_s"] / theirs["images_per_s"]
        }
        bench.write()


# ---------------------------------------------------------------- the table


def table(bench: Bench) -> str:
    lines = [
        f"device {bench.device} ({bench.data['machine'].get('cuda') or 'CPU'}), "
        f"{'--small' if bench.small else 'full sizes'}, {bench.elapsed():.0f} s",
        "",
        "| section | measurement | images/s (or s) | vs ceiling | peak GPU MiB |",
        "|---|---|---:|---:|---:|",
    ]
    for section, entries in bench.data["sections"].items():
        for key, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            if "not_run" in entry or "error" in entry:
                value = "not run" if "not_run" in entry else "error"
            elif "images_per_s" in entry:
                value = f"{entry['images_per_s']:,.0f}"
            elif "total_s" in entry:
                value = f"{entry['total_s']:.2f} s"
            elif "ratio" in entry:
                value = f"ratio {entry['ratio']:.2f}"
            else:
                continue
            ratio = f"{entry['vs_ceiling']:.2f}" if "vs_ceiling" in entry else ""
            peak = entry.get("peak_gpu_bytes")
            memory = f"{peak / 2**20:,.0f}" if isinstance(peak, (int, float)) else ""
            lines.append(f"| {section} | {key} | {value} | {ratio} | {memory} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes: seconds on a CPU")
    default_out = Path(__file__).parent / "results" / "gpu.json"
    parser.add_argument("--out", default=str(default_out), help="the results JSON")
    parser.add_argument("--nvidia", default=None, help="a stylegan2-ada-pytorch checkout")
    parser.add_argument("--budget", type=float, default=None, help="seconds (cuda: 420)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch; use --device cpu")
    if args.small:
        torch.set_num_threads(1)  # a smoke test: no OpenMP barriers on a shared small machine
    global BENCH
    bench = BENCH = Bench(args)
    print(f"writing {bench.out} after every measurement", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="sio-gpu-bench-") as scratch:
        root = Path(scratch)
        sets = Sets(bench, root)
        run_ceilings(bench)
        run_trainer(bench, sets)
        run_loader(bench, sets)
        run_generation(bench)
        bench.measure("evaluation", "all_detectors", lambda: evaluation(bench, root))
        run_compile(bench, sets)
        run_nvidia(bench, args.nvidia)
    bench.data["complete"] = True
    bench.write()
    print(table(bench))
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
