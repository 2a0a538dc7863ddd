"""The per-class audit of a synthetic set (issue 27): a tiny classifier trained here on real
images judges sets built to fail one class (its images are uniform noise); the one warning names
that class, in `sio generate` and in `sio run`'s synthetic-set step alike, with the config's
thresholds; the figures reach study.json."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from sio.cli import get_cli
from sio.core.config import ConfigError
from sio.generate.agreement import agreement_warning
from sio.generate.audit import audit_set
from sio.generate.base import Generator, seeded_generators
from sio.generate.config import AuditConfig
from sio.generate.quality import read_quality, record_quality
from sio.generate.registry import GENERATORS
from sio.pipeline.config import PipelineConfig, load_pipeline
from sio.pipeline.run import PipelineRun, _synthetic_sets
from sio.pipeline.study import Point, StudyRecord
from sio.train import load_classifier
from sio.train.models import build_classifier
from sio.train.trainer import CHECKPOINT_FORMAT

from .shardsets import grey_writer

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("dark", "mid", "light")
NOISE_CLASS = 0  # "dark": its synthetic images are uniform noise (mean 127: "mid"-looking)


def class_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """An 8x8 grey image of brightness class ``label`` (40, 120 or 200, ± 15)."""
    return (40 + 80 * label + rng.integers(-15, 16, (8, 8))).astype(np.uint8)


def write_set(folder, kind: str, per_class: int, seed: int, noise_class: int | None = None):
    rng = np.random.default_rng(seed)
    with grey_writer(folder, kind, CLASSES, shard_size=30) as writer:
        for i in range(per_class * len(CLASSES)):
            label = i % len(CLASSES)
            image = class_image(label, rng)
            if label == noise_class:
                image = rng.integers(0, 256, (8, 8)).astype(np.uint8)
            writer.write(f"{kind}-{i:05d}", image, label, {})
    return folder


def train_classifier(real_images: torch.Tensor, labels: torch.Tensor, path):
    """small_cnn trained on the real images (100% accuracy on them), saved as sio's checkpoint."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_classifier("small_cnn", in_channels=1, num_classes=3, mean=[0.47], std=[0.3])
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(30):
            loss = torch.nn.functional.cross_entropy(model(real_images), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        assert (model(real_images).argmax(1) == labels).all()
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": "small_cnn",
        "method": "ce",
        "channels": 1,
        "class_names": list(CLASSES),
        "image_size": [8, 8],
        "pixel_mean": [0.47],
        "pixel_std": [0.3],
        "model_state": model.state_dict(),
        "alpha": 1.0,
        "seed": 0,
    }
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


def real_and_judge(root) -> tuple:
    """(a real set of the brightness classes, the checkpoint of a classifier trained on it)."""
    from sio.shardset import iter_batches

    real = write_set(root / "real", "real", per_class=40, seed=0)
    ((images, labels),) = list(iter_batches(real, 1000))
    return real, train_classifier(images, labels, root / "judge" / "checkpoint.pt")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A real set, a classifier trained on it, a good synthetic set and one whose class 'dark'
    is noise."""
    root = tmp_path_factory.mktemp("audit")
    real, judge = real_and_judge(root)
    good = write_set(root / "good", "synthetic", per_class=30, seed=1)
    bad = write_set(root / "bad", "synthetic", per_class=30, seed=2, noise_class=NOISE_CLASS)
    return SimpleNamespace(root=root, real=real, judge=judge, good=good, bad=bad)


def audit(world, synthetic, **options):
    classifier, info = load_classifier(world.judge)
    return audit_set(synthetic, classifier, CLASSES, batch_size=32, **options)


def test_the_audit_finds_the_one_noise_class(world):
    good, bad = audit(world, world.good, real=world.real), audit(world, world.bad, real=world.real)
    json.dumps(bad, allow_nan=False)  # no NaN in a results file
    assert good["images_per_class"] == bad["images_per_class"] == dict.fromkeys(CLASSES, 30)
    assert all(v == 1.0 for v in good["label_agreement_per_class"].values())
    per_class = bad["label_agreement_per_class"]
    assert per_class["dark"] < 0.5 and per_class["mid"] == per_class["light"] == 1.0
    assert bad["label_agreement"] == pytest.approx(sum(per_class.values()) / 3)
    confidence = bad["confidence_per_class"]
    assert confidence["dark"] < 0.5 < min(confidence["mid"], confidence["light"])
    # the noise class's features are far from its real images; the others' are where good's are
    distance = bad["fd_classifier_per_class"]
    worst_good = max(good["fd_classifier_per_class"].values())
    assert distance["dark"] > 10 * worst_good
    assert distance["mid"] < 3 * worst_good and distance["light"] < 3 * worst_good


def test_the_audit_without_a_real_set_and_of_pseudo_labels(world):
    record = audit(world, world.bad)
    assert record["fd_classifier_per_class"] is None and record["real"] is None
    assert record["label_agreement_per_class"]["dark"] < 0.9
    pseudo = audit(world, world.bad, labelled_by_classifier=True)
    assert pseudo["labels"] == "pseudo" and pseudo["label_agreement_per_class"] is None
    assert pseudo["confidence_per_class"] == record["confidence_per_class"]


def test_a_capped_audit_judges_the_first_images(world):
    record = audit(world, world.bad, real=world.real, max_images=12)
    assert record["images_per_class"] == dict.fromkeys(CLASSES, 4)


def test_the_warning_names_each_class_below_its_threshold_and_the_set_below_its():
    per_class = {"0": 0.99, "1": 0.55, "7": 0.85, "8": None}
    warning = agreement_warning("ddpm", 0.765, 10, per_class)
    assert warning.startswith("WARNING: generator ddpm: SIO is likely to hurt far-OOD: ")
    assert "class '1' agrees 55.0%, class '7' agrees 85.0% (flagged below 90%)" in warning
    assert "label agreement 76.5% (chance 10.0%, flagged below 95%)" in warning
    assert "class '0'" not in warning and "class '8'" not in warning
    # a good set with one bad class is flagged for the class alone
    one = agreement_warning("ddpm", 0.97, 10, {"0": 1.0, "1": 0.7})
    assert "class '1' agrees 70.0%" in one and "at least 95%" in one
    assert agreement_warning("ddpm", 0.97, 10, {"0": 0.99, "1": 0.95}) is None
    assert agreement_warning("ddpm", None, 10, None) is None
    relaxed = AuditConfig(min_agreement=0.5, min_class_agreement=0.5)
    assert agreement_warning("ddpm", 0.765, 10, per_class, relaxed) is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"min_agreement": 1.5}, "audit.min_agreement: must be in 0..1, got 1.5"),
        ({"min_class_agreement": -0.1}, "audit.min_class_agreement: must be in 0..1"),
        ({"min_class_agreement": "high"}, "audit.min_class_agreement: expected a finite number"),
        ({"max": 1}, "audit"),
    ],
)
def test_the_thresholds_are_typed_and_bounded(tmp_path, section, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"audit": section}))
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_pipeline(path, check_paths=False)


# --- the warning in both commands -------------------------------------------------------------


class BrightnessGenerator(Generator):
    """A conditional generator of the brightness classes whose class 'dark' comes out as
    noise, each image from its own seeded stream (as every sio generator)."""

    name = "ddpm"
    conditional = True
    class_names = CLASSES
    image_size, channels = 8, 1
    noise_class = NOISE_CLASS

    def __init__(self, weights):
        self.network = torch.nn.Linear(1, 1)
        self.weights = [weights]

    def describe(self) -> dict:
        return {"noise_class": self.noise_class}

    def _sample_rows(self, labels, seeds):
        rows = []
        for label, generator in zip(labels.tolist(), seeded_generators(seeds), strict=True):
            noise = torch.randint(-15, 16, (1, 8, 8), generator=generator)
            image = 40 + 80 * label + noise
            if label == self.noise_class:
                image = torch.randint(0, 256, (1, 8, 8), generator=generator)
            rows.append(image)
        return torch.stack(rows).to(torch.uint8)


def invoke(*args):
    return CliRunner().invoke(get_cli(), [str(a) for a in args])


def warning_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("WARNING: generator")]


def install_generator(folder, monkeypatch, kind=None):
    """``folder`` with stand-in weights, from which the ``ddpm`` loader gives a ``kind``
    (default BrightnessGenerator) for the rest of the test."""
    kind = kind or BrightnessGenerator
    folder.mkdir()
    (folder / "weights.pt").write_bytes(b"stand-in weights")
    loader = lambda path, config, device, size: kind(folder / "weights.pt")  # noqa: E731
    monkeypatch.setitem(GENERATORS._entries, "ddpm", loader)
    return folder


@pytest.fixture()
def brightness_generator(tmp_path, monkeypatch):
    return install_generator(tmp_path / "brightness", monkeypatch)


def generate(world, tmp_path, generator_dir, audit_section=None):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"audit": audit_section or {}}))
    out = tmp_path / "synthetic" / "ddpm"
    result = invoke(
        "generate", "--config", config, "--generator-dir", generator_dir,
        "--classifier", world.judge, "--classes-from", world.real, "--out", out,
        "--num", 60, "--shard-size", 30, "--batch-size", 30, "--network-batch", 10,
        "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.output


def test_generate_and_run_give_the_one_warning_naming_the_noise_class(
    world, tmp_path, brightness_generator, capsys
):
    syn, output = generate(world, tmp_path, brightness_generator)
    (generated,) = warning_lines(output)
    assert "SIO is likely to hurt far-OOD: class 'dark' agrees" in generated
    assert "class 'mid'" not in generated and "class 'light'" not in generated
    assert "(worst class 'dark'" in output
    quality = read_quality(syn)  # the manifest's label agreement and syn/quality/audit.json
    record = quality["audit"]
    assert record["label_agreement_per_class"]["dark"] < 0.9
    assert record["label_agreement_per_class"]["mid"] == 1.0
    assert record["label_agreement"] == pytest.approx(quality["label_agreement"])
    assert set(record["fd_classifier_per_class"]) == set(CLASSES)  # --classes-from: distances

    # sio run's synthetic-set step on that very set: its fid and audit stages run for real
    config = PipelineConfig(output_dir=str(tmp_path))
    run = PipelineRun(config, tmp_path, "cpu", force=False)
    run.real, run.benchmark = world.real, SimpleNamespace(class_names=CLASSES)
    run.generate = lambda generator, num, judge: syn
    study = SimpleNamespace(generators=["ddpm"], counts=lambda key: [60])
    capsys.readouterr()
    _, figures = _synthetic_sets(run, study, world.judge)
    assert warning_lines(capsys.readouterr().out) == [generated]
    saved = json.loads((tmp_path / "quality" / "ddpm" / "audit" / "audit.json").read_text())
    assert saved["label_agreement_per_class"] == record["label_agreement_per_class"]
    # carried into study.json (and back)
    figures = figures["ddpm"]
    assert figures.label_agreement_per_class == record["label_agreement_per_class"]
    assert figures.worst_class[0] == "dark"
    study_record = StudyRecord(Point("ddpm", 60, 0.8), {"ddpm": figures}, ())
    again = StudyRecord.from_json(json.loads(json.dumps(study_record.to_json())))
    assert again.generators["ddpm"] == figures


def test_the_thresholds_of_the_config_silence_the_warning(world, tmp_path, brightness_generator):
    _, output = generate(
        world, tmp_path, brightness_generator, {"min_agreement": 0.5, "min_class_agreement": 0.2}
    )
    assert warning_lines(output) == []
    assert "(worst class 'dark'" in output


def test_a_good_set_gives_no_warning(world, tmp_path, monkeypatch, brightness_generator):
    monkeypatch.setattr(BrightnessGenerator, "noise_class", None)
    _, output = generate(world, tmp_path, brightness_generator)
    assert warning_lines(output) == []
    assert "label agreement 100.0% (worst class 'dark' 100.0%)" in output


def test_an_old_study_record_without_per_class_figures_still_reads(world):
    data = {
        "base": {"generator": "ddpm", "num_synthetic": 6, "alpha": 0.8},
        "generators": {
            "ddpm": {"synthetic": "s", "num_images": 6, "label_agreement": 0.9, "quality": {}}
        },
        "runs": [],
    }
    figures = StudyRecord.from_json(data).generators["ddpm"]
    assert figures.label_agreement_per_class is None and figures.worst_class is None


def test_shards_show_puts_the_worst_class_first(world, tmp_path):
    from sio.shards.show import audit_order, sample_grid

    syn = tmp_path / "syn"
    shutil.copytree(world.good, syn)
    assert audit_order(syn) == ([0, 1, 2], list(CLASSES))  # no audit: class order
    record = {"metric": "audit", "label_agreement_per_class": {"dark": 1.0, "mid": 0.9}}
    record["label_agreement_per_class"]["light"] = 0.25
    record_quality(syn, record)
    order, names = audit_order(syn)
    assert order == [2, 1, 0] and names == ["light 25%", "mid 90%", "dark 100%"]
    plain, worst_first = sample_grid(syn, 2, 1), sample_grid(syn, 2, 1, order)
    rows = np.split(plain[1:], 3)  # a 1-pixel gap above each 9-pixel row
    assert np.array_equal(np.concatenate([rows[k] for k in order]), worst_first[1:])
    result = invoke("shards", "show", syn, "--out", tmp_path / "grid.png")
    assert result.exit_code == 0, result.output
    # an audit of other shards (the set was regenerated since) is not used
    audit_file = syn / "quality" / "audit.json"
    stale = {**json.loads(audit_file.read_text()), "shards_sha256": "0" * 64}
    audit_file.write_text(json.dumps(stale))
    assert audit_order(syn) == ([0, 1, 2], list(CLASSES))


def test_a_hostile_audit_file_and_class_name_give_bounded_rows(tmp_path):
    """``sio shards show`` on a set someone else wrote: a NaN or out-of-range agreement is not
    a figure, and a 100,000-character class name is a row label of bounded width."""
    from sio.shards.show import audit_order
    from sio.shardset import ShardSetWriter, read_manifest

    names = ("a", "b", "x" * 100_000)
    folder = tmp_path / "set"
    with ShardSetWriter(
        folder, kind="synthetic", name="s", image_size=(4, 4), channels=1,
        class_names=names, shard_size=3,
    ) as writer:  # fmt: skip
        for i in range(3):
            writer.write(f"s{i}", np.full((4, 4), i, np.uint8), i, {})
    audit = {
        "shards_sha256": read_manifest(folder).content_sha256,
        "label_agreement_per_class": {"a": float("nan"), "b": 0.5, names[2]: 7.0},
    }
    (folder / "quality").mkdir()
    (folder / "quality" / "audit.json").write_text(json.dumps(audit))
    order, rows = audit_order(folder)
    assert order == [1, 0, 2] and rows[0] == "b 50%" and rows[1] == "a"
    assert len(rows[2]) <= 100 and rows[2].startswith("xxx")
