"""Long-tailed datasets held in memory as uint8 tensors (STYLE: data stays where the compute is)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Data
from ..registry import lookup, register
from .augment import AUGMENTATIONS, build_pipeline
from .imagenet_lt import STATS as IMAGENET_STATS
from .imagenet_lt import read_imagenet_lt
from .longtail import ldam_counts, ldam_indices, long_tail_counts, split_indices
from .readers import READERS, STATS, DataError
from .stream import ImageList, train_batches

register(READERS, "imagenet-lt")(read_imagenet_lt)  # streamed from disk (data/stream.py)
STATS["imagenet-lt"] = IMAGENET_STATS
DATASETS = READERS

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DataError",
    "ImageList",
    "LTData",
    "build_data",
    "build_pipeline",
    "load_split",
    "long_tail_counts",
    "read_subset_file",
    "streamed",
    "train_batches",
    "write_subset_file",
]


@dataclass
class LTData:
    """A long-tailed training split, a balanced validation split and the balanced test split.

    Images are uint8 N x C x H x W tensors, or :class:`~ltadv.data.stream.ImageList` s streamed from disk
    (ImageNet-LT); ``class_counts[i]`` is the number of training images of class i.
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
    train_indices: np.ndarray | None = None  # positions of x_train / x_val in the dataset's training array
    val_indices: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])


def streamed(name: str) -> bool:
    """Whether dataset ``name`` streams from disk (its images are ImageLists, not tensors)."""
    return getattr(lookup(READERS, name, "dataset"), "build", None) is not None


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
    """Read the dataset and draw the long-tailed subset fixed by (dataset, profile, IR, n_max, subset seed).

    The subset seed is ``data.subset_seed`` when set, else the training ``seed``. ``data.subset_draw``
    picks ltadv's draw or LDAM-DRW's (the AT-BSL / RoBal / REAT loaders); ``data.subset_file`` reads the
    indices from a split file instead (``train_indices`` / ``val_indices``, the format of RobustLT's
    ``core/data/split/*.npz`` and of the ``subset.npz`` every ltadv run writes).
    """
    build = getattr(lookup(READERS, cfg.name, "dataset"), "build", None)
    if build is not None:  # a streamed data set brings its own split (ImageNet-LT's files)
        return build(cfg, seed)
    xtr, ytr, xte, yte = _read(cfg.name, cfg.root)
    available = check_labels(cfg.name, ytr, yte)
    num_classes = cfg.num_classes or available
    if num_classes > available:
        raise DataError(f"data.num_classes is {num_classes} but {cfg.name} has only {available} classes")
    orig = np.flatnonzero(ytr < num_classes)  # positions in the dataset's own training array
    xtr, ytr = xtr[orig], ytr[orig]
    keep = yte < num_classes
    xte, yte = xte[keep], yte[keep]
    subset_seed = seed if cfg.subset_seed is None else cfg.subset_seed
    if cfg.subset_file is not None:
        train_idx, val_idx = read_subset_file(cfg.subset_file, orig, ytr, num_classes)
        if cfg.subset_file_val == "train":  # RobustLT's validation=False: its held-out images train too
            train_idx, val_idx = np.concatenate([train_idx, val_idx]), val_idx[:0]
        counts = np.bincount(ytr[train_idx], minlength=num_classes).tolist()
    else:
        per_class = np.bincount(ytr, minlength=num_classes)
        room = int(per_class.min()) - cfg.val_per_class
        if room < 1:
            raise DataError(f"data.val_per_class={cfg.val_per_class} leaves no training images "
                            f"(smallest class has {int(per_class.min())})")
        n_max = cfg.n_max or room
        if n_max > room:
            raise DataError(f"data.n_max={n_max} is more than the {room} images per class left after the "
                            f"validation hold-out")
        if cfg.subset_draw == "ldam":
            # LDAM-DRW's img_max = len(data) / cls_num: the class size on CIFAR and Tiny-ImageNet (balanced)
            counts = ldam_counts(n_max, num_classes, cfg.imbalance_ratio, cfg.profile)
            try:
                train_idx, val_idx = ldam_indices(ytr, counts, cfg.val_per_class, subset_seed)
            except ValueError as e:
                raise DataError(f"data.subset_draw ldam: {e}") from None
        else:
            counts = long_tail_counts(n_max, num_classes, cfg.imbalance_ratio, cfg.profile)
            train_idx, val_idx = split_indices(ytr, counts, cfg.val_per_class, subset_seed)
    mean, std = STATS[cfg.name]
    return LTData(
        name=cfg.name,
        x_train=torch.from_numpy(np.ascontiguousarray(xtr[train_idx])),
        y_train=torch.from_numpy(ytr[train_idx]),
        x_val=torch.from_numpy(np.ascontiguousarray(xtr[val_idx])),
        y_val=torch.from_numpy(ytr[val_idx]),
        x_test=torch.from_numpy(np.ascontiguousarray(xte)),
        y_test=torch.from_numpy(yte),
        class_counts=[int(c) for c in counts],
        mean=mean,
        std=std,
        train_indices=orig[train_idx],
        val_indices=orig[val_idx],
    )


SUBSET_FILE_KEYS = ("train_indices", "val_indices")


def write_subset_file(path, data: LTData) -> None:
    """The subset's positions in the dataset's training array, as ``train_indices`` / ``val_indices``
    (RobustLT's split-file keys), so another run or tool can train on exactly these images; written
    atomically (the previous file stays whole if the write fails)."""
    from ..checkpoint import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
            np.savez(f, train_indices=np.asarray(data.train_indices, dtype=np.int64),
                     val_indices=np.asarray(data.val_indices, dtype=np.int64))

    atomic_write(Path(path), write)


def read_subset_file(path: str, orig: np.ndarray, labels: np.ndarray,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) as positions into ``labels`` (the kept classes) from a split file.

    ``.npz`` with ``train_indices`` and optionally ``val_indices`` (RobustLT, ltadv), or ``.npy`` with
    the training indices alone; indices are positions in the dataset's own training array.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.subset_file {p} not found")
    try:
        with np.load(p, allow_pickle=False) as f:
            if isinstance(f, np.ndarray):
                parts = {"train_indices": f}
            else:
                if "train_indices" not in f.files:
                    raise DataError(f"data.subset_file {p} has no 'train_indices' array (has: {', '.join(f.files)})")
                parts = {k: f[k] for k in SUBSET_FILE_KEYS if k in f.files}
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"data.subset_file {p} is not a numpy .npz/.npy file: {e}") from None
    lookup_pos = np.full(int(orig.max()) + 1 if len(orig) else 0, -1, dtype=np.int64)
    lookup_pos[orig] = np.arange(len(orig))
    out = []
    for key in SUBSET_FILE_KEYS:
        raw = parts.get(key, np.zeros(0, dtype=np.int64))
        if raw.ndim != 1 or (raw.size and not np.issubdtype(raw.dtype, np.integer)
                             and not np.all(np.mod(raw, 1) == 0)):
            raise DataError(f"data.subset_file {p}: {key} must be a 1-D array of integer indices")
        idx = raw.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(lookup_pos) or (lookup_pos[idx] < 0).any()):
            raise DataError(f"data.subset_file {p}: {key} holds indices outside the dataset's training images "
                            f"of classes 0..{num_classes - 1}")
        if len(np.unique(idx)) != len(idx):
            raise DataError(f"data.subset_file {p}: {key} repeats an index")
        out.append(lookup_pos[idx])
    if np.intersect1d(out[0], out[1]).size:
        raise DataError(f"data.subset_file {p}: train_indices and val_indices overlap")
    if len(out[0]) == 0 or len(np.unique(labels[out[0]])) < num_classes:
        raise DataError(f"data.subset_file {p}: train_indices must hold at least one image of every class")
    return out[0], out[1]


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
    if split == "test" and not streamed(cfg.data.name):
        xtr, ytr, xte, yte = _read(cfg.data.name, cfg.data.root)
        k = cfg.data.num_classes or check_labels(cfg.data.name, ytr, yte)
        keep = yte < k
        x, y = torch.from_numpy(np.ascontiguousarray(xte[keep])), torch.from_numpy(yte[keep])
    else:
        d = build_data(cfg.data, seed)
        x, y = {"train": (d.x_train, d.y_train), "val": (d.x_val, d.y_val), "test": (d.x_test, d.y_test)}[split]
    return x.float().div(255), y
