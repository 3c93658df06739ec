"""PreActResNet-18 (He et al., "Identity Mappings in Deep Residual Networks", arXiv 1603.05027),
the CIFAR/Tiny-ImageNet variant used for Tiny-ImageNet-LT in the AT-BSL paper."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..registry import register
from . import MODELS


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


@register(MODELS, "preact_resnet18")
def preact_resnet18(in_channels: int) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)]
    cin = 64
    for i, n in enumerate((2, 2, 2, 2)):
        cout = 64 * 2**i
        for j in range(n):
            layers.append(PreActBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
            cin = cout
    layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin
