"""WideResNet-34-10 (Zagoruyko & Komodakis, "Wide Residual Networks", arXiv 1605.07146), the
TRADES/RoBal/AT-BSL variant: pre-activation blocks, widths 16, 160, 320, 640."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..registry import register
from . import MODELS


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.equal else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


def wide_resnet(in_channels: int, depth: int = 34, widen: int = 10) -> tuple[nn.Module, int]:
    n = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
    cin = widths[0]
    for stage, cout in enumerate(widths[1:]):
        for j in range(n):
            layers.append(WideBlock(cin, cout, 2 if (j == 0 and stage > 0) else 1))
            cin = cout
    layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


@register(MODELS, "wrn34_10")
def wrn34_10(in_channels: int) -> tuple[nn.Module, int]:
    return wide_resnet(in_channels, 34, 10)
