"""ImageNet-LT (Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019,
arXiv 1904.05160), read from the OLTR split files and streamed from the user's ImageNet folder.

The split files ``ImageNet_LT_train.txt`` (115,846 images, 1,280 -> 5 per class), ``ImageNet_LT_val.txt``
(20 per class, drawn from ImageNet's training images) and ``ImageNet_LT_test.txt`` (50 per class, ImageNet's
validation images) hold one ``relative/path.JPEG label`` per line, the paths relative to the ImageNet
folder (``train/n01440764/n01440764_10026.JPEG 0``). The long-tailed subset is the train file itself:
no subset is drawn, and ``data.imbalance_ratio`` / ``n_max`` / ``profile`` play no part.
The val and test lists are put in a fixed order (a permutation seeded with 0, the same for every run),
so ``eval.val_n`` / ``eval.n`` take a prefix that covers the classes evenly instead of the first classes
of the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .readers import DataError
from .stream import ImageList, check_files, default_workers

SPLIT_FILES = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}
DEFAULT_SIZE = 224
STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's ImageNet mean / std


def read_split_file(path: Path) -> tuple[list[str], np.ndarray]:
    """(relative paths, int64 labels) of one split file; a malformed line is named with its number."""
    if not path.is_file():
        raise DataError(f"missing ImageNet-LT split file {path} (from the OLTR release; set data.split_dir to "
                        f"the folder that holds {', '.join(SPLIT_FILES.values())})")
    files, labels = [], []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(f"{path} line {n}: expected 'relative/path.JPEG label', got {line.strip()[:80]!r}")
        rel = parts[0].strip()
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise DataError(f"{path} line {n}: {rel!r} must be a path inside the ImageNet folder")
        files.append(rel)
        labels.append(int(parts[1]))
    if not files:
        raise DataError(f"{path} lists no images")
    return files, np.asarray(labels, dtype=np.int64)


def read_splits(cfg) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{split: (absolute paths, labels)}`` for train / val / test, checked against each other."""
    if cfg.root is None:
        raise DataError("imagenet-lt needs --data-root pointing at the ImageNet folder the split files' paths "
                        "are relative to (no download is attempted)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    split_dir = Path(cfg.split_dir).expanduser() if cfg.split_dir is not None else root
    out = {}
    for split, name in SPLIT_FILES.items():
        rel, y = read_split_file(split_dir / name)
        out[split] = ([str(root / r) for r in rel], y)
    classes = int(out["train"][1].max()) + 1
    for split in ("val", "test"):
        if int(out[split][1].max()) >= classes:
            raise DataError(f"{split_dir / SPLIT_FILES[split]} has labels up to {int(out[split][1].max())} but the "
                            f"training file only classes 0..{classes - 1}")
    missing = np.flatnonzero(np.bincount(out["train"][1], minlength=classes) == 0)
    if len(missing):
        raise DataError(f"{split_dir / SPLIT_FILES['train']} has no image of class {int(missing[0])}")
    return out


def build_imagenet_lt(cfg, seed: int):
    """An :class:`~ltadv.data.LTData` whose images are :class:`ImageList` s (streamed), labels tensors."""
    from . import LTData

    for key, value, default in (("n_max", cfg.n_max, None), ("subset_file", cfg.subset_file, None),
                                ("profile", cfg.profile, "exp"), ("subset_draw", cfg.subset_draw, "ltadv")):
        if value != default:
            raise DataError(f"data.{key} does not apply to imagenet-lt: its long-tailed subset is the split file")
    splits = read_splits(cfg)
    available = int(splits["train"][1].max()) + 1
    k = cfg.num_classes or available
    if k > available:
        raise DataError(f"data.num_classes is {k} but imagenet-lt has only {available} classes")
    size = cfg.image_size or DEFAULT_SIZE
    threads = cfg.workers if cfg.workers is not None else default_workers()
    lists, labels = {}, {}
    for split, (files, y) in splits.items():
        keep = np.flatnonzero(y < k)
        if split != "train":  # a fixed order, so any prefix spreads over the classes
            keep = keep[np.random.default_rng(0).permutation(len(keep))]
        files = [files[i] for i in keep]
        check_files(files, f"ImageNet-LT's {split} split")
        lists[split] = ImageList(files, size, train=split == "train", crop_flip=cfg.crop_flip,
                                 threads=max(1, threads))
        labels[split] = torch.from_numpy(y[keep])
    counts = np.bincount(labels["train"].numpy(), minlength=k)
    return LTData(name=cfg.name, x_train=lists["train"], y_train=labels["train"], x_val=lists["val"],
                  y_val=labels["val"], x_test=lists["test"], y_test=labels["test"],
                  class_counts=[int(c) for c in counts], mean=STATS[0], std=STATS[1])


def read_imagenet_lt(root):
    """The registry entry: ImageNet-LT streams from disk, so it is built by :func:`build_imagenet_lt`."""
    raise DataError("imagenet-lt streams from disk and has no in-memory arrays; use ltadv.data.build_data")


read_imagenet_lt.build = build_imagenet_lt  # build_data asks the reader for this
