"""Images/s written by `sio shard` for 32x32 PNG shards, against Pillow's raw PNG-encode rate.

A CIFAR-10 training set of natural-looking 32x32 images is written in its real on-disk format
(python pickle batches) to a temporary folder. Three rates are timed on the same images, in
alternating rounds (the machine may be shared), one process, one thread:

- ceiling: ``Image.fromarray(x).save(buf, "PNG", compress_level=6)`` alone (what every sample
  must pay);
- writer: ``ShardSetWriter.write`` from in-memory arrays (PNG, tar members, sha256, statistics);
- sio shard: ``write_benchmark`` of a benchmark file's ``id_train`` split, end to end (reading
  the pickle batches, per-class selection, fitting, writing, the manifest).

Each path's median over the rounds is reported as images per wall-clock second and per CPU-second
of this process (the latter is less disturbed by other work sharing the machine), each as a share
of the ceiling's. Prints a Markdown table and writes benchmarks/results/shard.json with the
machine.
Usage: python benchmarks/shard.py [num_images] [rounds]
"""

from __future__ import annotations

import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sio.core.environment import describe_machine
from sio.shards import write_benchmark
from sio.shards.config import ShardConfig
from sio.shards.samplefiles import natural_images, write_cifar10
from sio.shardset import ShardSetWriter, read_manifest

SPEC = """
name: speed
image_size: 32
id:
  train: {name: cifar10, reader: cifar10, path: cifar-10-batches-py, part: [train]}
  val: {name: cifar10, reader: cifar10, path: cifar-10-batches-py, part: [test]}
  test: {name: cifar10, reader: cifar10, path: cifar-10-batches-py, part: [test]}
far:
  - {name: svhn, reader: svhn, path: svhn}
near: []
"""


class Timer:
    """Wall-clock and CPU seconds of a block: CPU time is what this process itself spent, so it
    is less disturbed than wall time when other work shares the machine."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def pillow_encode(images: np.ndarray) -> Timer:
    with Timer() as timer:
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return timer


def shard_writer(images: np.ndarray, labels: np.ndarray, out: Path) -> Timer:
    shutil.rmtree(out, ignore_errors=True)
    with (
        Timer() as timer,
        ShardSetWriter(
            out,
            kind="real",
            name="speed",
            image_size=(32, 32),
            channels=3,
            class_names=[str(c) for c in range(10)],
            shard_size=1000,
        ) as writer,
    ):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            writer.write(f"speed-{i:06d}", image, int(label), {"source": "real", "index": i})
    return timer


def sio_shard(config: ShardConfig, out: Path, count: int) -> Timer:
    shutil.rmtree(out, ignore_errors=True)
    with Timer() as timer:
        write_benchmark(config, out, ["id_train"])
    if read_manifest(out / "id_train").num_samples != count:
        raise RuntimeError("sio shard wrote the wrong number of images")
    return timer


PATHS = {
    "ceiling": "Pillow PNG encode alone (ceiling)",
    "writer": "ShardSetWriter.write from arrays",
    "sio shard": "`sio shard` id_train from CIFAR pickle batches",
}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    images = natural_images(count, 32, seed=0)
    labels = np.arange(count) % 10
    wall: dict[str, list[float]] = {key: [] for key in PATHS}
    cpu: dict[str, list[float]] = {key: [] for key in PATHS}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        names = [f"class{c}" for c in range(10)]
        batches = root / "data" / "cifar-10-batches-py"
        write_cifar10(batches, (images, labels), (images[:10], labels[:10]), names)
        (root / "speed.yaml").write_text(SPEC)
        config = ShardConfig(
            benchmark=str(root / "speed.yaml"), data_root=str(root / "data"), shard_size=1000
        )
        for _ in range(rounds):
            timers = {
                "ceiling": pillow_encode(images),
                "writer": shard_writer(images, labels, root / "writer"),
                "sio shard": sio_shard(config, root / "bench", count),
            }
            for key, timer in timers.items():
                wall[key].append(count / timer.wall)
                cpu[key].append(count / timer.cpu)
        sample_bytes = read_manifest(root / "bench" / "id_train").shards[0].bytes / 1000
    report(wall, cpu, count, rounds, sample_bytes)


def report(wall, cpu, count: int, rounds: int, sample_bytes: float) -> None:
    wall_median = {key: statistics.median(values) for key, values in wall.items()}
    cpu_median = {key: statistics.median(values) for key, values in cpu.items()}
    lines = [
        f"{count:,} images of 32x32 RGB, {rounds} alternating rounds, one process and thread",
        "",
        "| path | images/s (wall, median) | share | images per CPU-second (median) | share "
        "| wall images/s, every round |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, label in PATHS.items():
        each = ", ".join(f"{r:,.0f}" for r in wall[key])
        lines.append(
            f"| {label} | {wall_median[key]:,.0f} | "
            f"{100 * wall_median[key] / wall_median['ceiling']:.0f} % | {cpu_median[key]:,.0f} | "
            f"{100 * cpu_median[key] / cpu_median['ceiling']:.0f} % | {each} |"
        )
    print("\n".join(lines))
    print(f"\nshard bytes per sample: {sample_bytes:,.0f} (png + cls + json members, tar headers)")
    ratios = {
        key: {
            "wall": wall_median[key] / wall_median["ceiling"],
            "cpu": cpu_median[key] / cpu_median["ceiling"],
        }
        for key in ("writer", "sio shard")
    }
    result = {
        "images": count,
        "rounds": rounds,
        "wall_images_per_s": wall,
        "images_per_cpu_s": cpu,
        "median_wall_images_per_s": wall_median,
        "median_images_per_cpu_s": cpu_median,
        "ratio_to_ceiling": ratios,
        "shard_bytes_per_sample": sample_bytes,
        "machine": describe_machine(),
    }
    results_dir = Path(__file__).parent / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "shard.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
