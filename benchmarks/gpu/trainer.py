"""2. trainer: ``sio.train.train_classifier`` on records shard sets, streaming and resident,
fp32 and with the trainer's GPU options; its ratio to the ceiling."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from gpu.ceiling import ceiling_key, precision_of
from gpu.harness import ALPHA, PAD, Bench
from gpu.sets import Sets
from sio.train.config import TrainConfig


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
