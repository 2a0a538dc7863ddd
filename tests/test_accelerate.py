"""The trainer's GPU options on the CPU (train/accelerate.py): ``device_augment`` gives bitwise
the weights of the loader's augmentation (several seeds, odd batches, alphas, streaming and
resident, every rank of a split batch); bf16 trains and changes the numbers; channels_last
stays close to the default and its checkpoint loads into a plain model; a compiled run's
checkpoint is the plain model's; a resume with another precision, layout or compile is refused,
one with device_augment flipped is not and repeats the uninterrupted run bitwise."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sio.core.config import ConfigError
from sio.shardset import ShardSetWriter, iter_batches, read_manifest
from sio.train import load_checkpoint, load_classifier, train_classifier
from sio.train import trainer as trainer_module
from sio.train.accelerate import DRAWS, PADDING, Acceleration
from sio.train.config import (
    CePlusSettings,
    OESettings,
    PixMixSettings,
    TrainConfig,
    VosSettings,
)
from sio.train.distributed import World
from sio.train.methods import METHODS
from sio.train.mixing import batch_counts
from sio.train.models import build_classifier
from sio.train.stream import MixedBatches, SharedEpoch
from sio.train.trainer import batch_spec, build_objective

CLASSES = ("left", "right", "top")
SIZE = 9  # odd, so an off-by-one in the crop index cannot hide in a symmetric image
CONFIG = TrainConfig(
    epochs=1,
    batch_size=7,  # odd: 7 x alpha is never a round split
    steps_per_epoch=4,
    num_workers=0,
    crop_padding=2,
    hflip=True,
    lr=0.05,
)


def pattern(label: int, rng) -> np.ndarray:
    """9x9 RGB: a bright band on the left, right or top, plus noise; easy to learn."""
    image = rng.integers(0, 90, (SIZE, SIZE, 3))
    band = [np.s_[:, :3], np.s_[:, -3:], np.s_[:3, :]][label]
    image[band] += 150
    return image.astype(np.uint8)


def write_set(folder, count, *, kind, seed):
    rng = np.random.default_rng(seed)
    with ShardSetWriter(
        folder,
        kind=kind,
        name=folder.name,
        image_size=(SIZE, SIZE),
        channels=3,
        class_names=CLASSES,
        shard_size=13,
    ) as writer:
        for i in range(count):
            label = i % len(CLASSES)
            writer.write(f"{kind}-{i:04d}", pattern(label, rng), label, {"source": kind})
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("accelerate")
    return {
        "real": write_set(root / "real", 45, kind="real", seed=0),
        "synthetic": write_set(root / "synthetic", 30, kind="synthetic", seed=1),
    }


def train(data, out, config, *, alpha=0.6, seed=0, **kwargs):
    synthetic = data["synthetic"] if alpha < 1 else None
    train_classifier(
        real=data["real"],
        synthetic=synthetic,
        alpha=alpha,
        seed=seed,
        config=config,
        out=out,
        **kwargs,
    )
    return torch.load(out / "checkpoint.pt", weights_only=True)


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def assert_bitwise(left: dict, right: dict):
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def assert_same_optimizer(left: dict, right: dict):
    for index, state in left["state"].items():
        for key, value in state.items():
            assert torch.equal(value, right["state"][index][key]), (index, key)


# ---------------------------------------------------------------- device_augment


@pytest.mark.parametrize("world_size", [1, 3])
@pytest.mark.parametrize("alpha", [0.6, 1.0, 0.3])
def test_deferred_batches_are_the_loaders_after_the_device_gather(data, alpha, world_size):
    """Every rank's batch with the draws shipped and the crop/flip done by Acceleration.batch is
    the loader's augmented batch, bitwise, for several seeds and steps of two epochs."""
    manifest = read_manifest(data["real"])
    counts = batch_counts(CONFIG.batch_size, alpha)
    synthetic = data["synthetic"] if counts[1] else None
    for seed in (0, 1, 5):
        for padding, hflip in ((2, True), (0, True), (3, False)):
            config = dataclasses.replace(CONFIG, crop_padding=padding, hflip=hflip)
            deferred = dataclasses.replace(config, device_augment=True)
            _, method = build_objective(config, manifest, seed, 4, "cpu")
            raw, augmented = [], []
            for rank in range(world_size):
                world = World(rank, world_size)
                specs = [
                    batch_spec(data["real"], synthetic, counts, seed, c, method, world=world)
                    for c in (config, deferred)
                ]
                for epoch in (0, 1):
                    plain = list(MixedBatches(specs[0], SharedEpoch(epoch)))
                    shipped = list(MixedBatches(specs[1], SharedEpoch(epoch)))
                    assert len(plain) == len(shipped) == 4
                    for before, after in zip(plain, shipped, strict=True):
                        assert DRAWS in after and DRAWS not in before
                        assert after[PADDING] == padding
                        images = Acceleration(device_augment=True).batch(dict(after))["images"]
                        assert torch.equal(images, before["images"]), (seed, rank, epoch)
                        assert torch.equal(after["labels"], before["labels"])
                        assert after["ids"] == before["ids"]
                    raw += [b["images"] for b in shipped]
                    augmented += [b["images"] for b in plain]
            # the draws did change the images (a gather that does nothing would pass above)
            assert not torch.equal(torch.cat(raw), torch.cat(augmented)), (seed, padding)


@pytest.mark.parametrize("resident", [False, True])
@pytest.mark.parametrize(("seed", "alpha"), [(0, 0.6), (3, 1.0), (7, 0.3)])
def test_device_augment_trains_bitwise_the_same_weights(tmp_path, data, resident, seed, alpha):
    """Streaming through 2 DataLoader workers (the draws travel through the worker queue with
    the images) or resident in memory."""
    workers = 0 if resident else 2
    config = dataclasses.replace(CONFIG, resident=resident, epochs=2, num_workers=workers)
    plain = train(data, tmp_path / "plain", config, alpha=alpha, seed=seed)
    device = dataclasses.replace(config, device_augment=True)
    moved = train(data, tmp_path / "device", device, alpha=alpha, seed=seed)
    assert_bitwise(plain["model_state"], moved["model_state"])
    assert_same_optimizer(plain["optimizer"], moved["optimizer"])
    assert read_log(tmp_path / "plain")[-1]["loss"] == read_log(tmp_path / "device")[-1]["loss"]
    # and the run did move: the weights are not the initial ones
    model, _ = build_objective(config, read_manifest(data["real"]), seed, 4, "cpu")
    assert not torch.equal(model.state_dict()["fc.weight"], moved["model_state"]["fc.weight"])


def test_device_augment_is_refused_where_the_loader_must_augment(tmp_path, data):
    with pytest.raises(ConfigError, match="device_augment: only the pad-crop and flip"):
        TrainConfig(device_augment=True, crop_padding=0, resized_crop=8)
    config = dataclasses.replace(CONFIG, method="cutmix", device_augment=True)
    with pytest.raises(ValueError, match="train.device_augment: method cutmix"):
        train(data, tmp_path / "cutmix", config)
    assert not (tmp_path / "cutmix" / "checkpoint.pt").exists()


def test_the_options_parse_and_unknown_values_are_refused():
    from sio.core.config import parse_dataclass

    parsed = parse_dataclass(
        TrainConfig,
        {"precision": "bf16", "channels_last": True, "device_augment": True, "compile": True},
        "train",
    )
    assert Acceleration.of(parsed) == Acceleration("bf16", True, True, True)
    assert Acceleration.of(TrainConfig()) == Acceleration()  # the defaults: nothing changes
    with pytest.raises(ConfigError, match="precision"):
        parse_dataclass(TrainConfig, {"precision": "fp16"}, "train")
    with pytest.raises(ConfigError, match="channel_last"):
        parse_dataclass(TrainConfig, {"channel_last": True}, "train")


# ---------------------------------------------------------------- precision, layout, compile


def test_bf16_trains_and_changes_the_numbers(tmp_path, data):
    config = dataclasses.replace(CONFIG, epochs=4, steps_per_epoch=6)
    fp32 = train(data, tmp_path / "fp32", config)
    bf16 = train(data, tmp_path / "bf16", dataclasses.replace(config, precision="bf16"))
    losses = [record["loss"] for record in read_log(tmp_path / "bf16")]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    # master weights and momentum stay float32
    for name, value in bf16["model_state"].items():
        assert value.dtype == fp32["model_state"][name].dtype, name
    assert all(
        v.dtype == torch.float32 for s in bf16["optimizer"]["state"].values() for v in s.values()
    )
    # bf16 arithmetic moved the weights elsewhere (an autocast that did nothing fails here)
    diff = max(
        float((bf16["model_state"][k].float() - v.float()).abs().max())
        for k, v in fp32["model_state"].items()
        if v.is_floating_point()
    )
    assert diff > 1e-4, diff


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_every_method_trains_in_bf16_channels_last(tmp_path, data, method):
    """Each method's loss (VOS's Gaussian draws and energy, G-ODIN's head, OE's outliers, the
    mixing transforms) runs under bf16 autocast with channels_last batches: finite losses."""
    config = dataclasses.replace(
        CONFIG,
        method=method,
        steps_per_epoch=3,
        precision="bf16",
        channels_last=True,
        vos=VosSettings(queue_size=2, samples=20),
        ce_plus=CePlusSettings(epoch_multiplier=1, warmup_epochs=0),
        pixmix=PixMixSettings(mixing=str(data["synthetic"])),
        oe=OESettings(outliers=str(data["synthetic"])),
    )
    state = train(data, tmp_path / method, config)
    assert state["complete"] and np.isfinite(read_log(tmp_path / method)[-1]["loss"])
    assert all(torch.isfinite(v).all() for v in state["model_state"].values())


def test_channels_last_stays_close_and_its_checkpoint_loads_into_a_plain_model(tmp_path, data):
    config = dataclasses.replace(CONFIG, epochs=2)
    default = train(data, tmp_path / "default", config)
    nhwc = train(data, tmp_path / "nhwc", dataclasses.replace(config, channels_last=True))
    # same arithmetic in another summation order: equal to float32 rounding after 8 steps
    for name, value in default["model_state"].items():
        other = nhwc["model_state"][name]
        assert torch.allclose(value.float(), other.float(), rtol=1e-4, atol=1e-5), name
    conv = next(k for k, v in nhwc["model_state"].items() if v.ndim == 4 and v.shape[-1] > 1)
    assert not nhwc["model_state"][conv].is_contiguous()  # it did train channels_last
    model, info = load_classifier(tmp_path / "nhwc")
    assert all(p.is_contiguous() for p in model.parameters())  # a plain model
    plain, _ = load_classifier(tmp_path / "default")
    images = next(iter_batches(data["real"], 16))[0]
    with torch.no_grad():
        assert torch.allclose(model(images), plain(images), rtol=1e-3, atol=1e-4)


def test_a_compiled_runs_checkpoint_is_the_plain_model(tmp_path, data):
    """torch.compile (inductor, real, on this CPU) trains the same model to float rounding; the
    checkpoint has the plain module's keys and loads with load_classifier."""
    config = dataclasses.replace(CONFIG, epochs=1, steps_per_epoch=3, device_augment=True)
    plain = train(data, tmp_path / "plain", config)
    compiled = train(data, tmp_path / "compiled", dataclasses.replace(config, compile=True))
    manifest = read_manifest(data["real"])
    fresh = build_classifier(
        "small_cnn",
        in_channels=3,
        num_classes=len(CLASSES),
        mean=manifest.pixel_mean,
        std=manifest.pixel_std,
    )
    assert list(compiled["model_state"]) == list(fresh.state_dict())  # no _orig_mod. prefix
    model, info = load_classifier(tmp_path / "compiled")
    reference, _ = load_classifier(tmp_path / "plain")
    assert info.complete and not hasattr(model, "_orig_mod")
    images = next(iter_batches(data["real"], 16))[0]
    with torch.no_grad():
        assert torch.allclose(model(images), reference(images), rtol=1e-3, atol=1e-4)
    for name, value in plain["model_state"].items():
        other = compiled["model_state"][name].float()
        assert torch.allclose(value.float(), other, rtol=1e-4, atol=1e-5), name


# ---------------------------------------------------------------- resume


def interrupt_at(monkeypatch, step: int):
    original = trainer_module.train_step

    def interrupted(objective, batch, *args):
        if batch["step"] == step:
            raise KeyboardInterrupt
        return original(objective, batch, *args)

    monkeypatch.setattr(trainer_module, "train_step", interrupted)


def test_a_resume_keeps_precision_layout_and_compile_but_may_move_the_crop(
    tmp_path, data, monkeypatch
):
    config = dataclasses.replace(CONFIG, epochs=2, checkpoint_every=2)
    full = train(data, tmp_path / "full", config)
    run = tmp_path / "run"
    interrupt_at(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(data, run, config)
    monkeypatch.undo()
    assert load_checkpoint(run)[1]["step"] == 4
    for change, value in (("precision", "bf16"), ("channels_last", True), ("compile", True)):
        with pytest.raises(ValueError, match=rf"config\.{change} = .*; use another output"):
            train(data, run, dataclasses.replace(config, **{change: value}))
    assert load_checkpoint(run)[1]["step"] == 4  # refused before any step
    resumed = train(data, run, dataclasses.replace(config, device_augment=True))
    assert resumed["step"] == 8 and resumed["complete"]
    assert_bitwise(full["model_state"], resumed["model_state"])


def test_cudnn_autotuning_only_for_runs_that_already_change_the_numbers():
    """cudnn.benchmark picks algorithms by timing them (they may differ between processes):
    a default CUDA run keeps cuDNN's heuristics so that it resumes bitwise; bf16,
    channels_last or compile runs get it for the run's duration, restored afterwards."""
    before = torch.backends.cudnn.benchmark = False
    for options, tuned in [
        ({}, False),
        ({"device_augment": True}, False),
        ({"precision": "bf16"}, True),
        ({"channels_last": True}, True),
        ({"compile": True}, True),
    ]:
        with Acceleration(**options).backends("cuda"):
            assert torch.backends.cudnn.benchmark is tuned, options
        assert torch.backends.cudnn.benchmark is before
        with Acceleration(**options).backends("cpu"):
            assert torch.backends.cudnn.benchmark is before
