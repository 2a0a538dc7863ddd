"""4. generation: images/s of ``sample`` for the built-in DDPM, google/ddpm-cifar10-32's UNet,
BigGAN-deep-128 and sio's StyleGAN2 (random weights; fp32 and bf16)."""

from __future__ import annotations

from pathlib import Path

import torch

from gpu.harness import CLASSES, Bench


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

    compile_s = bench.first_call_s(call) if compile else None
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
    def gen(build, size_key: str, precision: str = "fp32") -> dict:
        return generation(bench, build, size_key, precision)

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
