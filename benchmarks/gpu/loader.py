"""3. loader: batches of the trainer's loader alone, in one torch thread (what one DataLoader
worker does): records and PNG streaming, resident, and the one-gather crop/flip."""

from __future__ import annotations

import time

import torch

from gpu.harness import ALPHA, PAD, Bench
from gpu.sets import Sets
from sio.train.gpu import draw_crop_flip, pad_images, step_generator, take_crop_flip


def loader(bench: Bench, sets: Sets, path: str, batch: int) -> dict:
    from sio.train import batch_counts
    from sio.train.resident import ResidentBatches, load_resident
    from sio.train.sources import LocatedSet
    from sio.train.stream import MixedBatches, MixSpec, SharedEpoch

    n_real, n_syn = batch_counts(batch, ALPHA)
    warmup, calls = bench.size["loader_steps"][path]
    real, synthetic = sets.get("png" if path == "png" else "records")
    sources = {"real": LocatedSet.open(real), "synthetic": LocatedSet.open(synthetic)}
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
