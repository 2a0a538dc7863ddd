"""Generation speed per generator on this device, and how long the sampler waited on writing.

For each generator: images/s of the whole job (sampling, PNG encoding and tar writing, with
encoding in threads beside the sampler) and the fraction of wall time the sampler spent
waiting for the writer (target: under 5%). On a CPU the generators are small; with a GPU the
real-size architectures are timed too (random weights: speed does not depend on them).
Writes benchmarks/results/generate.json. Usage: python benchmarks/generate.py
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


if __name__ == "__main__":
    main()
