"""1. ceiling: the compute-only ceiling of the training step (see the package docstring)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from gpu.harness import CLASSES, PAD, Bench
from sio.train.gpu import (
    autocast,
    channels_last,
    draw_crop_flip,
    pad_images,
    step_generator,
    take_crop_flip,
)


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
    compile_s = bench.first_call_s(step) if compile else None
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


def precision_of(options: dict) -> tuple[str, bool]:
    return options.get("precision", "fp32"), bool(options.get("channels_last", False))
