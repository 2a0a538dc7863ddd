"""A small deterministic loader trace (keys, labels and a hash of the images of every step and
rank) over PNG and records sets of prime sizes, for ``tests/data/loader_trace.json``: recorded
from the loader before the decoded cache (issue 25), compared by ``test_shard_cache.py``.

``python -m tests.loader_trace`` rewrites the fixture (only ever from a loader whose batches are
known to be right)."""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from sio.shardset import ShardSetWriter, convert_shard_set, shard_urls
from sio.train.mixing import batch_counts, rank_share
from sio.train.stream import MixedBatches, MixSpec, SharedEpoch

FIXTURE = Path(__file__).parent / "data" / "loader_trace.json"
SIZE, CHANNELS = (6, 5), 3


def write_png(folder: Path, count: int, kind: str, seed: int, shard_size: int) -> Path:
    rng = np.random.default_rng(seed)
    with ShardSetWriter(
        folder,
        kind=kind,
        name=kind,
        image_size=SIZE,
        channels=CHANNELS,
        class_names=("a", "b", "c"),
        shard_size=shard_size,
    ) as writer:
        for i in range(count):
            image = rng.integers(0, 256, (*SIZE, CHANNELS)).astype(np.uint8)
            writer.write(f"{kind}-{i:04d}", image, i % 3, {"i": i})
    return folder


def write_sets(root: Path) -> dict[str, tuple[str, ...]]:
    """53 real and 29 synthetic images (primes) in PNG (shards of 8) and records (records of 5
    and 3), real shards fewer than 3 workers x 2 ranks in one case (shards of 31)."""
    root = Path(root)
    real = write_png(root / "real-png", 53, "real", 0, 8)
    synthetic = write_png(root / "syn-png", 29, "synthetic", 1, 8)
    write_png(root / "real-big", 53, "real", 2, 31)
    convert_shard_set(real, root / "real-rec", "records", record_size=5)
    convert_shard_set(synthetic, root / "syn-rec", "records", record_size=3)
    names = ("real-png", "syn-png", "real-big", "real-rec", "syn-rec")
    return {name: tuple(shard_urls(root / name)) for name in names}


# (real set, synthetic set, seed, batch, alpha, steps per epoch, shuffle window)
CASES = {
    "png+records": ("real-png", "syn-rec", 0, 7, 0.71, 9, 20),
    "records+png": ("real-rec", "syn-png", 11, 13, 0.5, 5, 10_000),
    "png-only-few-shards": ("real-big", "syn-png", 4, 5, 1.0, 11, 20),
    "png+png": ("real-png", "syn-png", 7, 9, 0.8, 7, 15),
}
WORLDS, EPOCHS = (1, 2), 2


def spec_of(sets: dict, case, rank: int, world: int, **changes) -> MixSpec:
    """Rank ``rank`` of ``world``'s spec of a case (a name in CASES, or such a tuple)."""
    real, synthetic, seed, batch, alpha, steps, window = CASES.get(case, case)
    n_real, n_syn = batch_counts(batch, alpha)
    shares = {
        "real": tuple(rank_share(n_real, r, world) for r in range(world)),
        "synthetic": tuple(rank_share(n_syn, r, world) for r in range(world)),
    }
    return MixSpec(
        real_urls=sets[real],
        synthetic_urls=sets[synthetic],
        n_real=shares["real"][rank],
        n_syn=shares["synthetic"][rank],
        channels=CHANNELS,
        image_size=SIZE,
        steps_per_epoch=steps,
        seed=seed,
        rank=rank,
        shuffle_window=window,
        crop_padding=1,
        hflip=True,
        shares=tuple(shares.items()),
        **changes,
    )


def batch_line(batch: dict) -> dict:
    """What the fixture keeps of one rank's batch: its keys, labels and the images' sha256."""
    images = batch["images"].contiguous().numpy()
    return {
        "real": list(batch["ids"]["real"]),
        "synthetic": list(batch["ids"]["synthetic"]),
        "keys": list(batch["keys"]),
        "labels": batch["labels"].tolist(),
        "images": hashlib.sha256(images.tobytes()).hexdigest(),
    }


def trace(sets: dict, **changes) -> dict:
    """{case/world: [per step: [per rank: batch_line]]} over EPOCHS epochs, in one process."""
    out = {}
    for case in CASES:
        steps = CASES[case][5]
        for world in WORLDS:
            ranks = [
                MixedBatches(spec_of(sets, case, r, world, **changes), SharedEpoch())
                for r in range(world)
            ]
            out[f"{case}/{world}"] = [
                [batch_line(ranks[r].batch(step)) for r in range(world)]
                for step in range(EPOCHS * steps)
            ]
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        data = trace(write_sets(Path(root)))
    FIXTURE.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size:,} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
