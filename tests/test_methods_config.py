"""Training presets and method settings in pipeline.yaml; RandomResizedCrop for the ImageNet
preset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sio.core.config import ConfigError, parse_dataclass, to_dict
from sio.pipeline.config import PipelineConfig, load_pipeline
from sio.train.augment import base_augment, random_resized_crop
from sio.train.config import TRAIN_DEFAULTS, TRAIN_PRESETS, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def parse(data: dict) -> TrainConfig:
    return parse_dataclass(TrainConfig, data, "train")


def test_defaults_are_unchanged_and_method_is_ce():
    config = TrainConfig()
    assert config.method == "ce" and config.preset is None
    assert (config.model, config.epochs, config.batch_size, config.lr) == (
        "small_cnn",
        40,
        128,
        0.1,
    )
    assert (config.momentum, config.nesterov, config.weight_decay) == (0.9, True, 5e-4)
    assert (config.crop_padding, config.hflip, config.resized_crop) == (1, False, 0)
    assert {name: getattr(config, name) for name in TRAIN_DEFAULTS} == TRAIN_DEFAULTS
    assert load_pipeline(REPO / "pipeline.yaml").train == TrainConfig() == PipelineConfig().train


def test_cifar_preset_expands_to_explicit_values():
    config = parse({"preset": "cifar"})
    expected = {
        "model": "resnet18_32",
        "epochs": 200,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "crop_padding": 4,
        "hflip": True,
        "resized_crop": 0,
    }
    assert {name: getattr(config, name) for name in expected} == expected
    saved = to_dict(config)
    assert saved["preset"] == "cifar" and saved["epochs"] == 200 and saved["crop_padding"] == 4
    assert parse(saved) == config  # the resolved config reads back as the same config


def test_imagenet_preset():
    config = parse({"preset": "imagenet"})
    assert (config.model, config.epochs, config.batch_size) == ("resnet18_224", 60, 256)
    assert (config.weight_decay, config.nesterov) == (1e-4, False)
    assert (config.resized_crop, config.crop_padding, config.hflip) == (224, 0, True)


def test_explicit_fields_override_the_preset():
    config = parse({"preset": "cifar", "epochs": 3, "model": "densenet100", "hflip": None})
    assert (config.epochs, config.model, config.hflip) == (3, "densenet100", True)
    assert config.crop_padding == TRAIN_PRESETS["cifar"]["crop_padding"]


def test_preset_and_method_errors_name_the_field(tmp_path):
    cases = {
        "train: {preset: svhn}": "train.preset: expected one of",
        "train: {method: mixup}": "train.method: expected one of",
        "train: {method: oe}": "train.oe.outliers: method oe needs a shard set",
        "train: {method: pixmix}": "train.pixmix.mixing: method pixmix needs a shard set",
        "train: {preset: imagenet, crop_padding: 4}": "train.resized_crop: use either",
        "train: {vos: {select: 20, samples: 10}}": "train.vos.select",
        "train: {logitnorm: {temperature: 0}}": "train.logitnorm.temperature: must be positive",
        "train: {method: ce_plus, epochs: 1}": "train.ce_plus.warmup_epochs: must be below",
        "train: {oe: {unknown: 1}}": "train.oe.unknown: unknown key",
    }
    for text, message in cases.items():
        path = tmp_path / "pipeline.yaml"
        path.write_text(text + "\n")
        with pytest.raises(ConfigError) as info:
            load_pipeline(path)
        assert message in str(info.value), (text, str(info.value))


def test_method_settings_reach_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "tin").mkdir(parents=True)  # the outliers set is checked at parse time
    (tmp_path / "data" / "tin" / "manifest.json").write_text("{}")
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "train:\n  method: oe\n  oe: {outliers: data/tin, weight: 0.25}\n"
        "  godin: {epsilon: 0.001}\n  cutmix: {beta: 2}\n"
    )
    config = load_pipeline(path).train
    assert config.oe.outliers == "data/tin" and config.oe.weight == 0.25
    assert config.oe.outlier_multiple == 2 and config.godin.epsilon == 0.001
    assert config.cutmix.beta == 2.0


# --- RandomResizedCrop ---------------------------------------------------------------------


def test_random_resized_crop_size_and_seed():
    images = torch.randint(0, 256, (6, 3, 40, 30), dtype=torch.uint8)
    a = random_resized_crop(images, torch.Generator().manual_seed(0), 16)
    b = random_resized_crop(images, torch.Generator().manual_seed(0), 16)
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.uint8 and torch.equal(a, b)
    empty = random_resized_crop(images[:0], torch.Generator(), 16)
    assert empty.shape == (0, 3, 16, 16)


def test_random_resized_crop_of_the_whole_image_is_a_resize():
    images = torch.randint(0, 256, (3, 1, 12, 12), dtype=torch.uint8)
    same = random_resized_crop(images, torch.Generator(), 12, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(same, images)


def test_base_augment_uses_the_resized_crop_only_when_asked():
    images = torch.randint(0, 256, (4, 1, 10, 10), dtype=torch.uint8)
    g = torch.Generator().manual_seed(1)
    assert base_augment(images, g, padding=0, hflip=False, resized_crop=0).shape == images.shape
    out = base_augment(images, g, padding=0, hflip=True, resized_crop=6)
    assert out.shape == (4, 1, 6, 6)
