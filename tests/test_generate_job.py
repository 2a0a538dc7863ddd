"""The generation job: pseudo-labels and quotas, hub layouts, BigGAN, ranges, resume after a
kill, torchrun ranks and S3 output, all with tiny models built here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from sio.core.seeding import derive_seed
from sio.generate import Job, generate_shard_set, load_generator, run_job
from sio.generate.config import (
    BigGANSettings,
    GenerateConfig,
    GeneratorConfig,
    LabelConfig,
    SamplerConfig,
)
from sio.shardset import iter_samples, read_manifest, verify_shard_set

BIN = Path(sys.executable).parent
TINY_SAMPLER = SamplerConfig(steps=2)


@pytest.fixture(scope="module")
def uncond_dir(tmp_path_factory):
    """An unconditional UNet in the hub's flat layout (like google/ddpm-cifar10-32)."""
    folder = tmp_path_factory.mktemp("uncond")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        )
    unet.save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)
    return folder


class PixelClassifier(torch.nn.Module):
    """A fixed random linear classifier on the pixels: different images, different classes."""

    def __init__(self, bias):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.fc = torch.nn.Linear(64, len(bias))
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(len(bias), 64, generator=generator) * 3)
            self.fc.bias.copy_(torch.tensor(bias))

    def forward(self, images):
        return self.fc((images.float() / 255 - 0.5).flatten(1))


def classifier_with_bias(bias):
    return PixelClassifier(bias).eval()


def read_back(folder):
    images, labels, metas = zip(*iter_samples(folder), strict=True)
    return np.stack(images), list(labels), list(metas)


def shard_hashes(manifest):
    return [s["sha256"] for s in manifest["shards"]]


def test_unconditional_hub_layout_gets_pseudo_labels_with_quota(tmp_path, uncond_dir):
    classifier = classifier_with_bias([0.0, 0.0, 0.0])
    job = GenerateConfig(num_images=12, batch_size=6, shard_size=6, network_batch=6, seed=1)
    generator = GeneratorConfig(sampler=TINY_SAMPLER)
    manifest = generate_shard_set(
        uncond_dir,
        tmp_path / "syn",
        job,
        generator,
        classifier=classifier,
        class_names=("x", "y", "z"),
    )
    assert verify_shard_set(tmp_path / "syn") == 12
    assert "quality" not in manifest["provenance"]  # no label agreement for pseudo-labels
    assert manifest["provenance"]["labels"] == {
        "mode": "pseudo",
        "min_confidence": 0.0,
        "quota": True,
        "block": 1000,
    }
    images, labels, metas = read_back(tmp_path / "syn")
    # quota: each 6-image shard holds exactly two images of each class
    assert [labels[:6].count(c) for c in range(3)] == [2, 2, 2]
    assert [labels[6:].count(c) for c in range(3)] == [2, 2, 2]
    with torch.no_grad():
        probs = classifier(torch.from_numpy(images)).softmax(1)
    # every label is the classifier's argmax on the stored image, with its confidence recorded
    assert labels == probs.argmax(1).tolist()
    for meta, p in zip(metas, probs.max(1).values.tolist(), strict=True):
        assert meta["pseudo_label_confidence"] == pytest.approx(p, abs=1e-6)


def test_quota_that_cannot_fill_names_the_class(tmp_path, uncond_dir):
    classifier = classifier_with_bias([1000.0, -1000.0, -1000.0])  # always predicts class 0
    job = GenerateConfig(num_images=3, batch_size=3, shard_size=3, network_batch=3)
    with pytest.raises(ValueError, match=r"y: 1, z: 1\); lower labels.min_confidence or turn off"):
        generate_shard_set(
            uncond_dir,
            tmp_path / "syn",
            job,
            GeneratorConfig(sampler=TINY_SAMPLER),
            classifier=classifier,
            class_names=("x", "y", "z"),
        )
    # without a quota the same classifier labels everything as class 0
    manifest = generate_shard_set(
        uncond_dir,
        tmp_path / "free",
        job,
        GeneratorConfig(sampler=TINY_SAMPLER, labels=LabelConfig(quota=False)),
        classifier=classifier,
        class_names=("x", "y", "z"),
    )
    assert manifest["class_counts"] == [3, 0, 0]


def test_unconditional_without_classifier_is_refused(tmp_path, uncond_dir):
    with pytest.raises(ValueError, match="classifier"):
        generate_shard_set(
            uncond_dir,
            tmp_path / "syn",
            GenerateConfig(num_images=2),
            GeneratorConfig(sampler=TINY_SAMPLER),
        )


def write_biggan(folder: Path, state=None):
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    config = BigGANConfig(
        output_dim=16,
        z_dim=8,
        class_embed_dim=8,
        channel_width=4,
        num_classes=10,
        layers=[(True, 16, 8), (False, 8, 4), (True, 4, 2), (False, 2, 1)],
        attention_layer_position=2,
    )
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(vars(config)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BigGAN(config)
    torch.save(state if state is not None else model.state_dict(), folder / "pytorch_model.bin")
    return model


def test_biggan_from_folder_with_class_map(tmp_path):
    model = write_biggan(tmp_path / "biggan")
    generator = GeneratorConfig(
        name="biggan",
        path=str(tmp_path / "biggan"),
        biggan=BigGANSettings(truncation=0.5, imagenet_classes=(7, 3)),
    )
    job = GenerateConfig(num_images=4, batch_size=4, shard_size=4, network_batch=4, seed=2)
    manifest = generate_shard_set(
        tmp_path / "biggan",
        tmp_path / "syn",
        job,
        generator,
        class_names=("cat", "dog"),
        image_size=8,
    )
    assert manifest["image_size"] == [8, 8] and manifest["channels"] == 3
    images, labels, metas = read_back(tmp_path / "syn")
    assert labels == [0, 1, 0, 1]
    # recompute image 0 by hand: z from its own stream by the inverse normal CDF of uniforms
    # truncated to [-2, 2], one-hot of ImageNet class 7, resize to 8
    from scipy.special import ndtr, ndtri

    u = torch.rand(
        8, generator=torch.Generator().manual_seed(metas[0]["seed"]), dtype=torch.float64
    )
    low = ndtr(-2.0)
    z = torch.from_numpy(ndtri(low + u.numpy() * (1 - 2 * low))).float()[None] * 0.5
    assert metas[0]["seed"] == derive_seed(2, "image", 0)
    one_hot = torch.nn.functional.one_hot(torch.tensor([7]), 10).float()
    with torch.no_grad():
        out = model.eval()(z, one_hot, 0.5)
    small = torch.nn.functional.interpolate(out, size=(8, 8), mode="bilinear", antialias=True)
    expected = ((small.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(images[:1], expected)


def test_biggan_mismatched_and_missing_checkpoints(tmp_path):
    model = write_biggan(tmp_path / "ok")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("embeddings")}
    write_biggan(tmp_path / "bad", state=state)
    generator = GeneratorConfig(
        name="biggan", path="x", biggan=BigGANSettings(imagenet_classes=(1,))
    )
    job = GenerateConfig(num_images=1)
    with pytest.raises(ValueError, match=r"(?s)pytorch_model\.bin does not match.*embeddings"):
        generate_shard_set(tmp_path / "bad", tmp_path / "o1", job, generator)
    (tmp_path / "ok" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        generate_shard_set(tmp_path / "ok", tmp_path / "o2", job, generator)


def test_shard_ranges_resume_to_the_same_set(tmp_path, cond_dir):
    job = GenerateConfig(num_images=10, batch_size=3, shard_size=4, network_batch=3, seed=5)
    generator = GeneratorConfig(sampler=TINY_SAMPLER)
    whole = generate_shard_set(cond_dir, tmp_path / "whole", job, generator)
    parts = tmp_path / "parts"
    assert generate_shard_set(cond_dir, parts, job, generator, shards=range(1, 3)) is None
    assert not (parts / "manifest.json").exists()
    assert sorted(p.name for p in parts.glob("*.tar")) == ["shard-000001.tar", "shard-000002.tar"]
    (parts / "shard-000000.tar.tmp").write_bytes(b"half a shard from a crash")
    resumed = generate_shard_set(cond_dir, parts, job, generator)
    assert shard_hashes(resumed) == shard_hashes(whole)
    assert resumed == whole | {"name": "parts"}
    assert not list(parts.glob("*.tmp"))
    with pytest.raises(ValueError, match="different generation job"):
        generate_shard_set(cond_dir, parts, GenerateConfig(num_images=10, seed=6), generator)


def cli_generate(cond_dir, out, *extra, env=None, runner=None):
    args = [
        *(runner or [str(BIN / "python"), "-m", "sio"]),
        "generate",
        "--generator-dir",
        str(cond_dir),
        "--out",
        str(out),
        "--num-images",
        "240",
        "--shard-size",
        "4",
        "--batch-size",
        "4",
        "--network-batch",
        "4",
        "--seed",
        "3",
        "--device",
        "cpu",
        *extra,
    ]
    return subprocess.Popen(
        args,
        # torchrun runs each rank with one thread; float sums (and so a rare pixel) depend on
        # the thread count, so every run here uses one thread to compare bytes
        env={**os.environ, "SIO_POLL_S": "0.1", "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cond_dir):
    out = tmp_path_factory.mktemp("reference") / "syn"
    process = cli_generate(cond_dir, out)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    return read_manifest(out).to_json()


@pytest.mark.slow
def test_killed_run_resumes_to_identical_checksums(tmp_path, cond_dir, reference):
    out = tmp_path / "syn"
    process = cli_generate(cond_dir, out)
    deadline = time.monotonic() + 60
    while not (out / ".progress" / "shard-000002.tar.json").exists():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((out / ".progress").glob("shard-*.json")))
    assert 3 <= done < 60, "the kill must land mid-run"
    assert not (out / "manifest.json").exists()
    process = cli_generate(cond_dir, out)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert shard_hashes(read_manifest(out).to_json()) == shard_hashes(reference)
    assert verify_shard_set(out) == 240


@pytest.mark.slow
def test_torchrun_ranks_write_disjoint_shards_of_the_same_set(tmp_path, cond_dir, reference):
    out = tmp_path / "syn"
    # --standalone: torchrun picks a free port, so no fixed port can collide
    runner = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "sio"]
    process = cli_generate(cond_dir, out, runner=runner)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output
    manifest = read_manifest(out).to_json()
    assert shard_hashes(manifest) == shard_hashes(reference)
    for i in range(60):
        record = json.loads((out / ".progress" / f"shard-{i:06d}.tar.json").read_text())
        assert record["rank"] == i % 2


def test_generate_to_s3(tmp_path, cond_dir, s3_endpoint):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="synth")
    job = GenerateConfig(num_images=10, batch_size=4, shard_size=4, network_batch=4, seed=5)
    generator = GeneratorConfig(sampler=TINY_SAMPLER)
    local = generate_shard_set(cond_dir, tmp_path / "local", job, generator)
    remote = generate_shard_set(
        cond_dir, "s3://synth/sets/syn", job, generator, staging=tmp_path / "staging"
    )
    assert shard_hashes(remote) == shard_hashes(local)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="synth")["Contents"]}
    assert {f"sets/syn/shard-00000{i}.tar" for i in range(3)} <= keys
    assert "sets/syn/manifest.json" in keys
    manifest = json.loads(
        client.get_object(Bucket="synth", Key="sets/syn/manifest.json")["Body"].read()
    )
    assert manifest == remote
    body = client.get_object(Bucket="synth", Key="sets/syn/shard-000001.tar")["Body"].read()
    assert body == (tmp_path / "local" / "shard-000001.tar").read_bytes()
    assert not list((tmp_path / "staging").glob("*.tar"))  # uploaded, then removed locally


def test_records_encoding_holds_the_same_samples_as_png(tmp_path, cond_dir):
    """A records job converted to PNG gives the PNG job's shards byte for byte."""
    from sio.shardset import convert_shard_set

    generator = GeneratorConfig(sampler=TINY_SAMPLER)
    png_job = GenerateConfig(num_images=10, batch_size=3, shard_size=4, network_batch=3, seed=4)
    records_job = GenerateConfig(**{**vars(png_job), "encoding": "records"})
    png = generate_shard_set(cond_dir, tmp_path / "png", png_job, generator)
    records = generate_shard_set(cond_dir, tmp_path / "records", records_job, generator)
    assert records["encoding"] == "records" and "encoding" not in png
    for field in ("class_counts", "pixel_mean", "pixel_std", "num_samples"):
        assert records[field] == png[field], field
    assert verify_shard_set(tmp_path / "records") == 10
    back = convert_shard_set(tmp_path / "records", tmp_path / "back", "png")
    assert [s.sha256 for s in back.shards] == shard_hashes(png)


@pytest.mark.slow
def test_bf16_autocast_and_compile_run_on_this_device(tmp_path, cond_dir):
    """The GPU options are device-agnostic: bf16 autocast and torch.compile on the CPU give the
    fp32 images back (bf16 within a few grey levels, compile within one)."""
    generator = GeneratorConfig(sampler=TINY_SAMPLER)
    base = GenerateConfig(num_images=12, batch_size=6, shard_size=6, network_batch=6, seed=3)
    sets = {}
    for name, changes in {
        "fp32": {},
        "bf16": {"precision": "bf16"},
        "compiled": {"compile": True},
    }.items():
        job = GenerateConfig(**{**vars(base), **changes})
        manifest = generate_shard_set(cond_dir, tmp_path / name, job, generator)
        assert manifest["provenance"]["generate"]["precision"] == job.precision
        sets[name] = read_back(tmp_path / name)[0].astype(int)
    bf16_error = np.abs(sets["bf16"] - sets["fp32"])
    assert 0 < bf16_error.mean() < 2 and bf16_error.max() <= 16
    assert np.abs(sets["compiled"] - sets["fp32"]).max() <= 1


def test_a_resized_job_keeps_its_complete_shards(tmp_path, cond_dir):
    """Growing 10 -> 16 images regenerates only the old partial last shard and the new one;
    shrinking to 8 generates nothing; each result equals a fresh job of that size."""
    generator = GeneratorConfig(sampler=TINY_SAMPLER)

    def job(num):
        return Job(
            load_generator(generator, cond_dir),
            GenerateConfig(num_images=num, batch_size=4, shard_size=4, network_batch=4, seed=9),
            ("a", "b", "c"),
        )

    for num, generated in ((10, 10), (16, 8), (8, 0)):
        resized = job(num)
        manifest = run_job(resized, tmp_path / "resized")
        assert resized.last_timing["images"] == generated
        fresh = run_job(job(num), tmp_path / f"fresh{num}")
        assert manifest == fresh | {"name": "resized"}
    with pytest.raises(ValueError, match="different generation job"):
        other = job(8)
        other.config = GenerateConfig(
            num_images=8, batch_size=4, shard_size=4, network_batch=4, seed=10
        )
        run_job(other, tmp_path / "resized")
