"""ResNet-50 (He et al., "Deep Residual Learning for Image Recognition", arXiv 1512.03385) for ImageNet-LT.

torchvision's ``resnet50`` (random initialisation, ``weights=None``: nothing is downloaded) without its
``fc`` layer; ltadv's head (linear or cosine) and normalisation layer go around it as for every model.

- ``resnet50``: torchvision's network as it is, 7x7 stride-2 stem and max-pool (total stride 32), for
  224 px (the ImageNet-LT standard) or 112 px (a quarter of the cost, 4x4 final maps).
- ``resnet50_small``: the same network with a 3x3 stride-1 first convolution (max-pool kept, total
  stride 16) for 64 px inputs: a 64 px image then gives the 32x32 -> 4x4 feature maps a 128 px image
  gives the standard stem, at about a third of the 224 px cost, instead of the 2x2 final maps that
  torchvision's stem leaves of 64 px.
"""

from __future__ import annotations

import torch.nn as nn

from ..registry import register
from . import MODELS


def _body(in_channels: int, small_stem: bool) -> tuple[nn.Module, int]:
    from torchvision.models import resnet50 as tv_resnet50

    net = tv_resnet50(weights=None)
    if small_stem or in_channels != 3:
        k, stride = (3, 1) if small_stem else (7, 2)
        net.conv1 = nn.Conv2d(in_channels, 64, k, stride, k // 2, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
    dim = net.fc.in_features
    net.fc = nn.Identity()  # the body ends at the pooled 2048-d features; the head is ltadv's
    return net, dim


@register(MODELS, "resnet50")
def resnet50(in_channels: int) -> tuple[nn.Module, int]:
    return _body(in_channels, small_stem=False)


@register(MODELS, "resnet50_small")
def resnet50_small(in_channels: int) -> tuple[nn.Module, int]:
    return _body(in_channels, small_stem=True)
