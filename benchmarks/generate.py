"""Generation speed per generator on this device, and how long the sampler waited on writing.

For each generator: images/s of the whole job (sampling, PNG encoding and tar writing, with
encoding in threads beside the sampler) and the fraction of wall time the sampler spent
waiting for the writer (target: under 5%). On a CPU the generators are small; with a GPU the
real-size architectures are timed too (random weights: speed does not depend on them).
Writes benchmarks/results/generate.json. Usage: python benchmarks/generate.py

``python benchmarks/generate.py million [--num N]``: one job of N images (default 1M; tiny random
BigGAN, records, 1,000-image shards) through ``sio generate``: images/s, the child's peak RSS,
disk per image, a no-op rerun (every shard's size and sha256 checked, the manifest rewritten),
a full verify, and the same job SIGKILLed twice and resumed, compared by shard sha256.
Writes benchmarks/results/generate_million.json.

``python benchmarks/generate.py service [--num N] [--steps S]``: ``sio serve`` of the same
generator: images/s served to 1 and 4 readers vs the offline job, and training steps/s
(small_cnn, batch 128, alpha 0.5) from the service vs from the local records of the same images.
Writes benchmarks/results/generate_service.json.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from sio.core.environment import describe_machine
from sio.generate import BigGANGenerator, DDPMGenerator, Job, StyleGAN2Generator, run_job
from sio.generate.config import BigGANSettings, DDPMModelConfig, GenerateConfig, SamplerConfig
from sio.generate.ddpm.model import build_scheduler, build_unet
from sio.generate.stylegan2.network import StyleGAN2
from sio.generate.stylegan2.spec import GeneratorSpec, MappingSpec, SynthesisSpec

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"


def builtin_digits():
    unet = build_unet(DDPMModelConfig(), image_size=8, channels=1, num_classes=6)
    return DDPMGenerator(
        unet.to(DEVICE),
        build_scheduler(),
        class_names=tuple("012345"),
        null_class=6,
        sampler=SamplerConfig(steps=20),
    )


def ddpm_cifar10_architecture(steps):
    """google/ddpm-cifar10-32's UNet (35.7 M parameters), random weights."""
    unet = UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_eps=1e-6,
        freq_shift=1,
        flip_sin_to_cos=False,
        num_class_embeds=10,
    )
    return DDPMGenerator(
        unet.to(DEVICE),
        DDPMScheduler(),
        class_names=tuple("0123456789"),
        sampler=SamplerConfig(steps=steps),
    )


def biggan(width, layers, size):
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    config = BigGANConfig(
        output_dim=size,
        z_dim=128,
        class_embed_dim=128,
        channel_width=width,
        num_classes=1000,
        layers=layers,
        attention_layer_position=len(layers) // 2,
    )
    settings = BigGANSettings(imagenet_classes=tuple(range(10)))
    return BigGANGenerator(
        BigGAN(config).to(DEVICE), settings, image_size=32, weights=Path("random")
    )


def stylegan2_cifar10_architecture():
    """stylegan2-ada-pytorch's cifar10.pkl architecture (train.py --cfg=cifar --cond=1: 2
    mapping layers, channel_base 32768, conv_clamp 256), random weights."""
    spec = GeneratorSpec(
        z_dim=512,
        c_dim=10,
        w_dim=512,
        img_resolution=32,
        img_channels=3,
        mapping=MappingSpec(num_layers=2),
        synthesis=SynthesisSpec(channel_base=32768, channel_max=512, conv_clamp=256),
    )
    network = StyleGAN2(spec).to(DEVICE)
    return StyleGAN2Generator(network, weights=Path("random"))


def time_job(label, generator, num, batch, shard, encoding="png"):
    generator.checkpoint_sha256 = lambda: "random-weights"
    config = GenerateConfig(num_images=num, batch_size=batch, shard_size=shard, encoding=encoding)
    job = Job(generator, config, generator.class_names)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_job(job, Path(out) / "syn")
        wall = time.perf_counter() - start
    waited = job.last_timing["waited_s"]
    print(f"| {label} | {num} | {num / wall:,.0f} | {100 * waited / wall:.1f}% |", flush=True)
    return {
        "generator": label,
        "encoding": encoding,
        "images": num,
        "wall_s": wall,
        "images_per_s": num / wall,
        "waited_s": waited,
        "waited_fraction": waited / wall,
    }


def main():
    torch.manual_seed(0)
    rows = []
    print(
        f"device: {DEVICE}\n\n| generator | images | images/s | sampler waited |\n|---|---|---|---|"
    )
    rows.append(time_job("built-in DDPM, digits 8x8, DDIM-20", builtin_digits(), 3000, 500, 1000))
    small_biggan = [(True, 16, 8), (False, 8, 4), (True, 4, 2), (False, 2, 1), (True, 1, 1)]
    tiny_biggan = biggan(8, small_biggan, 32)
    rows.append(time_job("BigGAN, width 8, 32x32 output", tiny_biggan, 3000, 500, 1000))
    rows.append(
        time_job("BigGAN, width 8, 32x32 output, records", tiny_biggan, 3000, 500, 1000, "records")
    )
    rows.append(
        time_job(
            "ddpm-cifar10-32 architecture, DDIM-2",
            ddpm_cifar10_architecture(2),
            64 if not GPU else 20000,
            32 if not GPU else 1000,
            1000,
        )
    )
    rows.append(
        time_job(
            "StyleGAN2-ADA cifar10 architecture",
            stylegan2_cifar10_architecture(),
            128 if not GPU else 102400,
            64 if not GPU else 1024,
            128 if not GPU else 10240,
        )
    )
    out = Path(__file__).parent / "results" / "generate.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"machine": describe_machine(), "device": DEVICE, "rows": rows}, indent=2)
    )


# --- the 1M-image job: throughput, memory, disk, manifest and verify, kills and resumes -------

MILLION_BIGGAN = [(True, 16, 8), (False, 8, 4), (True, 4, 2), (False, 2, 1), (True, 1, 1)]


def write_tiny_biggan(folder: Path) -> Path:
    """The width-8 BigGAN above (32x32 output, 1000 classes), random weights, as a folder."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    config = BigGANConfig(
        output_dim=32,
        z_dim=128,
        class_embed_dim=128,
        channel_width=8,
        num_classes=1000,
        layers=MILLION_BIGGAN,
        attention_layer_position=len(MILLION_BIGGAN) // 2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(vars(config)))
    torch.manual_seed(0)
    torch.save(BigGAN(config).state_dict(), folder / "pytorch_model.bin")
    (folder.parent / "pipeline.yaml").write_text(
        f"generator:\n  name: biggan\n  path: {folder}\n"
        "  biggan:\n    truncation: 0.5\n    imagenet_classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
        "generate:\n  encoding: records\n  batch_size: 500\n  network_batch: 500\n"
        "  shard_size: 1000\n"
    )
    return folder


def generate_command(work: Path, out: Path, num: int) -> list[str]:
    import sys

    return [
        sys.executable,
        "-m",
        "sio",
        "generate",
        "--config",
        str(work / "pipeline.yaml"),
        "--image-size",
        "32",
        "--num-images",
        str(num),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]


def run_measured(command: list[str], kill_at: int | None = None, out: Path | None = None):
    """(wall seconds, peak RSS bytes of the child, killed?) of one ``sio generate`` process;
    with ``kill_at``, SIGKILL once that many shards are recorded."""
    import os
    import signal
    import subprocess

    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ}
    )
    killed = False
    while True:  # os.wait4 (not Popen.poll) so that the child's resource usage comes back
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if kill_at is not None and len(list((out / ".progress").glob("shard-*.json"))) >= kill_at:
            process.send_signal(signal.SIGKILL)
            killed = True
            _, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if not killed and os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command}: exit status {status}")
    return wall, usage.ru_maxrss * 1024, killed


def million(num: int, work: Path) -> dict:
    from sio.shardset import read_manifest, verify_shard_set

    write_tiny_biggan(work / "biggan")
    shards = num // 1000
    result = {"images": num, "shards": shards, "generator": "BigGAN width 8, 32x32, records"}
    # 1. one uninterrupted job
    out = work / "whole"
    wall, rss, _ = run_measured(generate_command(work, out, num))
    manifest = read_manifest(out)
    disk = sum(s.bytes for s in manifest.shards)
    result["whole"] = {
        "wall_s": wall,
        "images_per_s": num / wall,
        "peak_rss_bytes": rss,
        "disk_bytes": disk,
        "disk_bytes_per_image": disk / num,
    }
    print(json.dumps(result["whole"]), flush=True)
    # 2. a no-op rerun: every shard's size and sha256 checked against its record, the manifest
    #    rewritten; and a full verify (every shard read, hashed and counted)
    wall, rss, _ = run_measured(generate_command(work, out, num))
    result["noop_rerun"] = {"wall_s": wall, "peak_rss_bytes": rss}
    start = time.perf_counter()
    assert verify_shard_set(out) == num
    result["verify_s"] = time.perf_counter() - start
    print(json.dumps({k: result[k] for k in ("noop_rerun", "verify_s")}), flush=True)
    # 3. the same job killed twice (at about 1/3 and 2/3) and resumed
    resumed = work / "resumed"
    walls = []
    for kill_at in (shards // 3, 2 * shards // 3):
        wall, _, killed = run_measured(
            generate_command(work, resumed, num), kill_at=kill_at, out=resumed
        )
        assert killed, "the job ended before the kill"
        walls.append(wall)
    wall, rss, _ = run_measured(generate_command(work, resumed, num))
    walls.append(wall)
    same = [s.sha256 for s in read_manifest(resumed).shards] == [s.sha256 for s in manifest.shards]
    result["killed_twice"] = {
        "wall_s_per_run": walls,
        "total_wall_s": sum(walls),
        "last_peak_rss_bytes": rss,
        "identical_sha256": same,
    }
    print(json.dumps(result["killed_twice"]), flush=True)
    import shutil

    shutil.rmtree(resumed)
    shutil.rmtree(out)
    return result


# --- the generation service: images/s served vs offline, training from it vs from records ----


def fetch_all(url: str, workers: int) -> tuple[int, float]:
    """(bytes, seconds) to GET every shard of the service's manifest with ``workers`` readers."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from sio.shardset import read_manifest

    names = [s.name for s in read_manifest(url).shards]  # every field checked (the contract)

    def get(name):
        with urllib.request.urlopen(f"{url}/{name}", timeout=600) as response:
            return len(response.read())

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(get, names))
    return total, time.perf_counter() - start


def start_service(work: Path, num: int):
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "sio", "serve", str(work / "biggan"), "--port", "0",
        "--config", str(work / "pipeline.yaml"), "--image-size", "32",
        "--num-images", str(num), "--device", "cpu",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    return process, line.split(" at ", 1)[1].split("/manifest.json")[0]


def stop_service(process) -> None:
    import signal

    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)


def write_real_set(folder: Path, count: int):
    import numpy as np

    from sio.shardset import ShardSetWriter

    rng = np.random.default_rng(0)
    with ShardSetWriter(
        folder,
        kind="real",
        name="real",
        image_size=(32, 32),
        channels=3,
        class_names=tuple(str(c) for c in range(10)),
        shard_size=1000,
    ) as writer:
        for i in range(count):
            writer.write(f"r{i:06d}", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), i % 10, {})


def train_seconds(real, synthetic, out: Path, steps: int, workers: int) -> float:
    from sio.train import train_classifier
    from sio.train.config import TrainConfig

    settings = TrainConfig(
        model="small_cnn", epochs=1, batch_size=128, lr=0.05, momentum=0.9, nesterov=True,
        weight_decay=5e-4, num_workers=workers, steps_per_epoch=steps,
        crop_padding=4, hflip=True,
    )  # fmt: skip
    start = time.perf_counter()
    path = train_classifier(
        real=real, synthetic=synthetic, alpha=0.5, seed=0, config=settings, out=out
    )
    wall = time.perf_counter() - start
    history = torch.load(path, weights_only=True)["history"]
    return history[0].get("seconds", wall), wall


def service(num: int, work: Path, steps: int) -> dict:
    write_tiny_biggan(work / "biggan")
    result = {"images": num, "generator": "BigGAN width 8, 32x32, records"}
    wall, _, _ = run_measured(generate_command(work, work / "offline", num))
    result["offline_images_per_s"] = num / wall
    for readers in (1, 4):
        process, url = start_service(work, num)
        try:
            total, seconds = fetch_all(url, readers)
        finally:
            stop_service(process)
        result[f"served_images_per_s_{readers}_readers"] = num / seconds
        result["served_bytes"] = total
    print(json.dumps(result), flush=True)
    write_real_set(work / "real", 5000)
    process, url = start_service(work, num)
    try:
        epoch_s, wall = train_seconds(work / "real", url, work / "run-served", steps, 2)
    finally:
        stop_service(process)
    result["train_from_service"] = {"steps": steps, "epoch_s": epoch_s, "wall_s": wall,
                                    "steps_per_s": steps / epoch_s}  # fmt: skip
    epoch_s, wall = train_seconds(work / "real", work / "offline", work / "run-local", steps, 2)
    result["train_from_local_records"] = {"steps": steps, "epoch_s": epoch_s, "wall_s": wall,
                                          "steps_per_s": steps / epoch_s}  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


def save(name: str, data: dict) -> None:
    out = Path(__file__).parent / "results" / name
    out.parent.mkdir(exist_ok=True)
    record = {"machine": describe_machine(), "torch": torch.__version__, **data}
    out.write_text(json.dumps(record, indent=2) + "\n")


def cli():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["speed", "million", "service"], nargs="?", default="speed")
    parser.add_argument("--num", type=int, default=None, help="images (million: 1000000)")
    parser.add_argument("--steps", type=int, default=200, help="training steps (service)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    args = parser.parse_args()
    if args.part == "speed":
        return main()
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        if args.part == "million":
            save("generate_million.json", million(args.num or 1_000_000, Path(work)))
        else:
            save("generate_service.json", service(args.num or 20_000, Path(work), args.steps))


if __name__ == "__main__":
    cli()
