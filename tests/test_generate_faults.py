"""Generation cannot go wrong quietly: strict checkpoints, one-line errors naming the file,
reruns that check what is on disk, one writer per folder, and images that are a function of
their index alone (batch size, shard size and ranks change no pixel)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from sio.generate import Job, generate_shard_set, load_generator, run_job
from sio.generate.config import (
    BigGANSettings,
    GenerateConfig,
    GeneratorConfig,
    LabelConfig,
    SamplerConfig,
)
from sio.generate.ddpm.model import DDPMGenerator
from sio.generate.job import GenerationError
from sio.generate.resume import FolderLock
from sio.shardset import iter_chunks, read_manifest, verify_shard_set
from sio.train.models import build_classifier
from sio.train.trainer import CHECKPOINT_FORMAT

from .shardsets import flat_set

pytestmark = pytest.mark.usefixtures("one_thread")
BIN = Path(sys.executable).parent
TINY = GeneratorConfig(sampler=SamplerConfig(steps=2))


def small_job(**changes) -> GenerateConfig:
    fields = dict(num_images=10, batch_size=4, shard_size=4, network_batch=4, seed=5)
    return GenerateConfig(**{**fields, **changes})


def images_of(folder) -> np.ndarray:
    return np.concatenate([chunk.images for chunk in iter_chunks(folder)])


def hashes(manifest) -> list[str]:
    return [s["sha256"] for s in manifest["shards"]]


# --- strict checkpoints and named errors ------------------------------------------------------


@pytest.fixture
def unet_copy(tmp_path, cond_dir):
    import shutil

    folder = tmp_path / "ddpm"
    shutil.copytree(cond_dir, folder)
    return folder


def test_missing_weight_keys_are_an_error_naming_file_and_keys(unet_copy):
    from safetensors.torch import load_file, save_file

    weights = unet_copy / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["conv_out.bias"]
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"safetensors: .*missing keys \['conv_out\.bias'\]"):
        DDPMGenerator.from_pretrained(unet_copy)


def test_config_without_class_embeds_is_not_silently_unconditional(unet_copy):
    config_path = unet_copy / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    del config["num_class_embeds"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unexpected keys \['class_embedding\.weight'\]"):
        DDPMGenerator.from_pretrained(unet_copy)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("unet/config.json", b"{not json", r"unet/config\.json: not a readable UNet config"),
        (
            "scheduler/scheduler_config.json",
            b"[1, 2",
            r"scheduler_config\.json: not a readable scheduler config",
        ),
        (
            "unet/diffusion_pytorch_model.safetensors",
            None,
            r"diffusion_pytorch_model\.safetensors: not a readable weights file",
        ),
        ("sio_generator.json", b"", r"sio_generator\.json: not a readable sio generator file"),
    ],
)
def test_broken_ddpm_files_are_named(unet_copy, name, content, message):
    path = unet_copy / name
    path.write_bytes(path.read_bytes()[:100] if content is None else content)  # None: truncate
    with pytest.raises(ValueError, match=message):
        DDPMGenerator.from_pretrained(unet_copy)


def write_biggan(folder: Path, output_dim=16) -> Path:
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    config = BigGANConfig(
        output_dim=output_dim,
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
        torch.save(BigGAN(config).state_dict(), folder / "pytorch_model.bin")
    return folder


BIGGAN = BigGANSettings(truncation=0.5, imagenet_classes=(1, 4, 7))


def biggan_config(folder) -> GeneratorConfig:
    return GeneratorConfig(name="biggan", path=str(folder), biggan=BIGGAN)


@pytest.mark.parametrize(
    ("name", "mangle", "message"),
    [
        ("pytorch_model.bin", lambda b: b[: len(b) // 2], "pytorch_model.bin: not a readable"),
        ("pytorch_model.bin", lambda b: b"garbage" * 10, "pytorch_model.bin: not a readable"),
        ("config.json", lambda b: b"{", r"config\.json: not a BigGAN config"),
    ],
)
def test_broken_biggan_files_are_named(tmp_path, name, mangle, message):
    folder = write_biggan(tmp_path / "biggan")
    (folder / name).write_bytes(mangle((folder / name).read_bytes()))
    with pytest.raises(ValueError, match=message):
        load_generator(biggan_config(folder), folder)


# --- the CLI: sizes and classes from the real set, classifiers that fit -------------------------


def checkpoint(path: Path, image_size, names=("cat", "dog", "eel")) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_classifier(
            "small_cnn", in_channels=3, num_classes=len(names), mean=[0.5] * 3, std=[0.3] * 3
        )
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": "small_cnn",
        "channels": 3,
        "class_names": list(names),
        "image_size": [image_size, image_size],
        "pixel_mean": [0.5] * 3,
        "pixel_std": [0.3] * 3,
        "model_state": model.state_dict(),
        "alpha": 1.0,
        "seed": 0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def sio_generate(*args):
    from click.testing import CliRunner

    from sio.cli import cli

    return CliRunner().invoke(cli, ["generate", *args, "--device", "cpu"])


@pytest.fixture
def biggan_dir(tmp_path):
    folder = write_biggan(tmp_path / "biggan")
    (tmp_path / "pipeline.yaml").write_text(
        f"generator:\n  name: biggan\n  path: {folder}\n  biggan:\n    truncation: 0.5\n"
        "    imagenet_classes: [1, 4, 7]\n"
        "generate:\n  batch_size: 4\n  shard_size: 4\n  network_batch: 4\n  num_images: 6\n"
    )
    return folder


def test_biggan_takes_its_size_and_classes_from_the_real_set(tmp_path, biggan_dir):
    real = flat_set(tmp_path / "real", ("cat", "dog", "eel"), 3, step=20)
    config = ["--config", str(tmp_path / "pipeline.yaml")]
    base = [*config, "--generator-dir", str(biggan_dir)]
    result = sio_generate(*base, "--out", str(tmp_path / "none"))
    assert result.exit_code != 0 and "--classes-from REAL_SET" in result.output
    result = sio_generate(*base, "--out", str(tmp_path / "syn"), "--classes-from", str(real))
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "syn")
    assert manifest.image_size == (8, 8) and manifest.class_names == ("cat", "dog", "eel")
    # a classifier trained on 16x16 images is refused for an 8x8 set, naming its file
    judge = checkpoint(tmp_path / "judge16" / "checkpoint.pt", 16)
    result = sio_generate(
        *base,
        "--out",
        str(tmp_path / "o2"),
        "--classes-from",
        str(real),
        "--classifier",
        str(judge),
    )
    assert result.exit_code != 0
    assert f"{judge}: trained on 16x16 images" in result.output
    other = checkpoint(tmp_path / "judge_other" / "checkpoint.pt", 8, names=("a", "b", "c"))
    result = sio_generate(
        *base,
        "--out",
        str(tmp_path / "o3"),
        "--classes-from",
        str(real),
        "--classifier",
        str(other),
    )
    assert result.exit_code != 0 and "trained on 3 classes ['a', 'b', 'c']" in result.output
    # without --classes-from, the classifier's recorded size and classes are used
    fits = checkpoint(tmp_path / "judge8" / "checkpoint.pt", 8)
    result = sio_generate(*base, "--out", str(tmp_path / "o4"), "--classifier", str(fits))
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "o4").image_size == (8, 8)
    # a missing biggan folder does not suggest the built-in DDPM
    result = sio_generate(
        *config, "--generator-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o5")
    )
    assert result.exit_code != 0 and "no biggan generator folder" in result.output
    assert "DDPM" not in result.output


# --- reruns check what is on disk ---------------------------------------------------------------


def test_rerun_regenerates_deleted_corrupt_and_unrecorded_shards(tmp_path, cond_dir):
    out = tmp_path / "syn"
    first = generate_shard_set(cond_dir, out, small_job(), TINY)
    (out / "shard-000000.tar").unlink()
    data = bytearray((out / "shard-000001.tar").read_bytes())
    data[700] ^= 0xFF
    (out / "shard-000001.tar").write_bytes(bytes(data))
    (out / ".progress" / "shard-000002.tar.json").write_bytes(b"")  # a zero-length record
    again = generate_shard_set(cond_dir, out, small_job(), TINY)
    assert hashes(again) == hashes(first) and verify_shard_set(out) == 10


def test_another_classifier_is_refused_on_resume(tmp_path, cond_dir):
    def judge(seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_classifier(
                "small_cnn", in_channels=1, num_classes=3, mean=[0.5], std=[0.25]
            ).eval()

    out = tmp_path / "syn"
    first = generate_shard_set(cond_dir, out, small_job(), TINY, classifier=judge(0))
    assert first["provenance"]["classifier_sha256"].startswith("state:")
    with pytest.raises(ValueError, match=r"different generation job \(changed: classifier_sha256"):
        generate_shard_set(cond_dir, out, small_job(), TINY, classifier=judge(1))
    # encode_threads changes no byte: a resume with other threads goes on
    again = generate_shard_set(
        cond_dir, out, small_job(encode_threads=3), TINY, classifier=judge(0)
    )
    assert hashes(again) == hashes(first)


def test_a_no_op_rerun_keeps_the_measured_quality(tmp_path, cond_dir):
    from sio.generate.quality import read_quality, record_quality

    out = tmp_path / "syn"
    generate_shard_set(cond_dir, out, small_job(), TINY)
    published = (out / "manifest.json").read_bytes()
    record = {"metric": "fd_classifier", "value": 1.5}
    assert record_quality(out, record)
    again = generate_shard_set(cond_dir, out, small_job(), TINY)
    assert (out / "manifest.json").read_bytes() == published  # never rewritten
    assert "quality" not in again["provenance"]
    assert read_quality(out)["fd_classifier"]["value"] == 1.5
    resized = generate_shard_set(cond_dir, out, small_job(num_images=12), TINY)
    assert "quality" not in resized["provenance"]
    assert read_quality(out) == {}  # other shards: the old figure is stale


# --- one writer per folder; what a killed writer left -------------------------------------------


def test_a_second_writer_is_refused_by_name(tmp_path, cond_dir):
    out = tmp_path / "syn"
    holder = subprocess.Popen(
        [
            str(BIN / "python"),
            "-c",
            "import sys, time; from pathlib import Path;"
            "from sio.generate.resume import FolderLock;"
            f"lock = FolderLock(Path({str(out)!r}), 'other-run'); lock.acquire();"
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GenerationError, match=rf"another job is writing .*pid {holder.pid} "):
            generate_shard_set(cond_dir, out, small_job(), TINY)
    finally:
        holder.kill()
        holder.wait()
    assert generate_shard_set(cond_dir, out, small_job(), TINY)["num_samples"] == 10


def test_the_next_writer_removes_stale_temporaries(tmp_path, cond_dir):
    out = tmp_path / "syn"
    generate_shard_set(cond_dir, out, small_job(num_images=16), TINY)
    stale = [
        out / "manifest.json.0123abcd.tmp",
        out / ".progress" / "shard-000001.tar.json.89ab.tmp",
        out / "shard-000003.tar.tmp",  # beyond the new, smaller size
    ]
    for path in stale:
        path.write_bytes(b"left by a kill")
    generate_shard_set(cond_dir, out, small_job(num_images=8), TINY)
    assert not any(path.exists() for path in stale)
    lock = FolderLock(out, "me")
    lock.acquire()
    lock.release()


# --- ranks: whichever completes the set writes the manifest; rank 0 names what it waits for ----


def test_the_last_rank_writes_the_manifest_and_rank_0_times_out_naming_shards(tmp_path, cond_dir):
    generator = load_generator(TINY, cond_dir)
    job = Job(generator, small_job(), ("a", "b", "c"))
    out = tmp_path / "syn"
    with pytest.raises(GenerationError, match=r"waiting for 1 shards \(shard-000001\.tar\)"):
        run_job(job, out, rank=0, world_size=2, wait_for_all=True, wait_timeout=0.3)
    assert not (out / "manifest.json").exists()
    manifest = run_job(job, out, rank=1, world_size=2)  # rank 1 finishes last: it writes it
    whole = run_job(Job(generator, small_job(), ("a", "b", "c")), tmp_path / "whole")
    assert manifest == whole | {"name": "syn"}


# --- every image a function of its index ------------------------------------------------------


def test_batch_and_shard_size_change_no_pixel(tmp_path, cond_dir):
    generator = load_generator(TINY, cond_dir)

    def run(name, **changes):
        config = GenerateConfig(
            **{"num_images": 1000, "seed": 3, "encoding": "records", "network_batch": 50, **changes}
        )
        return run_job(Job(generator, config, ("a", "b", "c")), tmp_path / name)

    reference = run("b500-s1000", batch_size=500, shard_size=1000)
    run("b7-s100", batch_size=7, shard_size=100)
    base = images_of(tmp_path / "b500-s1000")
    assert len(base) == 1000 and len(np.unique(base.reshape(1000, -1), axis=0)) > 100
    np.testing.assert_array_equal(images_of(tmp_path / "b7-s100"), base)
    # a slice regenerated alone (images 300..399: shard 3 of 100) holds the same pixels
    run("slice", batch_size=30, shard_size=100, num_images=400)
    np.testing.assert_array_equal(images_of(tmp_path / "slice")[300:], base[300:400])
    assert reference["class_counts"] == [334, 333, 333]


class PixelJudge(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 3)

    def forward(self, images):
        return self.fc((images.float() / 255 - 0.5).flatten(1)) * 20


def test_pseudo_labels_do_not_depend_on_batch_or_shard_size(tmp_path):
    folder = tmp_path / "uncond"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        ).save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        judge = PixelJudge().eval()

    names = ("x", "y", "z")

    def run(name, batch, shard):
        config = GenerateConfig(
            num_images=12, batch_size=batch, shard_size=shard, network_batch=8, seed=2
        )
        return generate_shard_set(
            folder, tmp_path / name, config, TINY, classifier=judge, class_names=names
        )

    a, b = run("a", 3, 4), run("b", 12, 12)
    assert a["class_counts"] == b["class_counts"] == [4, 4, 4]
    np.testing.assert_array_equal(images_of(tmp_path / "a"), images_of(tmp_path / "b"))
    labels = [np.concatenate([c.labels for c in iter_chunks(tmp_path / n)]) for n in "ab"]
    np.testing.assert_array_equal(*labels)
    # a classifier that is never confident enough: the give-up names the images and, without a
    # quota, does not suggest turning the quota off
    with torch.no_grad():
        judge.fc.weight.zero_()
        judge.fc.bias.zero_()
    free = GeneratorConfig(
        sampler=SamplerConfig(steps=2), labels=LabelConfig(quota=False, min_confidence=0.5)
    )
    config = GenerateConfig(num_images=2, batch_size=4, shard_size=2, network_batch=4)
    with pytest.raises(GenerationError) as err:
        generate_shard_set(
            folder, tmp_path / "c", config, free, classifier=judge, class_names=names
        )
    message = str(err.value)
    assert "images 0..1: after 100 candidates" in message and "any class: 2" in message
    assert message.endswith("lower labels.min_confidence")
