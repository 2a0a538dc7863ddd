"""A benchmark on disk: one shard set per split plus ``benchmark.json`` naming their roles.

``benchmark.json`` (written last, so its presence means every split is complete)::

    {"format": "sio-benchmark/1", "name": "digits", "image_size": [8, 8], "channels": 1,
     "class_names": ["0", ...],
     "id": {"train": "id_train", "val": "id_val", "test": "id_test"},
     "ood": {"near": {"digits": "near_digits"}, "far": {"textures": "far_textures", ...}},
     "config": {...the shard config that made it...}}

Folders are relative to the benchmark folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sio.config import ShardConfig, to_dict
from sio.files import write_json_atomic

from .format import MANIFEST, ShardError, ShardSetWriter
from .read import read_manifest

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
            f"{path}: no benchmark description; `sio shard digits --out {root}` "
            "writes one shard set per split and this file last"
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


def _write_split(out: Path, folder, images, labels, class_names, metas, config: ShardConfig):
    provenance = {"generator": None, "split": folder, "shard_config": to_dict(config)}
    if (out / folder / MANIFEST).is_file():  # complete from an earlier, interrupted run
        if read_manifest(out / folder).provenance != provenance:
            raise ShardError(
                f"{out / folder} was written with a different shard config; "
                "remove it or choose another --out"
            )
        return
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


def write_benchmark(config: ShardConfig, out: str | Path) -> Benchmark:
    """Build ``config.benchmark`` and write it under ``out``; complete splits are kept."""
    out = Path(out)
    if config.benchmark != "digits":
        raise ValueError(f"unknown benchmark {config.benchmark!r}")
    from .digits import build_digits

    splits = build_digits(config.digits, config.seed)
    roles: dict = {"id": {}, "ood": {"near": {}, "far": {}}}
    total = sum(len(s[3]) for s in splits)
    with tqdm(total=total, desc="shard digits", unit="img", leave=False) as bar:
        for folder, role, name, images, labels, class_names, metas in splits:
            _write_split(out, folder, images, labels, class_names, metas, config)
            (roles["id"] if role == "id" else roles["ood"][role])[name] = folder
            bar.update(len(images))
    id_names = next(s[5] for s in splits if s[1] == "id")
    write_json_atomic(
        out / BENCHMARK_FILE,
        {
            "format": BENCHMARK_FORMAT,
            "name": config.benchmark,
            "image_size": list(splits[0][3].shape[1:3]),
            "channels": 1 if splits[0][3].ndim == 3 else 3,
            "class_names": list(id_names),
            **roles,
            "config": to_dict(config),
        },
    )
    return read_benchmark(out)
