"""A benchmark on disk: one shard set per split plus ``benchmark.json`` naming their roles.

``benchmark.json`` (written last, so its presence means every split is complete)::

    {"format": "sio-benchmark/1", "name": "digits", "image_size": [8, 8], "channels": 1,
     "class_names": ["0", ...],
     "id": {"train": "id_train", "val": "id_val", "test": "id_test"},
     "ood": {"near": {"digits": "near_digits"}, "far": {"textures": "far_textures", ...}},
     "config": {...the shard config that made it...}}

Folders are relative to the benchmark folder. Benchmarks defined by a file (spec.py) also
record that definition under ``"definition"``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sio.core.config import to_dict
from sio.core.definition import require_same
from sio.core.files import write_json_atomic
from sio.core.progress import progress
from sio.shards.config import ShardConfig
from sio.shardset import MANIFEST, ShardError, ShardSetWriter
from sio.shardset.read import read_manifest

BENCHMARK_FILE = "benchmark.json"
BENCHMARK_FORMAT = "sio-benchmark/1"


@dataclass(frozen=True)
class Benchmark:
    root: Path
    name: str
    class_names: tuple[str, ...]
    id_splits: dict[str, Path]  # train / val / test
    near: dict[str, Path]
    far: dict[str, Path]


def read_benchmark(root: str | Path) -> Benchmark:
    root = Path(root)
    path = root / BENCHMARK_FILE
    if not path.is_file():
        raise ShardError(
            f"{path}: no benchmark description; `sio shard BENCHMARK --out {root}` "
            "writes one shard set per split and this file last (only once every split is there)"
        )
    data = json.loads(path.read_text())
    if data.get("format") != BENCHMARK_FORMAT:
        raise ShardError(f"{path}: not an sio benchmark file (format {BENCHMARK_FORMAT!r})")
    return Benchmark(
        root=root,
        name=data["name"],
        class_names=tuple(data["class_names"]),
        id_splits={k: root / v for k, v in data["id"].items()},
        near={k: root / v for k, v in data["ood"]["near"].items()},
        far={k: root / v for k, v in data["ood"]["far"].items()},
    )


def is_complete(folder: Path, identity: dict, ignore: tuple[str, ...] = ()) -> bool:
    """True if ``folder`` holds a complete shard set made the same way; an error if it was made
    differently (``ignore``: provenance keys that record, but do not define, the set)."""
    if not (folder / MANIFEST).is_file():
        return False
    require_same(
        f"{folder} was written with a different shard config or benchmark definition",
        read_manifest(folder).provenance,
        identity,
        ignore=ignore,
        remedy="remove it or choose another --out",
        error=ShardError,
    )
    return True


def choose_splits(rows: list[tuple], wanted) -> list[tuple]:
    """The rows (folder, role, name, ...) named in ``wanted`` by folder or role; all if None."""
    if not wanted:
        return rows
    known = {row[0] for row in rows} | {row[1] for row in rows}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ValueError(f"unknown splits {unknown}; known: {', '.join(sorted(known))}")
    return [row for row in rows if row[0] in wanted or row[1] in wanted]


def finish_benchmark(out: Path, rows, name, size, channels, class_names, extra) -> Benchmark | None:
    """Write benchmark.json once every split is complete; None while some are missing."""
    if not all((out / row[0] / MANIFEST).is_file() for row in rows):
        return None
    roles: dict = {"id": {}, "ood": {"near": {}, "far": {}}}
    for folder, role, split_name, *_ in rows:
        (roles["id"] if role == "id" else roles["ood"][role])[split_name] = folder
    document = {
        "format": BENCHMARK_FORMAT,
        "name": name,
        "image_size": list(size),
        "channels": channels,
        "class_names": list(class_names),
        **roles,
        **extra,
    }
    write_json_atomic(out / BENCHMARK_FILE, document)
    return read_benchmark(out)


def split_order(count: int, config: ShardConfig, folder: str):
    """The order a split's ``count`` samples are written in: ``shard.order: shuffled`` a
    permutation seeded by (``shard.seed``, folder), ``source`` the readers' order."""
    import numpy as np

    from sio.core.seeding import numpy_rng

    if config.order == "source":
        return np.arange(count)
    return numpy_rng(config.seed, "order", folder).permutation(count)


def _write_split(out: Path, folder, images, labels, class_names, metas, config: ShardConfig):
    provenance = {"generator": None, "split": folder, "shard_config": to_dict(config)}
    if is_complete(out / folder, provenance):  # complete from an earlier, interrupted run
        return
    order = split_order(len(images), config, folder)
    images, labels, metas = images[order], labels[order], [metas[i] for i in order]
    channels = 1 if images.ndim == 3 else 3
    with ShardSetWriter(
        out / folder,
        kind="real",
        name=folder,
        image_size=images.shape[1:3],
        channels=channels,
        class_names=class_names,
        shard_size=config.shard_size,
        provenance=provenance,
    ) as writer:
        for i, (image, label, meta) in enumerate(zip(images, labels, metas, strict=True)):
            writer.write(f"{folder}-{i:06d}", image, int(label), {"source": "real", **meta})


def _write_digits(config: ShardConfig, out: Path, splits) -> Benchmark | None:
    from sio.shards.digits import build_digits

    all_splits = build_digits(config.digits, config.seed)
    chosen = choose_splits(all_splits, splits)
    total = sum(len(s[3]) for s in chosen)
    with progress(total=total, desc="shard digits", unit="img") as bar:
        for folder, _, _, images, labels, class_names, metas in chosen:
            _write_split(out, folder, images, labels, class_names, metas, config)
            bar.update(len(images))
    first = all_splits[0][3]
    id_names = next(s[5] for s in all_splits if s[1] == "id")
    channels = 1 if first.ndim == 3 else 3
    extra = {"config": to_dict(config)}
    return finish_benchmark(out, all_splits, "digits", first.shape[1:3], channels, id_names, extra)


def write_benchmark(
    config: ShardConfig,
    out: str | Path,
    splits=None,
    report: Callable[[str], None] | None = None,
) -> Benchmark | None:
    """Build ``config.benchmark`` under ``out``, one shard set per split (only ``splits``, folder
    names or roles, if given); complete splits made the same way are kept. Returns the benchmark
    once every split is there (benchmark.json is written then), else None."""
    out = Path(out)
    start = time.perf_counter()
    if config.benchmark == "digits":
        result = _write_digits(config, out, splits)
    else:
        from sio.shards.build import write_spec_benchmark
        from sio.shards.spec import load_spec

        result = write_spec_benchmark(load_spec(config.benchmark), config, out, splits, report)
    if report is not None:
        report(f"{config.benchmark}: done in {time.perf_counter() - start:.1f} s")
    return result
