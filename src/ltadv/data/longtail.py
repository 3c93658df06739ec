"""Long-tailed subsets as index arrays (SPEC section 3).

Exponential profile as in Cui et al., "Class-Balanced Loss Based on Effective Number of Samples"
(CVPR 2019, arXiv 1901.05555) and the AT-BSL / RoBal scripts: n_i = floor(n_max * (1/IR)^(i/(C-1))).
Step profile as in LDAM (Cao et al., NeurIPS 2019, arXiv 1906.07413): the first C // 2 classes keep
n_max images, the rest n_max / IR.

Two draws of the images: ltadv's own (:func:`split_indices`: a numpy Generator per subset seed, the
validation hold-out taken first) and LDAM-DRW's (:func:`ldam_indices`), the loader that the AT-BSL,
RoBal and REAT scripts all use (kaidic/LDAM-DRW imbalance_cifar.py; NISPLab/AT-BSL datasets/datasets.py):
the legacy global numpy generator seeded with 0, then per class in label order np.random.shuffle of
that class's indices and the first n_c of them.
"""

from __future__ import annotations

import math

import numpy as np


def long_tail_counts(n_max: int, num_classes: int, imbalance_ratio: float, profile: str = "exp") -> list[int]:
    """Images per class, class 0 the largest, with ``imbalance_ratio = n_max / n_min >= 1``.

    >>> long_tail_counts(5000, 10, 50)
    [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]
    """
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance ratio must be >= 1 (n_max / n_min), got {imbalance_ratio}")
    if n_max < 1 or num_classes < 1:
        raise ValueError(f"n_max and num_classes must be >= 1, got {n_max} and {num_classes}")
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        # A tiny epsilon keeps exact products (5000 * 0.02 = 100) from flooring to 99 through rounding.
        return [max(1, math.floor(n_max * (1 / imbalance_ratio) ** (i / (num_classes - 1)) + 1e-9))
                for i in range(num_classes)]
    if profile == "step":
        n_head = num_classes // 2
        n_min = max(1, math.floor(n_max / imbalance_ratio + 1e-9))
        return [int(n_max)] * n_head + [n_min] * (num_classes - n_head)
    raise ValueError(f"unknown long-tail profile {profile!r}; choose exp or step")


def split_indices(
    labels: np.ndarray,
    counts: list[int] | None,
    val_per_class: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): per class, ``val_per_class`` held-out images first, then ``counts[c]`` for training.

    The draw depends only on (labels, counts, val_per_class, seed), so a subset is fixed by
    (dataset, profile, IR, seed). ``counts=None`` keeps every remaining image.
    """
    rng = np.random.default_rng(seed)
    num_classes = int(labels.max()) + 1
    train, val = [], []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        val.append(idx[:val_per_class])
        rest = idx[val_per_class:]
        n = len(rest) if counts is None else counts[c]
        if n > len(rest):
            raise ValueError(f"class {c} has {len(rest)} images after the validation hold-out, {n} requested")
        train.append(np.sort(rest[:n]))
    return np.concatenate(train), np.concatenate(val)


def ldam_counts(n_max: float, num_classes: int, imbalance_ratio: float, profile: str = "exp") -> list[int]:
    """Images per class exactly as LDAM-DRW's ``get_img_num_per_cls`` computes them (int() of a float).

    ``n_max`` is their ``img_max = len(data) / cls_num``; their ``imb_factor`` is 1 / IR (0.02 for IR 50:
    the same double, as IEEE division rounds correctly). Step: C // 2 classes of int(n_max), then
    int(n_max * imb_factor) for the rest.
    """
    imb_factor = 1 / imbalance_ratio
    if profile == "exp":
        if num_classes == 1:
            return [int(n_max)]
        return [max(1, int(n_max * imb_factor ** (i / (num_classes - 1.0)))) for i in range(num_classes)]
    if profile == "step":
        n_head = num_classes // 2
        return [int(n_max)] * n_head + [max(1, int(n_max * imb_factor))] * (num_classes - n_head)
    raise ValueError(f"unknown long-tail profile {profile!r}; choose exp or step")


def ldam_indices(labels: np.ndarray, counts: list[int], val_per_class: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) drawn as LDAM-DRW's ``gen_imbalanced_data`` draws the long-tailed subset.

    ``np.random.seed(seed)`` then, for each class in label order, ``idx = np.where(labels == c)[0];
    np.random.shuffle(idx); idx[:n_c]``. A private ``RandomState`` is the same legacy Mersenne-Twister
    stream as the global one (``np.random.shuffle`` is a method of the global RandomState) without
    touching the caller's global state. The training images and their order are the authors'; a
    validation hold-out, when asked for, comes from the images after them (the authors have none).
    """
    rng = np.random.RandomState(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        n = counts[int(c)]
        if n + val_per_class > len(idx):
            raise ValueError(f"class {int(c)} has {len(idx)} images, {n} requested for training and "
                             f"{val_per_class} for validation")
        train.append(idx[:n])
        val.append(idx[n:n + val_per_class])
    return np.concatenate(train), np.concatenate(val)
