"""Batch augmentation on the compute device.

A pipeline is a list of steps ``(x, target) -> (x, target)`` over float pixel batches in [0, 1]
(N x C x H x W); ``target`` is int labels or, after a mixing step (Mixup, CutMix), soft labels
(N x C rows summing to 1). Augmentations are registered in :data:`AUGMENTATIONS` by name; the
pipeline applies them in the order given and ends with random crop + horizontal flip for
CIFAR-like data (SPEC section 4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..registry import lookup

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# name -> factory(num_classes: int, image_size: int) -> Step
AUGMENTATIONS: dict[str, Callable[[int, int], Step]] = {}


def random_crop(x: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Per-image random crop after zero padding, as torchvision's RandomCrop(size, padding) but on a batch.

    Written with tensor indexing because transforms.v2.RandomCrop draws one offset per call,
    i.e. per batch when given a batch; a per-image offset needs this gather.
    """
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
    rows = (torch.arange(h, device=x.device)[None] + oy[:, None])[:, :, None]  # n x h x 1
    cols = (torch.arange(w, device=x.device)[None] + ox[:, None])[:, None, :]  # n x 1 x w
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Per-image horizontal flip with probability p."""
    mask = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def build_pipeline(names: tuple[str, ...], crop_flip: bool, num_classes: int, image_size: int) -> Step:
    """Compose the named augmentations in order, then crop + flip when ``crop_flip``."""
    steps = [lookup(AUGMENTATIONS, n, "augmentation")(num_classes, image_size) for n in names]

    def pipeline(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for step in steps:
            x, target = step(x, target)
        if crop_flip:
            x = random_hflip(random_crop(x, padding=max(1, image_size // 8)))
        return x, target

    return pipeline
