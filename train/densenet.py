"""DenseNet-BC (Huang et al., "Densely connected convolutional networks", CVPR 2017).

``densenet100`` is DenseNet-BC with depth L = 100 and growth rate k = 12, the SIO paper's second
CIFAR architecture (as in ODIN, VOS and OpenOOD): a 3x3 stem conv to 2k channels, three dense
blocks of (L - 4) / 6 = 16 bottleneck layers each (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv to
k, concatenated to the input), transitions that halve the channels (compression 0.5) and the
resolution, then BN-ReLU and global average pooling: 24 -> 216 -> 108 -> 300 -> 150 -> 342, so
h is 342-d. About 0.77M parameters with a 10-class fc ("0.8M" in the paper's table).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sio.train.models import BACKBONES


class Bottleneck(nn.Module):
    """BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k); the k new channels are appended to the input."""

    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1 to ``out_planes`` channels, then 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNetBC(nn.Module):
    """DenseNet-BC for small images: three dense blocks, compression ``reduction``."""

    def __init__(self, in_channels: int, depth: int = 100, growth: int = 12, reduction=0.5):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4, got {depth}")
        per_block = (depth - 4) // 6
        planes = 2 * growth
        self.stem = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        stages = []
        for block in range(3):
            layers = [Bottleneck(planes + i * growth, growth) for i in range(per_block)]
            stages += layers
            planes += per_block * growth
            if block < 2:
                out_planes = int(planes * reduction)
                stages.append(Transition(planes, out_planes))
                planes = out_planes
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.feature_dim = planes
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.stages(self.stem(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


@BACKBONES.register("densenet100")
def densenet100(in_channels: int) -> DenseNetBC:
    """DenseNet-BC-100, k = 12: 342-d h."""
    return DenseNetBC(in_channels, depth=100, growth=12)
