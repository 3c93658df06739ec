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


class LogitAdjusted(nn.Module):
    """Inference-time boundary adjustment scale * z - tau_p * log prior (RoBal-N: Wu et al., "Adversarial
    Robustness under Long-Tailed Distribution", CVPR 2021, arXiv 2104.02703; post-hoc logit adjustment:
    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, arXiv 2007.07314). Wraps a trained
    model so that predictions and every attack see the adjusted logits; the weights stay the wrapped
    model's. ``scale`` is RoBal's PostProc scale s for a head that outputs plain cosines (1 otherwise).
    """

    def __init__(self, model: nn.Module, class_counts: Sequence[int], tau_p: float, scale: float = 1.0):
        super().__init__()
        self.model = model
        counts = torch.as_tensor(list(class_counts), dtype=torch.float32)
        self.register_buffer("bias", -tau_p * (counts / counts.sum()).log())
        self.tau_p = tau_p
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        return (z * self.scale if self.scale != 1.0 else z) + self.bias.to(x.device)

    def extra_repr(self) -> str:
        return f"tau_p={self.tau_p}" + (f", scale={self.scale}" if self.scale != 1.0 else "")


def posthoc(model: nn.Module, class_counts: Sequence[int], tau_p: float, scale: float = 1.0) -> nn.Module:
    """``model`` itself when tau_p == 0, else :class:`LogitAdjusted` around it (on the model's device)."""
    if tau_p == 0:
        return model
    device = next(model.parameters()).device
    return LogitAdjusted(model, class_counts, tau_p, scale).to(device)


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
from . import preact_resnet, resnet, resnet50, small_cnn, wrn  # noqa: E402,F401
