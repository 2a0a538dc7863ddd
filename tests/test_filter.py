"""``generator.labels.filter: agree``: a conditional generator's image is the first of its
candidates the real-trained classifier agrees with. The kept set is a function of (weights,
sampler, classifier, seed, index) alone, its bound names the class, and the audit and the
warning judge the candidates drawn, not the kept images (which agree by design)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from sio.generate import generate_shard_set
from sio.generate.config import GenerateConfig, GeneratorConfig, LabelConfig
from sio.generate.quality import read_quality
from sio.shardset import iter_samples, read_manifest
from sio.train import load_classifier

from .test_audit import BrightnessGenerator, install_generator, invoke, real_and_judge

NOISY = 0  # class 'dark': a seeded share of its images look like class 'light'
LIGHT = 2


class HalfNoiseGenerator(BrightnessGenerator):
    """BrightnessGenerator whose class 'dark' comes out as a 'light' image for a seeded
    ``noise_fraction`` of its images (one draw of the image's own stream decides)."""

    noise_fraction = 0.5

    def describe(self) -> dict:
        return {"noise_fraction": self.noise_fraction}

    def _sample_rows(self, labels, seeds):
        from sio.generate.base import seeded_generators

        rows = []
        for label, generator in zip(labels.tolist(), seeded_generators(seeds), strict=True):
            noisy = float(torch.rand((), generator=generator)) < self.noise_fraction
            drawn = LIGHT if label == NOISY and noisy else label
            rows.append(40 + 80 * drawn + torch.randint(-15, 16, (1, 8, 8), generator=generator))
        return torch.stack(rows).to(torch.uint8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("filter")
    real, judge = real_and_judge(root)
    return SimpleNamespace(root=root, real=real, judge=judge)


@pytest.fixture()
def generator_dir(tmp_path, monkeypatch):
    return install_generator(tmp_path / "half-noise", monkeypatch, HalfNoiseGenerator)


def generate_cli(world, tmp_path, generator_dir, name, labels, *extra):
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"generator": {"labels": labels}}))
    out = tmp_path / name
    result = invoke(
        "generate", "--config", config, "--generator-dir", generator_dir,
        "--classifier", world.judge, "--classes-from", world.real, "--out", out,
        "--num", 60, "--shard-size", 30, "--batch-size", 30, "--network-batch", 10,
        "--device", "cpu", *extra,
    )  # fmt: skip
    return out, result


def samples(folder) -> dict:
    """image index -> (image bytes, label, provenance) of every sample of a set."""
    return {
        meta["index"]: (image.tobytes(), label, meta) for image, label, meta in iter_samples(folder)
    }


def judge_labels(world, folder) -> tuple[list, list]:
    classifier, _ = load_classifier(world.judge)
    images, labels = [], []
    for image, label, _ in iter_samples(folder):
        images.append(torch.from_numpy(image.copy()))
        labels.append(label)
    with torch.no_grad():
        predicted = classifier(torch.stack(images)).argmax(1).tolist()
    return predicted, labels


def test_the_filter_keeps_agreeing_images_and_the_audit_judges_the_candidates(
    world, tmp_path, generator_dir
):
    plain, result = generate_cli(world, tmp_path, generator_dir, "plain", {})
    assert result.exit_code == 0, result.output
    kept, result = generate_cli(world, tmp_path, generator_dir, "kept", {"filter": "agree"})
    assert result.exit_code == 0, result.output

    predicted, labels = judge_labels(world, kept)
    assert predicted == labels  # every image kept agrees with the classifier
    assert np.bincount(labels).tolist() == [20, 20, 20]  # the balanced quota, filled
    before, after = samples(plain), samples(kept)
    assert before.keys() == after.keys()
    refused = 0
    for key, (image, label, meta) in after.items():
        assert label == before[key][1]
        if meta["candidate"] == 0:  # candidate 0 is the unfiltered image
            assert image == before[key][0] and meta["seed"] == before[key][2]["seed"]
        else:
            assert label == NOISY and image != before[key][0]
        refused += meta["candidate"]
    assert refused > 0  # about half the 'dark' candidates look 'light'

    quality = read_manifest(kept).provenance["quality"]
    assert quality["filter"] == "agree"
    assert quality["candidates_drawn"] == 60 + refused
    per_class = quality["candidate_agreement_per_class"]
    assert per_class["mid"] == per_class["light"] == 1.0
    assert per_class["dark"] == pytest.approx(20 / (20 + refused))
    assert quality["label_agreement"] == pytest.approx(60 / (60 + refused))
    # the audit and the warning judge what the generator does, not the images kept
    record = read_quality(kept)["audit"]
    assert record["label_agreement_per_class"] == per_class
    assert record["labels"].startswith("filtered")
    assert "SIO is likely to hurt far-OOD: class 'dark' agrees" in result.output


def test_the_kept_set_is_the_same_for_any_batch_shard_slicing_and_rank_count(
    world, tmp_path, generator_dir
):
    labels = {"filter": "agree"}
    whole, result = generate_cli(world, tmp_path, generator_dir, "whole", labels)
    assert result.exit_code == 0, result.output
    odd, result = generate_cli(world, tmp_path, generator_dir, "odd", labels, "--batch-size", 7)
    assert result.exit_code == 0, result.output
    assert samples(odd) == samples(whole)

    classifier, info = load_classifier(world.judge)
    config = GenerateConfig(num_images=60, shard_size=30, batch_size=11, network_batch=10)
    generator = GeneratorConfig(name="ddpm", labels=LabelConfig(filter="agree"))
    ranks = tmp_path / "ranks"
    for rank in (1, 0):  # rank 0 publishes once both shards are there
        manifest = generate_shard_set(
            generator_dir, ranks, config, generator,
            classifier=classifier, classifier_path=world.judge, classifier_sha256=info.sha256,
            classes_from=world.real, rank=rank, world_size=2,
        )  # fmt: skip
    assert manifest is not None
    assert samples(ranks) == samples(whole)
    assert [s["sha256"] for s in manifest["shards"]] == [
        s.sha256 for s in read_manifest(whole).shards
    ]


def test_a_class_the_classifier_never_agrees_with_stops_the_job_naming_it(
    world, tmp_path, generator_dir, monkeypatch
):
    monkeypatch.setattr(HalfNoiseGenerator, "noise_fraction", 1.0)
    out, result = generate_cli(world, tmp_path, generator_dir, "never", {"filter": "agree"})
    assert result.exit_code != 0
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "(class 'dark'): the classifier labelled none of its 50 candidates 'dark'" in line
    assert "labels.filter: none" in line
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"min_confidence": 0.5}, "labels.min_confidence applies to a conditional generator"),
        ({"filter": "sometimes"}, "generator.labels.filter: expected one of ['none', 'agree']"),
    ],
)
def test_filter_settings_that_do_not_apply_are_refused(
    world, tmp_path, generator_dir, labels, message
):
    out, result = generate_cli(world, tmp_path, generator_dir, "refused", labels)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_a_high_confidence_filter_keeps_only_confident_images(world, tmp_path, generator_dir):
    out, result = generate_cli(
        world, tmp_path, generator_dir, "sure", {"filter": "agree", "min_confidence": 0.9}
    )
    assert result.exit_code == 0, result.output
    metas = [meta for _, _, meta in samples(out).values()]
    assert all(meta["classifier_prob"] >= 0.9 for meta in metas)
    job = json.loads((out / "manifest.json").read_text())["provenance"]
    assert job["labels"] == {"mode": "conditional", "filter": "agree", "min_confidence": 0.9}
