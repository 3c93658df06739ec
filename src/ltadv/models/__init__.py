"""Models take pixels in [0, 1]; normalisation is their first layer, so eps is always in pixel units.

``MODELS[name](in_channels) -> (feature extractor, feature dim)``; :func:`build_model` adds the
normalisation layer and a head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..registry import lookup

MODELS: dict = {}


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """normalize -> features -> head; ``forward`` gives logits, ``features`` the penultimate layer."""

    def __init__(self, body: nn.Module, head: nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = body
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(
    name: str,
    num_classes: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    head: str = "linear",
    s: float = 10.0,
    gamma: float = 1 / 32,
) -> Classifier:
    from .heads import CosineHead, LinearHead

    body, dim = lookup(MODELS, name, "model")(in_channels)
    if head == "linear":
        h: nn.Module = LinearHead(dim, num_classes)
    elif head == "cosine":
        h = CosineHead(dim, num_classes, s=s, gamma=gamma)
    else:
        raise ValueError(f"unknown head {head!r}; choose linear or cosine")
    return Classifier(body, h, mean, std)


# Registration happens on import of each architecture file.
from . import preact_resnet, resnet, small_cnn, wrn  # noqa: E402,F401
