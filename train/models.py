"""Classifiers: a backbone that gives penultimate features ``h`` plus one linear layer ``fc``.

Every model takes uint8 images (or floats in [0, 1]) and normalises them itself with the real
training set's per-channel mean and std, so checkpoints are self-contained and the evaluator
can reach ``features(x)`` and ``fc`` of any architecture, with ``forward(x) = fc(features(x))``.
The head is chosen by the training method (HEADS: ``linear`` for most, ``godin`` for G-ODIN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sio.core.registry import Registry

BACKBONES: Registry = Registry("model")
HEADS: Registry = Registry("classifier head")


@BACKBONES.register("small_cnn")
class SmallCNN(nn.Module):
    """Three 3x3 conv layers with batch norm, one 2x2 max-pool, global average pooling."""

    def __init__(self, in_channels: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


@BACKBONES.register("cnn28")
class CNN28(nn.Module):
    """For 28x28 digits (mnist5k): two blocks of two 3x3 conv layers, each block ending in a
    2x2 max-pool (28 -> 14 -> 7), then one 3x3 conv and global average pooling; 128-d h. About
    22 M multiply-adds per image, so a 2-core CPU trains it on mnist5k in minutes."""

    def __init__(self, in_channels: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(in_channels, width),
            *_conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            *_conv_bn_relu(2 * width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@BACKBONES.register("resnet18_32")
class ResNet18CIFAR(nn.Module):
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), as in OpenOOD and SIO; 512-d h."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.stem = self.make_stem(in_channels)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.feature_dim = 512

    def make_stem(self, in_channels: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)


@BACKBONES.register("resnet18_224")
class ResNet18ImageNet(ResNet18CIFAR):
    """ResNet-18 with the ImageNet stem (7x7 stride-2 conv, 3x3 stride-2 max-pool), as
    torchvision's ``resnet18`` and SIO's ImageNet runs; 512-d h, a 7x7 last map at 224x224."""

    def make_stem(self, in_channels: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )


@HEADS.register("linear")
class Classifier(nn.Module):
    """normalise -> backbone -> h -> fc; ``features`` and ``fc`` are what detectors use."""

    def __init__(self, backbone: nn.Module, num_classes: int, mean, std):
        super().__init__()
        self.backbone = backbone
        self.fc = self.make_fc(backbone.feature_dim, num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def make_fc(self, feature_dim: int, num_classes: int) -> nn.Module:
        return nn.Linear(feature_dim, num_classes)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        return (x - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalise(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


def build_classifier(
    name: str, *, in_channels: int, num_classes: int, mean, std, head: str = "linear", **options
) -> Classifier:
    """Backbone ``name`` under head ``head`` (``options`` go to the head, e.g. G-ODIN's epsilon)."""
    backbone = BACKBONES.get(name)(in_channels)
    std = [max(s, 1e-3) for s in std]  # a constant channel must not divide by zero
    return HEADS.get(head)(backbone, num_classes, mean, std, **options)


from sio.train import densenet  # noqa: E402, F401  (registers densenet100 in BACKBONES)
