"""What a dataset reader returns (``DatasetItems``), the reader registry, and named data errors.

A reader turns files on disk, in their own format, into ``DatasetItems``: class names, one label per
item, and ``load(item)`` giving the image (uint8 array or PIL image) plus what the sample's
provenance records (an index into an array file, or a file path and its sha256). Readers never
download anything; a missing file or folder is a ``DatasetError`` naming what was expected, the
layout and where the dataset comes from, and an image that cannot be decoded is named.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from sio.core.registry import Registry
from sio.shardset.format import ShardError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DatasetError(ShardError):
    """A dataset file that is missing, malformed or not a decodable image; the message names it."""


@dataclass(frozen=True)
class DatasetItems:
    """What a dataset reader lists: the images of a dataset's chosen parts, loaded on demand."""

    dataset: str
    class_names: tuple[str, ...]
    labels: np.ndarray  # int64, one per item, indices into class_names
    items: np.ndarray  # what ``load`` takes, one per item
    load: Callable[[int], tuple[np.ndarray | Image.Image, dict]]
    files: tuple[dict, ...] = ()  # files read whole: {"path", "sha256"}

    def __len__(self) -> int:
        return len(self.items)

    def take(self, positions: np.ndarray, class_names=None, labels=None) -> DatasetItems:
        """The items at ``positions``, optionally with new class names and labels."""
        return replace(
            self,
            items=self.items[positions],
            labels=self.labels[positions] if labels is None else labels,
            class_names=self.class_names if class_names is None else tuple(class_names),
        )


@dataclass(frozen=True)
class ReadContext:
    data_root: Path | None
    image_size: int
    seed: int


@dataclass(frozen=True)
class DatasetReader:
    """An entry of ``READERS``: a dataset's reading function, what it expects on disk and where
    the dataset comes from."""

    name: str
    read: Callable  # (SourceSpec, ReadContext) -> DatasetItems
    title: str  # what the dataset is called
    layout: str  # the files it expects under ``path``
    origin: str  # where the dataset comes from
    parts: tuple[str, ...] = ()
    default_parts: tuple[str, ...] = ()
    embedded: bool = False  # ships inside an installed package; needs no --data-root


READERS: Registry[DatasetReader] = Registry("dataset reader")


def reader(name: str, **info):
    """Register ``read(spec, context) -> DatasetItems`` under ``name`` with its layout and
    origin."""

    def add(read):
        READERS.register(name)(DatasetReader(name=name, read=read, **info))
        return read

    return add


def get_reader(name: str) -> DatasetReader:
    from sio.shards import arrays, folders  # noqa: F401 - registers the readers

    if name not in READERS:
        raise DatasetError(f"unknown dataset reader {name!r}; known: {', '.join(READERS.names())}")
    return READERS.get(name)


def missing(path: Path, info: DatasetReader, what: str = "") -> DatasetError:
    expected = f" ({what})" if what else ""
    return DatasetError(
        f"{path}: not found{expected}. The {info.title} reader `{info.name}` expects "
        f"{info.layout}. {info.origin}"
    )


def dataset_root(spec, context: ReadContext, info: DatasetReader) -> Path:
    if context.data_root is None:
        raise DatasetError(
            f"set {spec.name!r} reads the {info.title} from disk: give --data-root (or "
            f"shard.data_root) with {info.layout} under it. {info.origin}"
        )
    return Path(context.data_root) / spec.path


def parts_of(spec, info: DatasetReader) -> tuple[str, ...]:
    parts = spec.part or info.default_parts
    unknown = [p for p in parts if p not in info.parts]
    if unknown or not parts:
        raise DatasetError(
            f"set {spec.name!r}: part {list(unknown or parts)} of the {info.title}; "
            f"known parts: {', '.join(info.parts)}"
        )
    return parts


def read_bytes(path: Path, info: DatasetReader, what: str = "") -> tuple[bytes, dict]:
    """A whole file and its checksum record, or the named missing-file error."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise missing(path, info, what) from None
    return data, {"path": str(path), "sha256": hashlib.sha256(data).hexdigest()}


def image_file_loader(root: Path, rel_paths: list[str]):
    """``load(i)`` for image files: the decoded image and {file, sha256} of the bytes read."""

    def load(i: int):
        path = root / rel_paths[i]
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DatasetError(f"{path}: cannot read ({err.strerror or err})") from None
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as err:  # noqa: BLE001 - every decoder failure is named with the file
            raise DatasetError(f"{path}: corrupt or not an image ({err})") from None
        return image, {"file": rel_paths[i], "sha256": hashlib.sha256(data).hexdigest()}

    return load


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def walk_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` in torchvision ImageFolder's order (sorted walk)."""
    found = []
    for root, _, names in sorted(os.walk(folder, followlinks=True)):
        found += [Path(root) / n for n in sorted(names) if is_image(n)]
    return found


def concat(sources: list[DatasetItems]) -> DatasetItems:
    """Several parts of one dataset (e.g. MNIST train + test) as one source."""
    if len(sources) == 1:
        return sources[0]
    first = sources[0]
    for other in sources[1:]:
        if other.class_names != first.class_names:
            raise DatasetError(f"{first.dataset}: parts have different classes")
    offsets = np.cumsum([0] + [len(s) for s in sources])

    def load(i: int):
        part = int(np.searchsorted(offsets, i, side="right")) - 1
        source = sources[part]
        return source.load(int(source.items[i - offsets[part]]))

    return DatasetItems(
        dataset=first.dataset,
        class_names=first.class_names,
        labels=np.concatenate([s.labels for s in sources]),
        items=np.arange(offsets[-1]),
        load=load,
        files=tuple(f for s in sources for f in s.files),
    )
