"""Training the built-in conditional DDPM on a real shard set (images held in memory).

Loss: MSE between the noise and the UNet's prediction at a uniformly drawn timestep (Ho et al.
2020), with labels dropped to the null class with probability ``label_dropout`` so that the same
network also predicts unconditionally (classifier-free guidance). The weights saved are an
exponential moving average of the trained ones.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sio.core.files import atomic_path
from sio.core.schedules import warmup_cosine
from sio.core.seeding import torch_generator
from sio.generate.config import GeneratorConfig
from sio.generate.ddpm.model import DDPMGenerator, build_scheduler, build_unet
from sio.shardset import iter_batches, read_manifest

LABEL_DROPOUT = 0.1


def train_ddpm(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names,
    config: GeneratorConfig,
    device: str | torch.device = "cpu",
) -> DDPMGenerator:
    """Train on uint8 NxCxHxW ``images`` with class ids ``labels``; returns the EMA generator."""
    train = config.train
    num_classes = len(class_names)
    generator = torch_generator(train.seed, "ddpm-train")
    with torch.random.fork_rng(devices=[]):  # diffusers initialises from the global generator
        torch.manual_seed(train.seed)
        unet = build_unet(
            config.model,
            image_size=images.shape[-1],
            channels=images.shape[1],
            num_classes=num_classes,
        ).to(device)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = build_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=train.lr, weight_decay=0.0)
    data = (images.float() / 127.5 - 1).to(device)
    labels = labels.to(device)
    bar = tqdm(range(train.steps), desc="train ddpm", unit="step", leave=False)
    # linear warm-up over the first 10% of steps (at most 100), then cosine to zero
    lr_factor = warmup_cosine(train.steps, max(1, min(100, train.steps // 10)))
    for step in bar:
        idx = torch.randint(len(data), (train.batch_size,), generator=generator).to(device)
        x0, y = data[idx], labels[idx]
        drop = torch.rand(len(y), generator=generator).to(device) < LABEL_DROPOUT
        y = torch.where(drop, torch.full_like(y, num_classes), y)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.randint(scheduler.config.num_train_timesteps, (len(y),), generator=generator).to(
            device
        )
        x_t = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(unet(x_t, t, class_labels=y).sample, noise)
        for group in optimizer.param_groups:
            group["lr"] = train.lr * lr_factor(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters(), strict=True):
                p_ema.lerp_(p, 1 - train.ema_decay)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return DDPMGenerator(
        ema,
        scheduler,
        class_names=class_names,
        image_size=images.shape[-1],
        channels=images.shape[1],
        null_class=num_classes,
        sampler=config.sampler,
    )


def train_from_shard_set(
    real: str | Path, config: GeneratorConfig, out: str | Path, device: str | torch.device = "cpu"
) -> Path:
    """Train on a real shard set (held in memory) and ``save_pretrained`` to ``out``, atomically."""
    manifest = read_manifest(real)
    batches = list(iter_batches(real, 4096))
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"{real}: the built-in DDPM needs square images, got {images.shape[-2:]}")
    generator = train_ddpm(images, labels, manifest.class_names, config, device)
    out = Path(out)
    with atomic_path(out) as tmp:
        generator.save_pretrained(tmp)
    return out
