"""ResNet-18, CIFAR variant (He et al., "Deep Residual Learning for Image Recognition", arXiv 1512.03385).

Hand-written because torchvision's resnet18 is the ImageNet stem (7x7 stride-2 conv + max-pool),
which throws away most of a 32x32 image; the CIFAR variant used by AT-BSL, RoBal and TRADES has a
3x3 stride-1 stem and no pooling. Global average pooling makes it work on 64x64 inputs too.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..registry import register
from . import MODELS


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet_body(in_channels: int, blocks=(2, 2, 2, 2)) -> tuple[nn.Module, int]:
    layers = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    cin = 64
    for i, n in enumerate(blocks):
        cout = 64 * 2**i
        for j in range(n):
            layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


@register(MODELS, "resnet18")
def resnet18(in_channels: int) -> tuple[nn.Module, int]:
    return resnet_body(in_channels)
