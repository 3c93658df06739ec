"""The epoch's index order: a seeded permutation, or class-balanced re-sampling.

Both are pure functions of (seed, epoch), so ``--resume`` and DDP sharding (which splits this order)
see the same order as an uninterrupted single-process run.

Class-balanced re-sampling (Shen et al., "Relay Backpropagation for Effective Learning of Deep
Convolutional Neural Networks", ECCV 2016, arXiv 1512.05830; the ``ClassAware`` sampler of RoBal's
code, Wu et al., CVPR 2021, arXiv 2104.02703): each of the epoch's n draws picks a class uniformly,
then one of its images uniformly (with replacement), so every class appears about n / C times.
Deferred re-sampling (DRS, Cao et al., NeurIPS 2019, arXiv 1906.07413) keeps the uniform order until
``resample_start`` of the epochs have passed.
"""

from __future__ import annotations

import math

import torch


def uniform_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """A permutation of range(n) fixed by (seed, epoch): the loop's original order, bit for bit."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def balanced_order(labels: torch.Tensor, seed: int, epoch: int, num_classes: int | None = None) -> torch.Tensor:
    """len(labels) indices drawn class-uniformly (class, then an image of it), fixed by (seed, epoch)."""
    labels = labels.cpu()
    n = len(labels)
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    g = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919_000)  # a stream apart from uniform_order's
    present = [k for k in range(c) if (labels == k).any()]
    by_class = [torch.nonzero(labels == k).flatten() for k in present]
    classes = torch.randint(len(present), (n,), generator=g)
    within = torch.rand(n, generator=g)
    out = torch.empty(n, dtype=torch.long)
    for j, idx in enumerate(by_class):
        sel = classes == j
        out[sel] = idx[(within[sel] * len(idx)).long().clamp_(max=len(idx) - 1)]
    return out


def epoch_order(sampler: str, labels: torch.Tensor, seed: int, epoch: int, epochs: int,
                resample_start: float = 0.0) -> torch.Tensor:
    """The index order of ``epoch`` (0-based) under ``data.sampler`` / ``data.resample_start``."""
    if sampler == "uniform" or epoch < math.floor(resample_start * epochs):
        return uniform_order(len(labels), seed, epoch)
    if sampler == "balanced":
        return balanced_order(labels, seed, epoch)
    raise ValueError(f"unknown sampler {sampler!r}; choose uniform or balanced")
