"""Readers for datasets stored as image files: class folders, flat folders with a labels file,
ImageNet, Tiny-ImageNet, Places365 and OpenOOD image lists.

Files are listed (in a sorted, reproducible order) when the source is read and decoded one at a
time when written; each sample records its file and the sha256 of the bytes decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sio.shards.sources import (
    DatasetError,
    DatasetItems,
    concat,
    dataset_root,
    get_reader,
    image_file_loader,
    missing,
    parts_of,
    read_bytes,
    reader,
    walk_images,
)


def file_source(dataset, data_root: Path, paths: list[Path], labels, class_names, files=()):
    rel = [str(p.relative_to(data_root)) for p in paths]
    return DatasetItems(
        dataset=dataset,
        class_names=tuple(class_names),
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        items=np.arange(len(rel)),
        load=image_file_loader(data_root, rel),
        files=tuple(files),
    )


def class_folders(
    folder: Path, info, dataset: str, data_root: Path, keep=(), drop=()
) -> DatasetItems:
    """An ImageFolder tree: ``folder/<class>/**/<image>``, classes in sorted order. With ``keep``,
    only those class folders are listed (the others still count as classes). A listed class
    folder without images is refused, naming it, as torchvision's ImageFolder does, unless it
    is in ``drop`` (the set's ``exclude_classes``)."""
    if not folder.is_dir():
        raise missing(folder, info, "a folder with one sub-folder per class")
    class_names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not class_names:
        raise missing(folder / "<class>", info, "no class sub-folders")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        if keep and name not in keep:
            continue
        found = walk_images(folder / name)
        if not found and name not in drop:
            raise DatasetError(
                f"{folder / name}: empty class folder (no image files); remove it or leave the "
                "class out (classes / exclude_classes)"
            )
        paths += found
        labels += [label] * len(found)
    return file_source(dataset, data_root, paths, labels, class_names)


def _label_lines(text: str, path: Path) -> list[tuple[str, str]]:
    """(file, label) pairs from a labels file: Kaggle's LOC_val_solution.csv, or one
    ``file label ...`` line per image separated by tabs, commas or spaces."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith("ImageId,PredictionString"):
        return [(f"{a}.JPEG", b.split()[0]) for a, b in (ln.split(",", 1) for ln in lines[1:])]
    pairs = []
    for number, line in enumerate(lines, 1):
        sep = "\t" if "\t" in line else ("," if "," in line else None)
        fields = line.split(sep)
        if len(fields) < 2:
            raise DatasetError(f"{path}: line {number} is not `file label`: {line[:80]!r}")
        pairs.append((fields[0].strip().lstrip("/"), fields[1].strip()))
    return pairs


def label_order(labels: list[str]) -> list[str]:
    """Distinct labels, numerically if they are all integers, else sorted as text."""
    distinct = set(labels)
    if all(v.lstrip("-").isdigit() for v in distinct):
        return [str(v) for v in sorted(int(v) for v in distinct)]
    return sorted(distinct)


def labelled_files(folder: Path, labels_path: Path, info, dataset, data_root, names=None):
    """Images in ``folder`` named by a labels file; ``names`` maps integer labels to names."""
    if not folder.is_dir():
        raise missing(folder, info, "the image folder")
    data, record = read_bytes(labels_path, info, "the labels file")
    pairs = _label_lines(data.decode("utf-8", errors="replace"), labels_path)
    if not pairs:
        raise DatasetError(f"{labels_path}: no labels in it")
    pairs.sort()
    raw = [label for _, label in pairs]
    order = label_order(raw)
    index = {v: i for i, v in enumerate(order)}
    paths = [folder / name for name, _ in pairs]
    absent = [p for p in paths[:1] + paths[-1:] if not p.is_file()]
    if absent:
        raise missing(absent[0], info, f"listed in {labels_path.name}")
    class_names = order if names is None else [names.get(v, v) for v in order]
    return file_source(dataset, data_root, paths, [index[v] for v in raw], class_names, [record])


def _find_up(start: Path, name: str, levels: int = 3) -> Path | None:
    for folder in [start, *list(start.parents)[:levels]]:
        if (folder / name).is_file():
            return folder / name
    return None


@reader(
    "image_folder",
    title="image-folder tree",
    layout="one sub-folder per class holding its images (any depth; jpg, png, ...), as "
    "torchvision's ImageFolder, e.g. DTD's dtd/images/<class>/",
    origin="Any dataset in that layout works; DTD (Textures) is the 'dtd-r1.0.1' archive of the "
    "Describable Textures Dataset page at Oxford VGG.",
)
def read_image_folder(spec, context):
    info = get_reader("image_folder")
    root = dataset_root(spec, context, info)
    return class_folders(
        root, info, spec.name, Path(context.data_root), spec.classes, spec.exclude_classes
    )


@reader(
    "images",
    title="image folder (unlabelled)",
    layout="image files anywhere below the folder (all one class, named after the set)",
    origin="Use it for OOD sets whose labels do not matter, e.g. Places365's val_256/.",
)
def read_images(spec, context):
    info = get_reader("images")
    root = dataset_root(spec, context, info)
    if not root.is_dir():
        raise missing(root, info, "a folder of images")
    paths = walk_images(root)
    if not paths:
        raise missing(root / "*.jpg", info, "no image files")
    return file_source(spec.name, Path(context.data_root), paths, [0] * len(paths), [spec.name])


@reader(
    "labelled_files",
    title="flat image folder with a labels file",
    layout="the images in `path` and `labels`: a file of `name label` lines (tab, comma or "
    "space separated; Kaggle's LOC_val_solution.csv also works)",
    origin="Labels may be class names (e.g. WordNet ids) or integers.",
)
def read_labelled_files(spec, context):
    info = get_reader("labelled_files")
    root = dataset_root(spec, context, info)
    if spec.labels is None:
        raise DatasetError(f"set {spec.name!r}: labelled_files needs `labels` (the labels file)")
    labels = Path(context.data_root) / spec.labels
    return labelled_files(root, labels, info, spec.name, Path(context.data_root))


@reader(
    "imglist",
    title="OpenOOD image list",
    layout="`imglist`: a benchmark_imglist/**/*.txt file of `relative/path label` lines, with the "
    "images below `path` (OpenOOD's images_classic/ or images_largescale/)",
    origin="The lists come with OpenOOD (benchmark_imglist.zip); the images are the datasets "
    "OpenOOD's download script fetches.",
)
def read_imglist(spec, context):
    info = get_reader("imglist")
    root = dataset_root(spec, context, info)
    if spec.imglist is None:
        raise DatasetError(f"set {spec.name!r}: the imglist reader needs `imglist` (the list)")
    data_root = Path(context.data_root)
    rows, records = [], []
    for relative in (spec.imglist, *spec.csid_imglists):  # csID lists join the ID list
        listed, record = _imglist_rows(data_root / relative, info)
        rows += listed
        records.append(record)
    _check_listed(root, rows, info)
    order, labels = _imglist_labels([row[1] for row in rows])
    paths = [root / row[0] for row in rows]
    return file_source(spec.name, data_root, paths, labels, order, records)


def _imglist_rows(list_path: Path, info) -> tuple[list[tuple[str, str, Path, int]], dict]:
    """(image, label, list, line number) per line of an OpenOOD list, and the list's record."""
    data, record = read_bytes(list_path, info, "the image list")
    rows = []
    for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        row = line.strip().split(" ", 1)
        if len(row) != 2 or not _is_int(row[1]):
            raise DatasetError(f"{list_path}: line {number} is not `relative/path integer-label`")
        rows.append((row[0], row[1].strip(), list_path, number))
    if not rows:
        raise DatasetError(f"{list_path}: the image list is empty")
    return rows, record


def _check_listed(root: Path, rows, info) -> None:
    """Every listed image is a file under ``root`` (one directory listing per folder, so a
    1.28M-line list costs seconds); the first missing one is named with its list and line."""
    listings: dict[str, set[str]] = {}
    absent = []
    for name, _, list_path, number in rows:
        folder, base = os.path.split(name)
        if folder not in listings:
            where = root / folder
            listings[folder] = set(os.listdir(where)) if where.is_dir() else set()
        if base not in listings[folder]:
            absent.append((root / name, list_path, number))
    if absent:
        path, list_path, number = absent[0]
        what = f"an image listed in {list_path} line {number}; {len(absent)} of {len(rows)} missing"
        raise missing(path, info, what)


def _imglist_labels(values: list[str]) -> tuple[list[str], list[int]]:
    """Class names and labels. OpenOOD's ID labels (none negative) are kept as they are, with
    classes "0" .. the largest, so every ID list of a benchmark (and its csID lists) has the
    same classes; lists with negative labels (OOD lists hold -1) are relabelled in
    ``label_order``."""
    numbers = [int(v) for v in values]
    if min(numbers) >= 0:
        return [str(i) for i in range(max(numbers) + 1)], numbers
    order = label_order(values)
    index = {v: i for i, v in enumerate(order)}
    return order, [index[v] for v in values]


def _is_int(text: str) -> bool:
    return text.strip().lstrip("-").isdigit()


# --- ImageNet (ILSVRC-2012), Tiny-ImageNet, Places365 -------------------------------------------


IMAGENET_VAL_WAYS = (
    "val/<wnid>/ sub-folders (valprep.sh, torchvision), or flat val/*.JPEG with Kaggle's "
    "LOC_val_solution.csv (in the folder or up to three folders above), with the devkit "
    "(ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt and meta.mat), or with "
    "`labels: <file of 'name wnid' lines>`"
)


@reader(
    "imagenet",
    title="ImageNet ILSVRC-2012",
    layout=f"train/<wnid>/*.JPEG and val/ as {IMAGENET_VAL_WAYS}",
    origin="ImageNet is not downloadable without an account: get ILSVRC2012_img_train.tar and "
    "ILSVRC2012_img_val.tar from image-net.org (or Kaggle's imagenet-object-localization-"
    "challenge, whose ILSVRC/Data/CLS-LOC/ is this layout).",
    parts=("train", "val"),
    default_parts=("train",),
)
def read_imagenet(spec, context):
    def read_part(part, folder, info, root):
        if part == "train" or _has_class_folders(folder):
            return _class_folders_of(spec, context, folder, info, "imagenet")
        return _imagenet_flat_val(spec, context, root, info)

    return _read_parts(spec, context, "imagenet", read_part)


def _read_parts(spec, context, name: str, read_part) -> DatasetItems:
    """The reader ``name``'s chosen parts as one dataset, each read by ``read_part(part,
    folder, info, root)`` (``folder``: the part's folder under the dataset's ``root``)."""
    info = get_reader(name)
    root = dataset_root(spec, context, info)
    return concat([read_part(part, root / part, info, root) for part in parts_of(spec, info)])


def _class_folders_of(spec, context, folder: Path, info, dataset: str) -> DatasetItems:
    """``class_folders`` with the set's class filter."""
    data_root = Path(context.data_root)
    return class_folders(folder, info, dataset, data_root, spec.classes, spec.exclude_classes)


def _has_class_folders(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() for p in folder.iterdir())


def _imagenet_flat_val(spec, context, root: Path, info) -> DatasetItems:
    data_root = Path(context.data_root)
    folder = root / "val"
    if spec.labels is not None:
        return labelled_files(folder, data_root / spec.labels, info, "imagenet", data_root)
    kaggle = _find_up(root, "LOC_val_solution.csv")
    if kaggle is not None:
        return labelled_files(folder, kaggle, info, "imagenet", data_root)
    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    if (devkit / "meta.mat").is_file():
        return _devkit_val(folder, devkit, info, data_root)
    raise missing(folder, info, f"labelled ImageNet val: {IMAGENET_VAL_WAYS}")


def _devkit_val(folder: Path, devkit: Path, info, data_root: Path) -> DatasetItems:
    import io

    import scipy.io

    meta, meta_record = read_bytes(devkit / "meta.mat", info, "devkit meta.mat")
    truth, truth_record = read_bytes(
        devkit / "ILSVRC2012_validation_ground_truth.txt", info, "devkit ground truth"
    )
    synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    leaves = [s for s in synsets if int(s["num_children"]) == 0]
    wnid_of = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
    ids = [int(v) for v in truth.decode().split()]
    wnids = [wnid_of[i] for i in ids]
    order = sorted(set(wnid_of.values()))
    index = {w: i for i, w in enumerate(order)}
    paths = [folder / f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, len(ids) + 1)]
    if not paths or not paths[0].is_file():
        raise missing(paths[0] if paths else folder, info, "flat ILSVRC2012 val images")
    labels = [index[w] for w in wnids]
    return file_source("imagenet", data_root, paths, labels, order, [meta_record, truth_record])


@reader(
    "tiny_imagenet",
    title="Tiny-ImageNet",
    layout="tiny-imagenet-200/ with train/<wnid>/images/*.JPEG and val/images/*.JPEG plus "
    "val/val_annotations.txt (or val/<wnid>/ sub-folders)",
    origin="It is tiny-imagenet-200.zip from the Stanford CS231n page.",
    parts=("train", "val"),
    default_parts=("train",),
)
def read_tiny_imagenet(spec, context):
    def read_part(part, folder, info, root):
        annotations = folder / "val_annotations.txt"
        if part == "val" and annotations.is_file():
            data_root = Path(context.data_root)
            return labelled_files(folder / "images", annotations, info, "tiny_imagenet", data_root)
        return _class_folders_of(spec, context, folder, info, "tiny_imagenet")

    return _read_parts(spec, context, "tiny_imagenet", read_part)


@reader(
    "places365",
    title="Places365-Standard",
    layout="val_256/ (or val_large/) with places365_val.txt, and categories_places365.txt for the "
    "class names (in the folder or in filelist_places365-standard/)",
    origin="These are val_256.tar and filelist_places365-standard.tar of the Places365 page "
    "at MIT CSAIL.",
    parts=("val",),
    default_parts=("val",),
)
def read_places365(spec, context):
    info = get_reader("places365")
    root = dataset_root(spec, context, info)
    parts_of(spec, info)
    images = root / "val_256" if (root / "val_256").is_dir() else root / "val_large"
    lists = root / "filelist_places365-standard"
    labels = _first_file([root, lists], "places365_val.txt") or root / "places365_val.txt"
    categories = _first_file([root, lists], "categories_places365.txt")
    names = None
    if categories is not None:
        rows = [line.split() for line in categories.read_text().splitlines() if line.strip()]
        names = {row[1]: row[0].strip("/")[2:] for row in rows}
    return labelled_files(images, labels, info, "places365", Path(context.data_root), names)


def _first_file(folders: list[Path], name: str) -> Path | None:
    return next((f / name for f in folders if (f / name).is_file()), None)
