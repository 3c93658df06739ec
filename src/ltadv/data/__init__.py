"""Long-tailed datasets held in memory as uint8 tensors (STYLE: data stays where the compute is)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import Data
from ..registry import lookup
from .augment import AUGMENTATIONS, build_pipeline
from .longtail import long_tail_counts, split_indices
from .readers import READERS, STATS, DataError

DATASETS = READERS

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DataError",
    "LTData",
    "build_data",
    "build_pipeline",
    "load_split",
    "long_tail_counts",
]


@dataclass
class LTData:
    """A long-tailed training split, a balanced validation split and the balanced test split.

    Images are uint8 N x C x H x W tensors; ``class_counts[i]`` is the number of training images of class i.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_counts: list[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])


def _read(name: str, root: str | None):
    reader = lookup(READERS, name, "dataset")
    return reader(root)


def check_labels(name: str, ytr, yte) -> int:
    """Number of training classes; test labels must all be among them (none dropped without a word)."""
    if len(ytr) == 0 or len(yte) == 0:
        raise DataError(f"{name}: the {'training' if len(ytr) == 0 else 'test'} split is empty")
    if min(int(ytr.min()), int(yte.min())) < 0:
        raise DataError(f"{name}: negative class labels in the data")
    available = int(ytr.max()) + 1
    if int(yte.max()) >= available:
        raise DataError(f"{name}: test labels go up to {int(yte.max())} but the training split has classes "
                        f"0..{available - 1} only")
    return available


def build_data(cfg: Data, seed: int) -> LTData:
    """Read the dataset and draw the long-tailed subset fixed by (dataset, profile, IR, n_max, seed)."""
    xtr, ytr, xte, yte = _read(cfg.name, cfg.root)
    available = check_labels(cfg.name, ytr, yte)
    num_classes = cfg.num_classes or available
    if num_classes > available:
        raise DataError(f"data.num_classes is {num_classes} but {cfg.name} has only {available} classes")
    keep = ytr < num_classes
    xtr, ytr = xtr[keep], ytr[keep]
    keep = yte < num_classes
    xte, yte = xte[keep], yte[keep]
    per_class = np.bincount(ytr, minlength=num_classes)
    room = int(per_class.min()) - cfg.val_per_class
    if room < 1:
        raise DataError(f"data.val_per_class={cfg.val_per_class} leaves no training images "
                        f"(smallest class has {int(per_class.min())})")
    n_max = cfg.n_max or room
    if n_max > room:
        raise DataError(f"data.n_max={n_max} is more than the {room} images per class left after the "
                        f"validation hold-out")
    counts = long_tail_counts(n_max, num_classes, cfg.imbalance_ratio, cfg.profile)
    train_idx, val_idx = split_indices(ytr, counts, cfg.val_per_class, seed)
    mean, std = STATS[cfg.name]
    return LTData(
        name=cfg.name,
        x_train=torch.from_numpy(np.ascontiguousarray(xtr[train_idx])),
        y_train=torch.from_numpy(ytr[train_idx]),
        x_val=torch.from_numpy(np.ascontiguousarray(xtr[val_idx])),
        y_val=torch.from_numpy(ytr[val_idx]),
        x_test=torch.from_numpy(np.ascontiguousarray(xte)),
        y_test=torch.from_numpy(yte),
        class_counts=counts,
        mean=mean,
        std=std,
    )


def load_split(
    name: str,
    split: str = "test",
    root: str | None = None,
    imbalance_ratio: float | None = None,
    seed: int = 0,
    **data_fields,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of one split: x float in [0, 1] shaped N x C x H x W, y int64.

    ``split`` is ``train`` (the long-tailed subset), ``val`` (the balanced hold-out) or ``test``
    (balanced). The subset uses the dataset's preset (e.g. IR 10 for digits-lt) unless
    ``imbalance_ratio`` or other :class:`~ltadv.config.Data` fields are given.
    """
    from ..config import load_config

    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    overrides = {"data.name": name, "data.root": root, **{f"data.{k}": v for k, v in data_fields.items()}}
    if imbalance_ratio is not None:
        overrides["data.imbalance_ratio"] = imbalance_ratio
    cfg = load_config(overrides=overrides)
    if split == "test":
        xtr, ytr, xte, yte = _read(cfg.data.name, cfg.data.root)
        k = cfg.data.num_classes or check_labels(cfg.data.name, ytr, yte)
        keep = yte < k
        x, y = torch.from_numpy(np.ascontiguousarray(xte[keep])), torch.from_numpy(yte[keep])
    else:
        d = build_data(cfg.data, seed)
        x, y = (d.x_train, d.y_train) if split == "train" else (d.x_val, d.y_val)
    return x.float().div(255), y
