"""The shard-set format (write, read, verify, corruption) and the embedded digits benchmark."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import webdataset as wds

from sio.shards import read_benchmark, write_benchmark
from sio.shards.config import DigitsConfig, ShardConfig
from sio.shards.digits import build_digits
from sio.shardset import (
    ShardError,
    ShardSetWriter,
    encode_png,
    iter_batches,
    iter_samples,
    read_manifest,
    shard_urls,
    verify_shard_set,
)

CLASSES = ("a", "b", "c", "d")


def make_samples(n: int, shape: tuple[int, ...], seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = rng.integers(0, len(CLASSES), size=n)
    metas = [{"source": "real", "index": i, "note": f"n{i}"} for i in range(n)]
    return images, labels, metas


def write_set(folder, images, labels, metas, *, shard_size=10, kind="real"):
    channels = 1 if images.ndim == 3 else 3
    with ShardSetWriter(
        folder,
        kind=kind,
        name="test",
        image_size=images.shape[1:3],
        channels=channels,
        class_names=CLASSES,
        shard_size=shard_size,
        provenance={"who": "test"},
    ) as writer:
        for i, (image, label, meta) in enumerate(zip(images, labels, metas, strict=True)):
            writer.write(f"k{i:05d}", image, int(label), meta)
    return folder


def as_hwc(image_chw: np.ndarray) -> np.ndarray:
    return image_chw[0] if image_chw.shape[0] == 1 else image_chw.transpose(1, 2, 0)


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 3)], ids=["grey", "rgb"])
def test_round_trip_pixels_labels_provenance_in_order(tmp_path, shape):
    images, labels, metas = make_samples(23, shape)
    folder = write_set(tmp_path / "set", images, labels, metas)
    read = list(iter_samples(folder))
    assert len(read) == 23
    expected = zip(images, labels, metas, strict=True)
    for (image, label, meta), (want, want_label, want_meta) in zip(read, expected, strict=True):
        assert image.dtype == np.uint8
        assert image.shape == ((1, 6, 5) if len(shape) == 2 else (3, 6, 5))
        np.testing.assert_array_equal(as_hwc(image), want)
        assert label == want_label
        assert meta == want_meta


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 3)], ids=["grey", "rgb"])
def test_manifest_fields(tmp_path, shape):
    images, labels, metas = make_samples(23, shape, seed=1)
    folder = write_set(tmp_path / "set", images, labels, metas)
    manifest = read_manifest(folder)
    assert manifest.kind == "real"
    assert manifest.name == "test"
    assert manifest.image_size == (6, 5)
    assert manifest.channels == (1 if len(shape) == 2 else 3)
    assert manifest.class_names == CLASSES
    assert manifest.class_counts == tuple(np.bincount(labels, minlength=len(CLASSES)))
    assert manifest.num_samples == 23
    assert manifest.provenance == {"who": "test"}
    assert [s.num_samples for s in manifest.shards] == [10, 10, 3]
    assert [s.name for s in manifest.shards] == [f"shard-00000{i}.tar" for i in range(3)]
    for shard in manifest.shards:
        path = folder / shard.name
        assert shard.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert shard.bytes == path.stat().st_size
    pixels = images.reshape(23, -1, manifest.channels).astype(np.float64) / 255
    want_mean = pixels.mean(axis=(0, 1))
    want_std = pixels.std(axis=(0, 1))
    np.testing.assert_allclose(manifest.pixel_mean, want_mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(manifest.pixel_std, want_std, rtol=0, atol=1e-9)
    # the json on disk agrees with the parsed manifest
    data = json.loads((folder / "manifest.json").read_text())
    assert data["num_samples"] == 23
    assert data["class_counts"] == list(manifest.class_counts)
    assert shard_urls(folder) == [str(folder / s.name) for s in manifest.shards]


def test_exact_multiple_of_shard_size_has_no_empty_shard(tmp_path):
    images, labels, metas = make_samples(20, (4, 4))
    folder = write_set(tmp_path / "set", images, labels, metas)
    manifest = read_manifest(folder)
    assert [s.num_samples for s in manifest.shards] == [10, 10]
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json",
        "shard-000000.tar",
        "shard-000001.tar",
    ]
    assert verify_shard_set(folder) == 20


def test_empty_writer_leaves_no_shards(tmp_path):
    folder = tmp_path / "set"
    with ShardSetWriter(
        folder,
        kind="synthetic",
        name="e",
        image_size=(4, 4),
        channels=1,
        class_names=CLASSES,
        shard_size=10,
    ):
        pass
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]
    manifest = read_manifest(folder)
    assert manifest.num_samples == 0
    assert manifest.kind == "synthetic"
    assert list(iter_samples(folder)) == []


def test_byte_reproducible(tmp_path):
    images, labels, metas = make_samples(23, (6, 5, 3), seed=2)
    first = read_manifest(write_set(tmp_path / "one", images, labels, metas))
    second = read_manifest(write_set(tmp_path / "two", images, labels, metas))
    assert [s.sha256 for s in first.shards] == [s.sha256 for s in second.shards]
    for shard in first.shards:
        assert (tmp_path / "one" / shard.name).read_bytes() == (
            tmp_path / "two" / shard.name
        ).read_bytes()
    # and a change in one pixel changes exactly that shard's hash
    images[12, 0, 0, 0] ^= 1
    third = read_manifest(write_set(tmp_path / "three", images, labels, metas))
    changed = [a.sha256 != b.sha256 for a, b in zip(first.shards, third.shards, strict=True)]
    assert changed == [False, True, False]


def test_no_tmp_files_left(tmp_path):
    images, labels, metas = make_samples(23, (4, 4))
    folder = write_set(tmp_path / "set", images, labels, metas)
    assert not list(folder.glob("*.tmp"))
    assert not list(folder.glob("*.tmp*"))


def test_iter_batches(tmp_path):
    images, labels, metas = make_samples(23, (4, 4))
    folder = write_set(tmp_path / "set", images, labels, metas)
    batches = list(iter_batches(folder, 8))
    assert [len(b[0]) for b in batches] == [8, 8, 7]
    got = np.concatenate([b[0].numpy() for b in batches])[:, 0]
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), labels)


def open_writer(folder, **kw):
    args = dict(
        kind="real",
        name="x",
        image_size=(4, 4),
        channels=1,
        class_names=CLASSES,
        shard_size=10,
    )
    args.update(kw)
    return ShardSetWriter(folder, **args)


@pytest.mark.parametrize("key", ["a.b", "with/slash", ""])
def test_bad_keys_refused(tmp_path, key):
    writer = open_writer(tmp_path / "set")
    with pytest.raises(ValueError, match="key"):
        writer.write(key, np.zeros((4, 4), np.uint8), 0, {})


def test_bad_image_or_label_refused(tmp_path):
    writer = open_writer(tmp_path / "set")
    with pytest.raises(ValueError, match="shape"):
        writer.write("k", np.zeros((4, 5), np.uint8), 0, {})
    with pytest.raises(ValueError, match="label"):
        writer.write("k", np.zeros((4, 4), np.uint8), len(CLASSES), {})
    with pytest.raises(ValueError, match="label"):
        writer.write("k", np.zeros((4, 4), np.uint8), -1, {})
    with pytest.raises(ValueError, match="uint8"):
        writer.write("k", np.zeros((4, 4), np.float32), 0, {})
    with pytest.raises(ValueError, match="kind"):
        open_writer(tmp_path / "other", kind="fake")


def test_writer_refuses_complete_set(tmp_path):
    images, labels, metas = make_samples(3, (4, 4))
    folder = write_set(tmp_path / "set", images, labels, metas)
    with pytest.raises(ShardError, match="already"):
        open_writer(folder)


def test_stale_tmp_files_removed(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "shard-000003.tar.tmp").write_bytes(b"half a shard")
    (folder / "manifest.json.tmp").write_text("{")
    (folder / "keep.txt").write_text("not ours")
    images, labels, metas = make_samples(5, (4, 4))
    write_set(folder, images, labels, metas)
    assert sorted(p.name for p in folder.iterdir()) == [
        "keep.txt",
        "manifest.json",
        "shard-000000.tar",
    ]


# --- verify and corruption ----------------------------------------------------------------


@pytest.fixture
def good_set(tmp_path):
    images, labels, metas = make_samples(23, (6, 5))
    return write_set(tmp_path / "set", images, labels, metas)


def test_verify_good_set(good_set):
    assert verify_shard_set(good_set) == 23


def test_verify_flipped_byte(good_set):
    path = good_set / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="shard-000001.tar") as info:
        verify_shard_set(good_set)
    assert "sha256" in str(info.value)


def test_verify_deleted_shard(good_set):
    (good_set / "shard-000002.tar").unlink()
    with pytest.raises(ShardError, match="shard-000002.tar"):
        verify_shard_set(good_set)
    with pytest.raises(ShardError, match="shard-000002.tar"):
        list(iter_samples(good_set))


def test_verify_truncated_shard(good_set):
    path = good_set / "shard-000000.tar"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ShardError, match="shard-000000.tar"):
        verify_shard_set(good_set)


def test_verify_missing_manifest(tmp_path):
    (tmp_path / "set").mkdir()
    with pytest.raises(ShardError, match="manifest"):
        verify_shard_set(tmp_path / "set")


def test_verify_wrong_sample_count_in_manifest(good_set):
    path = good_set / "manifest.json"
    data = json.loads(path.read_text())
    data["shards"][0]["num_samples"] = 9
    data["class_counts"][0] -= 1
    path.write_text(json.dumps(data))
    with pytest.raises(ShardError, match="shard-000000.tar.*10 samples"):
        verify_shard_set(good_set)


def rewrite_shard(path, samples):
    with wds.TarWriter(str(path), encoder=False, mtime=0) as tar:
        for sample in samples:
            tar.write(sample)


def test_corrupt_png_names_url_and_key(good_set):
    path = good_set / "shard-000001.tar"
    samples = []
    for i in range(10, 20):
        sample = {
            "__key__": f"k{i:05d}",
            "png": encode_png(np.zeros((6, 5), np.uint8)),
            "cls": b"1",
            "json": b"{}",
        }
        if i == 14:
            sample["png"] = b"\x89PNG not really a png at all"
        samples.append(sample)
    rewrite_shard(path, samples)
    # the manifest is adjusted so that verify passes: only the decoder can find this
    manifest_path = good_set / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["shards"][1]["bytes"] = path.stat().st_size
    data["shards"][1]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(data))
    assert verify_shard_set(good_set) == 23

    read = []
    with pytest.raises(ShardError) as info:
        for sample in iter_samples(good_set):
            read.append(sample)
    message = str(info.value)
    assert str(path) in message
    assert "k00014" in message
    assert len(read) == 14  # everything before the bad sample came through


def rehash(folder, name):
    """List a rewritten shard's size and sha256 in the manifest, so that only the reader's
    parsing and decoding can find what is wrong with it (the hash is checked first)."""
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for shard in data["shards"]:
        if shard["name"] == name:
            content = (folder / name).read_bytes()
            shard.update(bytes=len(content), sha256=hashlib.sha256(content).hexdigest())
    path.write_text(json.dumps(data))


def test_missing_member_names_key(good_set):
    path = good_set / "shard-000002.tar"
    rewrite_shard(path, [{"__key__": "k00020", "png": encode_png(np.zeros((6, 5), np.uint8))}])
    rehash(good_set, path.name)
    with pytest.raises(ShardError, match="shard-000002.tar.*k00020"):
        list(iter_samples(good_set))
    with pytest.raises(ShardError, match="shard-000002.tar"):
        verify_shard_set(good_set)


def test_negative_label_refused_by_reader(good_set):
    path = good_set / "shard-000002.tar"
    png = encode_png(np.zeros((6, 5), np.uint8))
    rewrite_shard(path, [{"__key__": "k00020", "png": png, "cls": b"-1", "json": b"{}"}])
    rehash(good_set, path.name)
    with pytest.raises(ShardError, match="k00020"):
        list(iter_samples(good_set))


# --- the digits benchmark -----------------------------------------------------------------

FAR_PER_SET = 50


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    # the readers' order, to compare with sklearn's arrays (shuffled order: tests below)
    config = ShardConfig(digits=DigitsConfig(far_ood_images_per_set=FAR_PER_SET), order="source")
    root = tmp_path_factory.mktemp("bench")
    first = write_benchmark(config, root / "a")
    second = write_benchmark(config, root / "b")
    return config, first, second


@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def read_all(folder):
    images, labels, metas = [], [], []
    for image, label, meta in iter_samples(folder):
        images.append(image)
        labels.append(label)
        metas.append(meta)
    return np.stack(images), np.array(labels), metas


def test_benchmark_layout(benchmarks):
    config, bench, _ = benchmarks
    assert bench.name == "digits"
    assert bench.class_names == tuple(str(c) for c in config.digits.id_classes)
    assert set(bench.id_splits) == {"train", "val", "test"}
    assert set(bench.near) == {"digits"}
    assert set(bench.far) == {"textures", "photos", "text"}
    again = read_benchmark(bench.root)
    assert again == bench
    for folder in [*bench.id_splits.values(), *bench.near.values(), *bench.far.values()]:
        assert verify_shard_set(folder) == read_manifest(folder).num_samples


def test_benchmark_id_splits_cover_sklearn_classes(benchmarks, sk_digits):
    config, bench, _ = benchmarks
    targets = sk_digits.target
    totals = np.zeros(len(config.digits.id_classes), dtype=int)
    seen: list[int] = []
    for split in ("train", "val", "test"):
        manifest = read_manifest(bench.id_splits[split])
        images, labels, metas = read_all(bench.id_splits[split])
        assert manifest.class_counts == tuple(np.bincount(labels, minlength=len(totals)))
        totals += np.array(manifest.class_counts)
        indices = [m["index"] for m in metas]
        seen += indices
        # each label is the position of the sklearn class in id_classes
        for label, index in zip(labels, indices, strict=True):
            assert config.digits.id_classes[label] == targets[index]
    want = [int((targets == c).sum()) for c in config.digits.id_classes]
    assert totals.tolist() == want
    # the splits are disjoint and together hold every ID digit exactly once
    assert len(seen) == len(set(seen))
    assert sorted(seen) == np.flatnonzero(np.isin(targets, config.digits.id_classes)).tolist()
    # the split fractions are applied per class
    val = read_manifest(bench.id_splits["val"]).class_counts
    test = read_manifest(bench.id_splits["test"]).class_counts
    assert list(val) == [round(n * config.digits.val_fraction) for n in want]
    assert list(test) == [round(n * config.digits.test_fraction) for n in want]


def test_benchmark_id_pixels_are_sklearn_levels(benchmarks, sk_digits):
    _, bench, _ = benchmarks
    images, _, metas = read_all(bench.id_splits["train"])
    assert images.shape[1:] == (1, 8, 8)
    for image, meta in zip(images, metas, strict=True):
        assert meta["dataset"] == "sklearn.digits"
        want = np.array(
            [[round(v * 255 / 16) for v in row] for row in sk_digits.images[meta["index"]]]
        )
        np.testing.assert_array_equal(image[0], want)


def test_benchmark_near_holds_all_other_digits(benchmarks, sk_digits):
    config, bench, _ = benchmarks
    images, labels, metas = read_all(bench.near["digits"])
    targets = sk_digits.target
    want = np.flatnonzero(np.isin(targets, (6, 7, 8, 9)))
    assert sorted(m["index"] for m in metas) == want.tolist()
    for image, label, meta in zip(images, labels, metas, strict=True):
        assert config.digits.near_ood_classes[label] == targets[meta["index"]]
        np.testing.assert_array_equal(image[0], np.rint(sk_digits.images[meta["index"]] * 255 / 16))


def test_benchmark_far_sets(benchmarks):
    _, bench, _ = benchmarks
    levels = {round(k * 255 / 16) for k in range(17)}
    for name, folder in bench.far.items():
        manifest = read_manifest(folder)
        assert manifest.num_samples == FAR_PER_SET, name
        images, labels, metas = read_all(folder)
        assert len(images) == FAR_PER_SET
        assert images.shape[1:] == (1, 8, 8)
        assert set(np.unique(images).tolist()) <= levels
        for label, meta in zip(labels, metas, strict=True):
            assert meta["dataset"] == f"image.{manifest.class_names[label]}"
        # crops are not all the same image
        assert len({im.tobytes() for im in images}) > FAR_PER_SET // 2


def test_benchmark_is_deterministic(benchmarks):
    _, first, second = benchmarks
    pairs = [(first.id_splits[k], second.id_splits[k]) for k in first.id_splits]
    pairs += [(first.near[k], second.near[k]) for k in first.near]
    pairs += [(first.far[k], second.far[k]) for k in first.far]
    for a, b in pairs:
        sha_a = [s.sha256 for s in read_manifest(a).shards]
        sha_b = [s.sha256 for s in read_manifest(b).shards]
        assert sha_a == sha_b, a.name


def test_benchmark_other_seed_changes_far_ood_and_split(benchmarks):
    config, first, _ = benchmarks
    same = {s[0]: s for s in build_digits(config.digits, config.seed)}
    splits = {s[0]: s for s in build_digits(config.digits, config.seed + 1)}
    for name, folder in first.far.items():
        images, _, _ = read_all(folder)
        np.testing.assert_array_equal(images[:, 0], same[f"far_{name}"][3])
        other = splits[f"far_{name}"][3]
        assert other.shape == (FAR_PER_SET, 8, 8)
        assert not np.array_equal(images[:, 0], other), name
    # the ID split changes with the seed; the near set (all of 6..9) does not
    _, _, metas = read_all(first.id_splits["train"])
    assert [m["index"] for m in metas] != [m["index"] for m in splits["id_train"][6]]
    _, _, near_metas = read_all(first.near["digits"])
    assert [m["index"] for m in near_metas] == [m["index"] for m in splits["near_digits"][6]]


def test_tar_bytes_match_webdataset_tarwriter(tmp_path):
    """sio's own tar writer gives exactly the bytes of webdataset.TarWriter(mtime=0)."""
    images, labels, metas = make_samples(5, (6, 5, 3), seed=3)
    metas[2] = {"long": "x" * 3000, "unicode": "é"}
    folder = write_set(tmp_path / "set", images, labels, metas, shard_size=10)
    with wds.TarWriter(str(tmp_path / "ref.tar"), encoder=False, mtime=0) as tar:
        for i, (image, label, meta) in enumerate(zip(images, labels, metas, strict=True)):
            tar.write(
                {
                    "__key__": f"k{i:05d}",
                    "png": encode_png(image),
                    "cls": str(int(label)).encode(),
                    "json": json.dumps(meta, sort_keys=True).encode(),
                }
            )
    assert (folder / "shard-000000.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()


def test_tar_headers_fall_back_to_tarfile_for_long_or_unicode_names():
    import tarfile

    from sio.shardset.tarwrite import _tarinfo, member_header

    for name, size in [("k.png", 7), ("a" * 100, 0), ("b" * 130 + ".json", 5), ("é.cls", 1)]:
        want = _tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        assert member_header(name, size) == want


def test_failed_write_leaves_no_shards(tmp_path):
    images, labels, metas = make_samples(25, (4, 4))
    with pytest.raises(ValueError, match="shape"), open_writer(tmp_path / "set") as writer:
        for i, (image, label, meta) in enumerate(zip(images, labels, metas, strict=True)):
            writer.write(f"k{i}", image, int(label), meta)
        writer.write("bad", np.zeros((5, 5), np.uint8), 0, {})
    assert list((tmp_path / "set").iterdir()) == []


@pytest.mark.parametrize("batch_bytes", [1, 200, 1 << 20])
def test_pixel_statistics_exact_whatever_the_batch(tmp_path, monkeypatch, batch_bytes):
    import sio.shardset.format as format_module

    monkeypatch.setattr(format_module, "STATS_BATCH_BYTES", batch_bytes)
    images, labels, metas = make_samples(23, (6, 5, 3), seed=4)
    manifest = read_manifest(write_set(tmp_path / "set", images, labels, metas))
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(manifest.pixel_mean, pixels.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(manifest.pixel_std, pixels.std(0), rtol=0, atol=1e-12)


def test_shuffled_order_is_a_seeded_permutation_that_mixes_classes(benchmarks, tmp_path):
    """shard.order: shuffled (the default) writes the same samples as source order, permuted by
    a permutation seeded by (shard.seed, split), recorded in the manifest; every shard mixes
    the classes, where source order holds runs of one class."""
    source_config, source_bench, _ = benchmarks
    config = dataclasses.replace(source_config, order="shuffled")
    assert ShardConfig().order == "shuffled"
    bench = write_benchmark(config, tmp_path / "a")
    again = write_benchmark(config, tmp_path / "b")
    for split in ("train", "val", "test"):
        s_images, s_labels, s_metas = read_all(source_bench.id_splits[split])
        images, labels, metas = read_all(bench.id_splits[split])
        key = [json.dumps(m, sort_keys=True) for m in s_metas]
        position = {k: i for i, k in enumerate(key)}
        order = [position[json.dumps(m, sort_keys=True)] for m in metas]
        assert sorted(order) == list(range(len(key)))  # a permutation of the same samples
        assert order != sorted(order)
        np.testing.assert_array_equal(images, s_images[order])
        np.testing.assert_array_equal(labels, s_labels[order])
        manifest = read_manifest(bench.id_splits[split])
        assert manifest.provenance["shard_config"]["order"] == "shuffled"
        first = read_manifest(again.id_splits[split]).shards
        assert [s.sha256 for s in manifest.shards] == [s.sha256 for s in first]  # seeded
    _, labels, _ = read_all(bench.id_splits["train"])
    size = config.shard_size
    for start in range(0, len(labels) - size + 1, size):
        assert len(set(labels[start : start + size].tolist())) == 6  # all ID classes per shard


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 3)], ids=["grey", "rgb"])
def test_shards_show_writes_a_grid_per_class(tmp_path, shape):
    from PIL import Image

    from sio.shards.show import write_grid

    images, labels, metas = make_samples(40, shape, seed=3)
    folder = write_set(tmp_path / "set", images, labels, metas)
    out = write_grid(folder, tmp_path / "grid.png", per_class=2, scale=3, labels=False)
    grid = Image.open(out)
    assert grid.mode == ("L" if len(shape) == 2 else "RGB")  # grey stays grey
    pixels = np.asarray(grid)
    assert pixels.shape[:2] == (len(CLASSES) * (6 * 3 + 1) + 1, 2 * (5 * 3 + 1) + 1)
    for row, label in enumerate(range(len(CLASSES))):
        first = [i for i in range(40) if labels[i] == label][:2]
        for column, index in enumerate(first):
            top, left = 1 + row * 19, 1 + column * 16
            cell = pixels[top : top + 18 : 3, left : left + 15 : 3]
            np.testing.assert_array_equal(cell, images[index])  # each pixel enlarged 3x3


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 3)], ids=["grey", "rgb"])
def test_shard_dataset_indexes_every_sample_and_keeps_grey_grey(tmp_path, shape):
    import torch

    from sio.shardset import ShardDataset

    images, labels, metas = make_samples(23, shape, seed=5)  # 3 shards of 10, 10, 3
    dataset = ShardDataset(write_set(tmp_path / "set", images, labels, metas))
    assert len(dataset) == 23 and dataset.class_names == CLASSES
    for i in [22, 0, 10, 9, 15, -1]:  # across shards, in any order
        image, label = dataset[i]
        assert image.dtype == torch.uint8 and image.shape[0] == (1 if len(shape) == 2 else 3)
        np.testing.assert_array_equal(as_hwc(image.numpy()), images[i])
        assert label == labels[i]
    with pytest.raises(IndexError, match="index 23 out of range for 23"):
        dataset[23]
    with pytest.raises(ShardError, match="ShardStream"):
        ShardDataset("http://127.0.0.1:1/set")
    scaled = ShardDataset(tmp_path / "set", transform=lambda x: x.float() / 255)
    assert scaled[3][0].max() <= 1.0


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_stream_gives_each_sample_once_per_pass(tmp_path, workers):
    import torch

    from sio.shardset import ShardStream

    images, labels, metas = make_samples(37, (4, 4), seed=6)
    stream = ShardStream(write_set(tmp_path / "set", images, labels, metas), shuffle=True, seed=1)
    loader = torch.utils.data.DataLoader(stream, batch_size=5, num_workers=workers)
    seen = [x for batch, _ in loader for x in batch]
    assert len(seen) == 37
    got = sorted(image.numpy().tobytes() for image in seen)
    assert got == sorted(image[None].tobytes() for image in images)  # grey: 1 x H x W
    first = [x for x, _ in ShardStream(tmp_path / "set", shuffle=True, seed=1)]
    again = [x for x, _ in ShardStream(tmp_path / "set", shuffle=True, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # seeded
    other = ShardStream(tmp_path / "set", shuffle=True, seed=1)
    other.set_epoch(1)
    assert any(not torch.equal(a, b) for a, (b, _) in zip(first, other, strict=True))


def test_content_sha256_names_the_samples_not_the_provenance(tmp_path):
    """Recording a quality figure (provenance) keeps a set's content fingerprint; another shard
    list changes it."""
    import dataclasses

    from sio.shardset import read_manifest

    folder = tmp_path / "set"
    with ShardSetWriter(
        folder,
        kind="real",
        name="c",
        image_size=(4, 4),
        channels=1,
        class_names=CLASSES,
        shard_size=2,
    ) as writer:
        for i in range(3):
            writer.write(f"s{i}", np.full((4, 4), i, np.uint8), i % len(CLASSES), {})
    manifest = read_manifest(folder)
    noted = dataclasses.replace(manifest, provenance={**manifest.provenance, "quality": 1.0})
    assert noted.content_sha256 == manifest.content_sha256
    fewer = dataclasses.replace(manifest, shards=manifest.shards[:1])
    assert fewer.content_sha256 != manifest.content_sha256
