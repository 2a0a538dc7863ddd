"""The mnist5k classifier recipe of examples/mnist5k.yaml: ID accuracy and wall time per seed.

Shards mnist5k as the example does, trains the example's `train` section at alpha = 1 (the
baseline) for each seed on this machine's CPUs, and measures ID test accuracy. Writes
benchmarks/results/mnist5k_recipe.json (per seed: accuracy, training seconds; the machine, torch,
the load average before and after). Usage: nice -n 10 python benchmarks/mnist5k_recipe.py [SEEDS]
(SEEDS comma-separated, default 0).

``--order source`` shards the CSV in its class-sorted order instead of the example's
``shuffled`` one, and ``--resident`` holds the set in memory instead of streaming it: the four
combinations measure that the stream mixes a class-sorted set as well as an in-memory
permutation does (issue 14's "mnist5k streaming vs resident" row). Results go to
``mnist5k_recipe[-ORDER][-resident].json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sio.core.config import to_dict
from sio.core.environment import describe_machine
from sio.pipeline.config import load_pipeline
from sio.shards import write_benchmark
from sio.shardset import iter_samples
from sio.train import load_classifier, train_classifier

PIPELINE = Path(__file__).parent.parent / "examples" / "mnist5k.yaml"


def id_accuracy(checkpoint: Path, test_set: Path) -> float:
    model, _ = load_classifier(checkpoint, "cpu")
    model.eval()
    images, labels = zip(*[(s[0], s[1]) for s in iter_samples(test_set)], strict=True)
    with torch.no_grad():
        predicted = model(torch.from_numpy(np.stack(images))).argmax(1)
    return 100 * float((predicted == torch.tensor(labels)).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", nargs="?", default="0", help="comma-separated (default 0)")
    parser.add_argument("--order", choices=["shuffled", "source"], default="shuffled")
    parser.add_argument("--resident", action="store_true", help="hold the set in memory")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    config = load_pipeline(PIPELINE)
    config = dataclasses.replace(
        config,
        shard=dataclasses.replace(config.shard, order=args.order),
        train=dataclasses.replace(config.train, resident=args.resident),
    )
    load_before = os.getloadavg()
    runs = {}
    variant = ("" if args.order == "shuffled" else f"-{args.order}") + (
        "-resident" if args.resident else ""
    )
    out = Path(__file__).parent / "results" / f"mnist5k_recipe{variant}.json"
    with tempfile.TemporaryDirectory() as scratch:
        bench = write_benchmark(config.shard, Path(scratch) / "benchmark")
        for seed in seeds:
            start = time.perf_counter()
            checkpoint = train_classifier(
                real=bench.id_splits["train"],
                synthetic=None,
                alpha=1.0,
                seed=seed,
                config=config.train,
                out=Path(scratch) / f"seed{seed}",
                device="cpu",
            )
            seconds = time.perf_counter() - start
            accuracy = id_accuracy(checkpoint, bench.id_splits["test"])
            runs[seed] = {"id_acc": accuracy, "train_s": seconds}
            print(f"seed {seed}: ID accuracy {accuracy:.2f}% in {seconds:.0f} s", flush=True)
            result = {  # rewritten after every seed, so a stopped run keeps what it measured
                "pipeline": "examples/mnist5k.yaml",
                "shard_order": args.order,
                "train": to_dict(config.train),
                "runs": runs,
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "machine": describe_machine(),
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
            }
            out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
