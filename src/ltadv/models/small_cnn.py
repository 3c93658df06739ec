"""A three-convolution CNN for the 8x8 digits (the embedded default)."""

from __future__ import annotations

import torch.nn as nn

from ..registry import register
from . import MODELS


@register(MODELS, "small_cnn")
def small_cnn(in_channels: int) -> tuple[nn.Module, int]:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    body = nn.Sequential(
        *block(in_channels, 32),
        *block(32, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return body, 128
