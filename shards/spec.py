"""Benchmarks as data: one small YAML file per benchmark, parsed into frozen dataclasses.

A benchmark file names the ID dataset's train/val/test sets and the near- and far-OOD sets; each
set is a *source*: a reader (the on-disk format), a path under ``--data-root``, the parts to read
(``train``, ``test``, ...), an optional class filter and an optional per-class split. Unknown
keys are errors. The files shipped with sio live in ``sio/shards/benchmarks/``; any other path
to a ``.yaml`` works the same way. ``digits`` is built in code (see digits.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sio.core.config import (
    ConfigError,
    bounded,
    load_yaml_dataclass,
    short,
    short_text,
    to_dict,
)
from sio.core.config import check as _check

BENCHMARK_DIR = Path(__file__).parent / "benchmarks"
BUILT_IN = ("digits",)


@dataclass(frozen=True)
class SplitSpec:
    """A deterministic per-class split: members of each class are shuffled (seeded by the shard
    seed and the class name), the first ``val`` go to ``val``, the next ``test`` to ``test`` and
    the others to ``rest``. A number below 1 is a fraction of the class, else a count."""

    take: Literal["val", "test", "rest"]
    val: float = bounded(0, 2**31 - 1, default=0.0)
    test: float = bounded(0, 2**31 - 1, default=0.0)

    def __post_init__(self):
        for name in ("val", "test"):
            value = getattr(self, name)
            _check(value >= 0, name, "must be >= 0")
            _check(value < 1 or value == int(value), name, "a count >= 1 must be whole")


@dataclass(frozen=True)
class SourceSpec:
    """One set of images. ``path``, ``labels`` and ``imglist`` are relative to ``--data-root``."""

    name: str
    reader: str
    path: str = ""
    part: tuple[str, ...] = ()
    labels: str | None = None  # a labels file (ImageNet val, flat folders)
    imglist: str | None = None  # an OpenOOD image list; ``path`` is then its data folder
    # OpenOOD's covariate-shifted ID lists (csID, e.g. CIFAR-10-C), read after ``imglist`` into
    # the same set: the full-spectrum ID test of the ``openood-*-fsood`` benchmarks
    csid_imglists: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()  # keep only these, relabelled 0.. in this order
    exclude_classes: tuple[str, ...] = ()
    split: SplitSpec | None = None
    count: int = 0  # crops: how many to render

    def __post_init__(self):
        _check(
            _plain_name(self.name), "name", f"letters, digits, - and _ only, got {short(self.name)}"
        )
        _check(
            not (self.classes and self.exclude_classes),
            "exclude_classes",
            "give classes or exclude_classes, not both",
        )
        _check(self.count >= 0, "count", "must be >= 0")
        _check(
            not self.csid_imglists or self.imglist is not None,
            "csid_imglists",
            "needs `imglist` (the ID list they are added to)",
        )


@dataclass(frozen=True)
class IdSpec:
    train: SourceSpec
    val: SourceSpec
    test: SourceSpec


@dataclass(frozen=True)
class BenchmarkSpec:
    """``resize: openood`` resizes the shorter side to ``resize_shorter`` (default: the image
    size) with bilinear filtering and centre-crops to ``image_size``, as OpenOOD's test
    transform; ``channels: 3`` expands greyscale sets to RGB. ``exact`` refuses any other size."""

    name: str
    image_size: int = bounded(1, 16384)
    id: IdSpec
    near: tuple[SourceSpec, ...]
    far: tuple[SourceSpec, ...]
    channels: int = 3
    resize: Literal["openood", "exact"] = "openood"
    resize_shorter: int = bounded(0, 16384, default=0)
    description: str = ""

    def __post_init__(self):
        _check(
            _plain_name(self.name), "name", f"letters, digits, - and _ only, got {short(self.name)}"
        )
        _check(self.image_size > 0, "image_size", "must be positive")
        _check(self.channels in (1, 3), "channels", "must be 1 or 3")
        _check(
            self.resize_shorter == 0 or self.resize_shorter >= self.image_size,
            "resize_shorter",
            "must be 0 (the image size) or at least the image size",
        )
        _check(len(self.near) + len(self.far) > 0, "far", "a benchmark needs OOD sets")
        for group in ("near", "far"):
            names = [s.name for s in getattr(self, group)]
            _check(len(set(names)) == len(names), group, f"set names repeat: {names}")

    @property
    def shorter_side(self) -> int:
        return self.resize_shorter or self.image_size


def _plain_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_" for c in name)


def shipped_benchmarks() -> list[str]:
    """Every benchmark name ``sio shard`` knows without a path."""
    return sorted([*BUILT_IN, *(p.stem for p in BENCHMARK_DIR.glob("*.yaml"))])


def benchmark_file(name: str) -> Path:
    """The YAML file for a shipped name or a path; a clear error for anything else."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"{short_text(str(path))}: benchmark file not found")
        return path
    path = BENCHMARK_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(shipped_benchmarks())
        raise ConfigError(
            f"unknown benchmark {short(name)}; shipped: {known}; or give the path of a .yaml file"
        )
    return path


def definition(bench: BenchmarkSpec) -> dict:
    """The benchmark as JSON data, as shard sets and benchmark.json record it; a set's empty
    ``csid_imglists`` is left out, so sets written before that field existed still match."""
    data = to_dict(bench)
    for source in [*data["id"].values(), *data["near"], *data["far"]]:
        if not source["csid_imglists"]:
            del source["csid_imglists"]
    return data


def load_spec(name: str) -> BenchmarkSpec:
    """Read and validate a benchmark file; every error names the file and the field."""
    return load_yaml_dataclass(BenchmarkSpec, benchmark_file(name))
