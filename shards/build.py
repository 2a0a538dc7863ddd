"""Writing a benchmark file's sets: read each source, keep its classes and split, fit every image
to the benchmark's size and channels, and write one shard set per split.

Resize policy ``openood`` is OpenOOD's test transform: the shorter side is resized to
``shorter_side`` (bilinear, as torchvision's ``Resize`` on a PIL image) and the centre
``image_size`` square is cut out (torchvision's ``CenterCrop`` rounding); greyscale images are
expanded to RGB for 3-channel benchmarks. Images already at the size are stored untouched.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from sio.core.config import short_text
from sio.core.progress import progress
from sio.core.seeding import numpy_rng
from sio.shards.sources import DatasetError, DatasetItems, ReadContext, get_reader
from sio.shards.spec import BenchmarkSpec, SourceSpec, SplitSpec
from sio.shardset import MANIFEST, ShardSetWriter


def resize_crop(image: Image.Image, shorter: int, size: int) -> Image.Image:
    width, height = image.size
    if min(width, height) != shorter:
        if width <= height:
            width, height = shorter, int(shorter * height / width)
        else:
            width, height = int(shorter * width / height), shorter
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    if (left, top, width, height) == (0, 0, size, size):
        return image
    return image.crop((left, top, left + size, top + size))


def fit_image(image, bench: BenchmarkSpec) -> np.ndarray:
    """A uint8 HxW (1 channel) or HxWx3 array of the benchmark's size from an array or PIL image."""
    size = bench.image_size
    if isinstance(image, np.ndarray):
        if image.shape[:2] == (size, size):
            if image.ndim == 2 and bench.channels == 1:
                return image
            if image.ndim == 3 and image.shape[2] == 3 and bench.channels == 3:
                return image
            if image.ndim == 2:  # grey to RGB, exactly what PIL's convert("RGB") does
                return np.repeat(image[:, :, None], 3, axis=2)
        image = Image.fromarray(image)
    mode = "L" if bench.channels == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (size, size):
        if bench.resize == "exact":
            width, height = image.size
            raise ValueError(f"image is {width}x{height}, resize: exact wants {size}x{size}")
        image = resize_crop(image, bench.shorter_side, size)
    return np.asarray(image)


def keep_classes(source: DatasetItems, spec: SourceSpec) -> DatasetItems:
    """Only ``classes`` (relabelled in that order) or all but ``exclude_classes``."""
    if not spec.classes and not spec.exclude_classes:
        return source
    names = source.class_names
    named = spec.classes or spec.exclude_classes
    unknown = [c for c in named if c not in set(names)]
    if unknown:
        raise DatasetError(
            f"set {spec.name!r}: classes {unknown[:5]} are not among the {len(names)} classes of "
            f"{source.dataset} (e.g. {list(names[:5])})"
        )
    excluded = set(spec.exclude_classes)
    wanted = list(spec.classes) or [n for n in names if n not in excluded]
    position = {name: i for i, name in enumerate(names)}
    lookup = np.full(len(names), -1, dtype=np.int64)
    lookup[[position[n] for n in wanted]] = np.arange(len(wanted))
    labels = lookup[source.labels]
    kept = np.flatnonzero(labels >= 0)
    return source.take(kept, wanted, labels[kept])


def _count(value: float, members: int) -> int:
    return round(members * value) if value < 1 else int(value)


def split_source(source: DatasetItems, split: SplitSpec, seed: int, set_name: str) -> DatasetItems:
    """The ``take`` part of a per-class split; the same seed gives complementary parts."""
    parts: dict[str, list[np.ndarray]] = {"val": [], "test": [], "rest": []}
    for label, name in enumerate(source.class_names):
        members = np.flatnonzero(source.labels == label)
        if len(members) == 0:
            continue
        members = numpy_rng(seed, "split", name).permutation(members)
        n_val, n_test = _count(split.val, len(members)), _count(split.test, len(members))
        if n_val + n_test > len(members):
            raise DatasetError(
                f"set {set_name!r}: class {name!r} has {len(members)} images, the split asks for "
                f"{n_val} val + {n_test} test"
            )
        parts["val"].append(members[:n_val])
        parts["test"].append(members[n_val : n_val + n_test])
        parts["rest"].append(members[n_val + n_test :])
    chosen = parts[split.take]
    return source.take(np.sort(np.concatenate(chosen)) if chosen else np.array([], np.int64))


def read_set(
    spec: SourceSpec, bench: BenchmarkSpec, data_root, seed: int, cache=None
) -> DatasetItems:
    """The set's images: its reader's source, then the class filter, then the split. ``cache``
    (a dict) shares what was read between sets that read the same files."""
    context = ReadContext(Path(data_root) if data_root else None, bench.image_size, seed)
    key = replace(spec, exclude_classes=(), split=None)  # folder readers list only ``classes``
    cache = {} if cache is None else cache
    if key not in cache:
        cache[key] = get_reader(spec.reader).read(spec, context)
    source = keep_classes(cache[key], spec)
    empty = [n for i, n in enumerate(source.class_names) if not (source.labels == i).any()]
    if empty and (spec.classes or spec.exclude_classes):  # folders: class_folders names it
        raise DatasetError(
            f"set {spec.name!r}: class {empty[0]!r} has no images (after classes/exclude_classes)"
        )
    if spec.split is not None:
        source = split_source(source, spec.split, seed, spec.name)
    if len(source) == 0:
        raise DatasetError(f"set {spec.name!r}: no images left after the class filter and split")
    return source


def _relative(record: dict, data_root) -> dict:
    path = Path(record["path"])
    if data_root and path.is_relative_to(Path(data_root)):
        return {**record, "path": str(path.relative_to(Path(data_root)))}
    return record


def write_source(
    writer: ShardSetWriter, folder: str, source: DatasetItems, bench, data_root
) -> dict:
    """Every image of ``source`` into ``writer``; returns the checksums of what was read."""
    digest, n_files = hashlib.sha256(), 0
    with progress(total=len(source), desc=f"shard {folder}", unit="img") as bar:
        for position, (item, label) in enumerate(zip(source.items, source.labels, strict=True)):
            image, meta = source.load(int(item))
            if "sha256" in meta:
                digest.update(f"{meta['file']}\t{meta['sha256']}\n".encode())
                n_files += 1
            try:
                pixels = fit_image(image, bench)
            except ValueError as err:
                raise DatasetError(f"{source.dataset} sample {meta}: {err}") from None
            sample_meta = {"source": "real", "dataset": source.dataset, **meta}
            writer.write(f"{folder}-{position:06d}", pixels, int(label), sample_meta)
            bar.update()
    files = [_relative(record, data_root) for record in source.files]
    if n_files:
        files.append(
            {"images": n_files, "sha256": digest.hexdigest(), "of": "'file<TAB>sha256' lines"}
        )
    return {"sources": files}


def plan(bench: BenchmarkSpec) -> list[tuple[str, str, str, SourceSpec]]:
    """(folder, role, name, source spec) for every split of the benchmark."""
    parts = ("train", "val", "test")
    rows = [(f"id_{part}", "id", part, getattr(bench.id, part)) for part in parts]
    rows += [(f"near_{s.name}", "near", s.name, s) for s in bench.near]
    rows += [(f"far_{s.name}", "far", s.name, s) for s in bench.far]
    return rows


def check_data_root(bench: BenchmarkSpec, rows, data_root) -> None:
    if data_root is None:
        needs = [row[0] for row in rows if not get_reader(row[3].reader).embedded]
        if needs:
            raise DatasetError(
                f"benchmark {bench.name!r} reads datasets from disk ({', '.join(needs)}): give "
                "--data-root DIR (or shard.data_root), the folder its paths are relative to"
            )
    elif not Path(data_root).is_dir():
        raise DatasetError(f"{data_root}: --data-root is not a folder")


def write_spec_benchmark(bench: BenchmarkSpec, config, out: Path, splits=None, report=None):
    """Write the splits of a benchmark file (see benchmark.write_benchmark)."""
    from sio.core.config import to_dict
    from sio.shards.benchmark import choose_splits, finish_benchmark, is_complete, split_order
    from sio.shards.spec import definition as spec_definition

    rows = plan(bench)
    chosen = choose_splits(rows, splits)
    check_data_root(bench, chosen, config.data_root)
    shard_config = {k: v for k, v in to_dict(config).items() if k not in ("data_root", "digits")}
    definition = spec_definition(bench)  # as before csid_imglists existed
    class_names, cache = None, {}
    for folder, _, _, spec in chosen:
        identity = {"generator": None, "split": folder, "shard_config": shard_config}
        identity["benchmark"] = definition
        if is_complete(out / folder, identity, ignore=("sources", "data_root")):
            continue
        started = time.perf_counter()
        source = read_set(spec, bench, config.data_root, config.seed, cache)
        source = source.take(split_order(len(source), config, folder))
        if folder.startswith("id_"):
            class_names = _same_id_classes(class_names, source, folder)
        provenance = {**identity, "data_root": config.data_root}
        _write_split(out / folder, source, bench, config, provenance)
        if report is not None:
            seconds = time.perf_counter() - started
            report(f"{folder}: {len(source)} images, {len(source) / seconds:.0f} img/s")
    id_names = class_names or _id_class_names(out)
    extra = {"config": to_dict(config), "definition": definition}
    size = (bench.image_size, bench.image_size)
    return finish_benchmark(out, rows, bench.name, size, bench.channels, id_names, extra)


def _write_split(folder: Path, source: DatasetItems, bench, config, provenance: dict) -> None:
    """One shard set; on any failure its shards are deleted and no manifest is written."""
    writer = ShardSetWriter(
        folder,
        kind="real",
        name=folder.name,
        image_size=(bench.image_size, bench.image_size),
        channels=bench.channels,
        class_names=source.class_names,
        shard_size=config.shard_size,
        provenance=provenance,
    )
    try:
        checksums = write_source(writer, folder.name, source, bench, config.data_root)
    except BaseException:
        writer.abort()
        raise
    writer.close(provenance=checksums)


def _same_id_classes(known, source: DatasetItems, folder: str):
    if known is not None and tuple(known) != source.class_names:
        raise DatasetError(f"{folder}: its classes differ from the other ID splits'")
    return source.class_names


def _id_class_names(out: Path):
    from sio.shardset.read import read_manifest

    manifest = out / "id_train" / MANIFEST
    return read_manifest(out / "id_train").class_names if manifest.is_file() else ()


def fields(bench: BenchmarkSpec) -> list[tuple[str, str, SourceSpec]]:
    """(field path in the benchmark file, split folder, source spec) for every set."""
    rows = [
        (f"id.{part}", f"id_{part}", getattr(bench.id, part)) for part in ("train", "val", "test")
    ]
    for group in ("near", "far"):
        rows += [
            (f"{group}[{i}]", f"{group}_{s.name}", s) for i, s in enumerate(getattr(bench, group))
        ]
    return rows


def check_shard_config(config, splits=None) -> None:
    """Everything ``config`` names, checked before any work (``sio run`` parses its file with
    this, ``sio shard`` calls it before writing a split): the benchmark (a shipped name or a
    readable .yaml), the reader of every set, ``data_root`` and the path of every set read from
    disk (of ``splits`` only, if given). Errors start with the field and name the benchmark file
    and its field (``shard.benchmark: my.yaml: far[0].reader: unknown dataset reader ...``)."""
    from sio.core.config import ConfigError
    from sio.shards.benchmark import choose_splits
    from sio.shards.spec import benchmark_file, load_spec

    if config.benchmark == "digits":
        return
    try:
        bench = load_spec(config.benchmark)
    except ConfigError as err:
        raise ConfigError(f"shard.benchmark: {err}") from None
    where = short_text(str(benchmark_file(config.benchmark)))
    for field, _, spec in fields(bench):
        try:
            get_reader(spec.reader)
        except DatasetError as err:
            raise ConfigError(f"shard.benchmark: {where}: {field}.reader: {err}") from None
    rows = choose_splits(plan(bench), splits)
    try:
        check_data_root(bench, rows, config.data_root)
    except DatasetError as err:
        raise ConfigError(f"shard.data_root: {err}") from None
    chosen = {row[0] for row in rows}
    for field, folder, spec in fields(bench):
        info = get_reader(spec.reader)
        if info.embedded or folder not in chosen:
            continue
        named = [(name, getattr(spec, name)) for name in ("path", "imglist", "labels")]
        named += [(f"csid_imglists[{i}]", v) for i, v in enumerate(spec.csid_imglists)]
        for name, relative in named:
            path = Path(config.data_root) / (relative or "")
            if relative and not path.exists():
                raise ConfigError(
                    f"shard.data_root: {path} not found ({where}: {field}.{name}, set {folder}: "
                    f"the {info.title} reader `{info.name}` expects {info.layout}). {info.origin}"
                )
