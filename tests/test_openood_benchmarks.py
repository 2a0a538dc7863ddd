"""OpenOOD v1.5's benchmarks as shipped benchmark files over the `imglist` reader, on tiny
stand-in image folders and lists in OpenOOD's layout (benchmark_imglist/<bench>/*.txt,
images_classic/, images_largescale/), and `sio report --format openood-csv`."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from sio.cli import get_cli
from sio.evaluate.report import OPENOOD_CSV_HEADER, report
from sio.shards import read_benchmark
from sio.shards.samplefiles import natural_images, write_image
from sio.shards.spec import load_spec, shipped_benchmarks
from sio.shardset import iter_samples, read_manifest

# OpenOOD's DATA_INFO (openood/evaluation_api/datasets.py): the list files of each benchmark
OPENOOD = {
    "openood-cifar10": ("cifar10", ["cifar100", "tin"], ["mnist", "svhn", "texture", "places365"]),
    "openood-cifar100": ("cifar100", ["cifar10", "tin"], ["mnist", "svhn", "texture", "places365"]),
    "openood-imagenet200": (
        "imagenet200",
        ["ssb_hard", "ninco"],
        ["inaturalist", "textures", "openimage_o"],
    ),
    "openood-imagenet1k": (
        "imagenet",
        ["ssb_hard", "ninco"],
        ["inaturalist", "textures", "openimage_o"],
    ),
}
CSID = {
    "openood-cifar10-fsood": ["test_cifar10c.txt"],
    "openood-imagenet200-fsood": [f"test_imagenet200_{s}.txt" for s in ("v2", "c", "r")],
    "openood-imagenet1k-fsood": [f"test_imagenet_{s}.txt" for s in ("v2", "c", "r")],
}


def list_of(spec) -> str:
    return spec.imglist.rsplit("/", 1)[1]


@pytest.mark.parametrize("name", sorted(OPENOOD))
def test_benchmark_files_name_openood_lists(name):
    key, near, far = OPENOOD[name]
    spec = load_spec(name)
    assert [list_of(getattr(spec.id, p)) for p in ("train", "val", "test")] == [
        f"{p}_{key}.txt" for p in ("train", "val", "test")
    ]
    assert {s.imglist.split("/")[1] for s in (*spec.near, *spec.far)} == {key}
    assert [list_of(s) for s in spec.near] == [f"test_{n}.txt" for n in near]
    assert [list_of(s) for s in spec.far] == [f"test_{n}.txt" for n in far]
    assert [s.name for s in (*spec.near, *spec.far)] == near + far  # OpenOOD's set names
    classic = name.startswith("openood-cifar")
    for s in (spec.id.train, spec.id.val, spec.id.test, *spec.near, *spec.far):
        expected = "images_classic" if classic or s.name == "textures" else "images_largescale"
        assert (s.reader, s.path) == ("imglist", expected)
    size = (32, 32) if classic else (224, 256)
    assert (spec.image_size, spec.shorter_side) == size


@pytest.mark.parametrize("name", sorted(CSID))
def test_fsood_files_add_the_csid_lists_to_the_id_test_only(name):
    spec, base = load_spec(name), load_spec(name.removesuffix("-fsood"))
    assert [p.rsplit("/", 1)[1] for p in spec.id.test.csid_imglists] == CSID[name]
    assert spec.id.test.imglist == base.id.test.imglist
    assert (spec.id.train, spec.id.val, spec.near, spec.far) == (
        base.id.train,
        base.id.val,
        base.near,
        base.far,
    )
    assert "openood-cifar100-fsood" not in shipped_benchmarks()  # OpenOOD has no csID for it


# --- a tiny OpenOOD data root --------------------------------------------------------------------

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar_rows(split: str, per_class: int, seed: int) -> list[tuple[str, int, tuple]]:
    """(relative path under images_classic, label, image size) for CIFAR-10 stand-ins."""
    return [
        (f"cifar10/{split}/{c}/{split}_{seed}_{k}.png", label, (32, 32, 3))
        for label, c in enumerate(CLASSES)
        for k in range(per_class)
    ]


def ood_rows(folder: str, n: int, size: tuple, suffix: str) -> list[tuple[str, int, tuple]]:
    return [(f"{folder}/{folder}_{k}.{suffix}", -1, size) for k in range(n)]


TINY_CIFAR10 = {
    "train_cifar10.txt": cifar_rows("train", 2, 0),  # 20
    "val_cifar10.txt": cifar_rows("test", 1, 1),  # 10
    "test_cifar10.txt": cifar_rows("test", 1, 2),  # 10
    "test_cifar10c.txt": [
        (f"cifar10c/{k}_{k % 10}.png", k % 10, (32, 32, 3)) for k in range(7)
    ],  # 7, labels 0..6
    "test_cifar100.txt": ood_rows("cifar100", 3, (32, 32, 3), "png"),
    "test_tin.txt": [
        (f"tin/test/n0144{k}/images/test_{k}.JPEG", -1, (64, 64, 3)) for k in range(4)
    ],
    "test_mnist.txt": ood_rows("mnist", 3, (28, 28), "png"),  # grey: stored as RGB
    "test_svhn.txt": ood_rows("svhn", 2, (32, 32, 3), "png"),
    "test_texture.txt": ood_rows("texture", 2, (40, 56, 3), "jpg"),  # resized and cropped
    "test_places365.txt": ood_rows("places365", 2, (48, 48, 3), "jpg"),
}


def write_openood_root(root, lists=TINY_CIFAR10, bench="cifar10") -> None:
    """benchmark_imglist/<bench>/<list> of `path label` lines and the images they name."""
    folder = root / "benchmark_imglist" / bench
    folder.mkdir(parents=True)
    for number, (name, rows) in enumerate(lists.items()):
        pixels = natural_images(len(rows), 64, seed=number)
        for (path, _, size), image in zip(rows, pixels, strict=True):
            image = (
                image[: size[0], : size[1]] if len(size) == 3 else image[: size[0], : size[1], 0]
            )
            write_image(root / "images_classic" / path, np.ascontiguousarray(image))
        (folder / name).write_text("".join(f"{path} {label}\n" for path, label, _ in rows))


def shard(*args):
    return CliRunner().invoke(get_cli(), ["shard", *map(str, args)])


def error_line(result) -> str:
    """The error: one line, the last of the output (after the config used and any progress)."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and result.output.rstrip().endswith(lines[0]), result.output
    return lines[0]


def split_samples(out, folder):
    return [(label, meta["file"]) for _, label, meta in iter_samples(out / folder)]


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("openood")
    write_openood_root(root)
    return root


@pytest.mark.parametrize("name", ["openood-cifar10", "openood-cifar10-fsood"])
def test_shard_openood_cifar10_writes_every_split(cifar10_root, tmp_path, name):
    out = tmp_path / "out"
    result = shard(name, "--data-root", cifar10_root, "--out", out, "--order", "source")
    assert result.exit_code == 0, result.output
    bench = read_benchmark(out)
    assert bench.name == name
    assert bench.class_names == tuple(str(i) for i in range(10))  # OpenOOD's integer labels
    assert sorted(bench.near) == ["cifar100", "tin"]
    assert sorted(bench.far) == ["mnist", "places365", "svhn", "texture"]
    test_lists = ["test_cifar10.txt"] + (["test_cifar10c.txt"] if name.endswith("fsood") else [])
    expected = {
        "id_train": TINY_CIFAR10["train_cifar10.txt"],
        "id_val": TINY_CIFAR10["val_cifar10.txt"],
        "id_test": [row for list_name in test_lists for row in TINY_CIFAR10[list_name]],
        **{
            f"{g}_{s}": TINY_CIFAR10[f"test_{s}.txt"]
            for g, s in [("near", "cifar100"), ("near", "tin")]
        },
        **{
            f"far_{s}": TINY_CIFAR10[f"test_{s}.txt"]
            for s in ("mnist", "svhn", "texture", "places365")
        },
    }
    for folder, rows in expected.items():
        manifest = read_manifest(out / folder)
        assert (manifest.num_samples, manifest.image_size, manifest.channels) == (
            len(rows),
            (32, 32),
            3,
        )
        samples = split_samples(out, folder)
        files = [f"images_classic/{path}" for path, _, _ in rows]
        assert [file for _, file in samples] == files, folder  # every listed image, in list order
        if folder.startswith("id_"):  # ID labels are OpenOOD's; OOD lists hold -1 (one class)
            assert [label for label, _ in samples] == [label for _, label, _ in rows], folder
        else:
            assert {label for label, _ in samples} == {0}
    # the FSOOD ID test: 10 CIFAR-10 test images then 7 CIFAR-10-C ones (labels 0..6)
    assert read_manifest(out / "id_test").num_samples == (17 if name.endswith("fsood") else 10)


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("benchmark_imglist/cifar10/test_tin.txt", "near[1].imglist, set near_tin"),
        ("benchmark_imglist/cifar10/test_cifar10c.txt", "id.test.csid_imglists[0], set id_test"),
    ],
)
def test_a_missing_list_is_named_before_anything_is_written(cifar10_root, tmp_path, remove, named):
    root = tmp_path / "data"
    write_openood_root(root)
    (root / remove).unlink()
    out = tmp_path / "out"
    line = error_line(shard("openood-cifar10-fsood", "--data-root", root, "--out", out))
    assert f"{root / remove} not found (" in line and named in line
    assert "openood-cifar10-fsood.yaml" in line
    assert not out.exists()


def test_a_missing_image_is_named_with_its_list_and_line(tmp_path):
    root = tmp_path / "data"
    write_openood_root(root)
    missing = root / "images_classic" / TINY_CIFAR10["test_tin.txt"][2][0]
    missing.unlink()
    out = tmp_path / "out"
    line = error_line(
        shard("openood-cifar10", "--data-root", root, "--out", out, "--splits", "near")
    )
    list_path = root / "benchmark_imglist" / "cifar10" / "test_tin.txt"
    assert line.startswith(f"Error: {missing}: not found (an image listed in {list_path} line 3")
    assert "1 of 4 missing" in line
    assert (out / "near_cifar100" / "manifest.json").exists()  # the split before it is whole
    assert not (out / "near_tin" / "manifest.json").exists()


def test_imglist_labels_keep_openood_class_indices(tmp_path):
    # a list without class 1 keeps label 2 as 2 (classes "0".."2"), so ID splits agree
    from sio.shards.sources import ReadContext, get_reader
    from sio.shards.spec import SourceSpec

    rows = {"val_x.txt": [(f"x/{k}.png", label, (8, 8, 3)) for k, label in enumerate([0, 2, 2])]}
    write_openood_root(tmp_path, rows, bench="x")
    spec = SourceSpec(
        name="x", reader="imglist", path="images_classic", imglist="benchmark_imglist/x/val_x.txt"
    )
    source = get_reader("imglist").read(spec, ReadContext(tmp_path, 8, 0))
    assert source.class_names == ("0", "1", "2")
    assert source.labels.tolist() == [0, 2, 2]


# --- sio report --format openood-csv --------------------------------------------------------------


def metrics(base: float) -> dict:
    return {
        "fpr95": 100 - base,
        "auroc": base + 0.125,
        "aupr_in": base + 0.25,
        "aupr_out": base / 3,
    }


def write_evaluated_run(folder, alpha: float, seed: int, offset: float) -> dict:
    """results.json and run.json as `sio evaluate` writes them (see test_evaluate_report.py)."""
    near = {"cifar100": metrics(70 + offset), "tin": metrics(72.5 + offset)}
    far = {"mnist": metrics(90 + offset), "svhn": metrics(91 / 7 + offset)}

    def group(sets):
        mean = {m: float(np.mean([s[m] for s in sets.values()])) for m in metrics(0)}
        return {"datasets": sets, "mean": mean}

    per_detector = {
        method: {"near": group(near), "far": group(far)} for method in ("msp", "knn", "ebo")
    }
    benchmark = {"name": "openood-cifar10", "sha256": "ab" * 32}
    results = {
        "id_acc": 94.5 + offset / 10,
        "fpr_convention": "ood",
        "metrics": per_detector,
        "skipped": {},
        "benchmark": benchmark,
    }
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(results, sort_keys=True))
    (folder / "run.json").write_text(
        json.dumps({"alpha": alpha, "seed": seed, "benchmark": benchmark})
    )
    return json.loads((folder / "results.json").read_text())


def test_openood_csv_equals_results_json(tmp_path):
    runs = {
        "1": write_evaluated_run(tmp_path / "base", 1.0, 0, 0.0),
        "0.5": write_evaluated_run(tmp_path / "sio", 0.5, 0, 3.3),
    }
    out = tmp_path / "report"
    args = ["report", str(tmp_path / "base"), str(tmp_path / "sio"), "--format", "openood-csv"]
    result = CliRunner().invoke(get_cli(), [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (out / "openood.csv").read_text()  # printed and written atomically
    reader = csv.DictReader(io.StringIO(result.stdout))
    assert tuple(reader.fieldnames) == OPENOOD_CSV_HEADER
    rows = list(reader)
    # per arm and detector: OpenOOD's index (near sets, nearood, far sets, farood)
    assert len(rows) == 2 * 3 * 6
    first = [(r["postprocessor"], r["dataset"]) for r in rows[:6]]
    assert first == [("msp", d) for d in ("cifar100", "tin", "nearood", "mnist", "svhn", "farood")]
    columns = {"FPR@95": "fpr95", "AUROC": "auroc", "AUPR_IN": "aupr_in", "AUPR_OUT": "aupr_out"}
    for row in rows:
        results = runs[row["alpha"]]
        assert row["benchmark"] == "openood-cifar10" and row["runs"] == "1"
        assert row["training"] == ("baseline" if row["alpha"] == "1" else "+SIO α=0.5")
        group = "near" if row["dataset"] in ("cifar100", "tin", "nearood") else "far"
        entry = results["metrics"][row["postprocessor"]][group]
        expected = (
            entry["mean"] if row["dataset"].endswith("ood") else entry["datasets"][row["dataset"]]
        )
        for column, metric in columns.items():
            assert float(row[column]) == expected[metric]  # exact: the CSV holds repr(float)
            assert float(row[f"{column} std"]) == 0.0
        assert float(row["ACC"]) == results["id_acc"]
        assert row["fpr_positive"] == "ood"
    # the leaderboard's three numbers for the baseline's MSP
    msp = {
        r["dataset"]: r for r in rows if r["training"] == "baseline" and r["postprocessor"] == "msp"
    }
    assert float(msp["nearood"]["AUROC"]) == runs["1"]["metrics"]["msp"]["near"]["mean"]["auroc"]
    assert float(msp["farood"]["AUROC"]) == runs["1"]["metrics"]["msp"]["far"]["mean"]["auroc"]
    assert float(msp["farood"]["ACC"]) == 94.5


def test_openood_csv_averages_seeds_like_openood(tmp_path):
    # two seeds of one arm: mean and population std (np.std), as OpenOOD's eval_ood.py
    a = write_evaluated_run(tmp_path / "s0", 1.0, 0, 0.0)
    b = write_evaluated_run(tmp_path / "s1", 1.0, 1, 2.0)
    rows = list(
        csv.DictReader(io.StringIO(report([tmp_path / "s0", tmp_path / "s1"], fmt="openood-csv")))
    )
    near = next(r for r in rows if r["postprocessor"] == "knn" and r["dataset"] == "nearood")
    values = [run["metrics"]["knn"]["near"]["mean"]["auroc"] for run in (a, b)]
    assert float(near["AUROC"]) == pytest.approx(np.mean(values), abs=1e-12)
    assert float(near["AUROC std"]) == pytest.approx(np.std(values), abs=1e-12)
    assert near["runs"] == "2"
    assert not list(tmp_path.glob("*.csv"))  # without --out nothing is written


def test_unknown_report_format_is_refused(tmp_path):
    write_evaluated_run(tmp_path / "a", 1.0, 0, 0.0)
    with pytest.raises(ValueError, match="report format 'tsv'"):
        report([tmp_path / "a"], fmt="tsv")


def test_definitions_recorded_before_csid_imglists_still_match():
    # shard sets record the benchmark definition; the new field stays out of it unless used
    from sio.shards.spec import definition

    assert "csid_imglists" not in json.dumps(definition(load_spec("cifar10")))
    assert "csid_imglists" not in definition(load_spec("openood-cifar10"))["id"]["test"]
    fsood = definition(load_spec("openood-cifar10-fsood"))
    assert fsood["id"]["test"]["csid_imglists"] == ["benchmark_imglist/cifar10/test_cifar10c.txt"]


def test_openood_csv_of_two_real_evaluated_runs(tmp_path):
    # `sio evaluate` on a tiny checkpoint (alpha 1) and the same model recorded as alpha 0.5
    import torch

    from sio.evaluate import evaluate_checkpoint
    from sio.evaluate.config import EvaluateConfig

    from .tiny_run import write_tiny_run

    tiny = write_tiny_run(tmp_path, shard_size=512)
    state = torch.load(tiny / "run" / "checkpoint.pt", weights_only=False)
    (tiny / "sio").mkdir()
    torch.save({**state, "alpha": 0.5}, tiny / "sio" / "checkpoint.pt")
    config = EvaluateConfig(detectors=("msp", "ebo"))
    for run in ("run", "sio"):
        evaluate_checkpoint(tiny / run, tiny / "bench", tiny / f"eval_{run}", config)
    results = {  # the numbers as results.json holds them (rounded to 1e-6, sio.core.numbers)
        alpha: json.loads((tiny / f"eval_{run}" / "results.json").read_text())
        for alpha, run in (("1", "run"), ("0.5", "sio"))
    }
    out = tiny / "report"
    report([tiny / "eval_run", tiny / "eval_sio"], out)  # --out writes openood.csv
    rows = list(csv.DictReader((out / "openood.csv").open(encoding="utf-8")))
    assert len(rows) == 2 * 2 * (1 + 1 + 3 + 1)  # arms x detectors x (near, nearood, 3 far, farood)
    for row in rows:
        found = results[row["alpha"]]
        group = "near" if row["dataset"] in found["metrics"]["msp"]["near"]["datasets"] else "far"
        if row["dataset"] in ("nearood", "farood"):
            group = row["dataset"].removesuffix("ood")
        entry = found["metrics"][row["postprocessor"]][group]
        expected = entry["datasets"].get(row["dataset"], entry["mean"])
        assert float(row["AUROC"]) == expected["auroc"] and float(row["ACC"]) == found["id_acc"]
        assert float(row["FPR@95"]) == expected["fpr95"]
        assert row["benchmark"] == "digits" and row["fpr_positive"] == "id"


def stand_in_from_spec(root, spec) -> dict[str, list[int]]:
    """Tiny images for every list a benchmark file names, at `<list stem>/<k>.png` under the
    set's folder (ID lists: labels k % 3; OOD lists: -1); the labels each split should hold."""
    expected = {}
    sets = [(f"id_{p}", getattr(spec.id, p)) for p in ("train", "val", "test")]
    sets += [(f"{g}_{s.name}", s) for g in ("near", "far") for s in getattr(spec, g)]
    for number, (folder, source) in enumerate(sets):
        labels = []
        for relative in (source.imglist, *source.csid_imglists):
            stem = relative.rsplit("/", 1)[1].removesuffix(".txt")
            rows = [
                (f"{stem}/{k}.png", k % 3 if folder.startswith("id_") else -1) for k in range(4)
            ]
            for (path, _), image in zip(rows, natural_images(4, 24, seed=number), strict=True):
                write_image(root / source.path / path, image)
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_text("".join(f"{p} {label}\n" for p, label in rows))
            labels += [max(label, 0) for _, label in rows]
        expected[folder] = labels
    return expected


@pytest.mark.parametrize("name", [*sorted(OPENOOD), *sorted(CSID)])
def test_every_openood_file_shards_its_stand_in(tmp_path, name):
    spec = load_spec(name)
    expected = stand_in_from_spec(tmp_path / "data", spec)
    out = tmp_path / "out"
    result = shard(name, "--data-root", tmp_path / "data", "--out", out, "--order", "source")
    assert result.exit_code == 0, result.output
    assert read_benchmark(out).class_names == ("0", "1", "2")
    for folder, labels in expected.items():
        assert read_manifest(out / folder).image_size == (spec.image_size, spec.image_size)
        assert [label for label, _ in split_samples(out, folder)] == labels, folder
    assert len(expected["id_test"]) == 4 * (1 + len(CSID.get(name, [])))
