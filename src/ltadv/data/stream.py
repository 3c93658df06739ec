"""Images streamed from disk, for data sets that do not fit in memory as tensors (ImageNet-LT).

:class:`ImageList` stands where the in-memory path holds a uint8 N x C x H x W tensor: it has a
``shape`` and ``dtype``, indexing it with a slice or index array gives a lazy sub-list, and ``.to(device)``
decodes the list into a uint8 tensor there. So evaluation, which walks the test set in batches with
``to_float(x[idx], device)``, streams without a change. Training batches come from
:func:`train_batches`: tensor indexing for in-memory data, a ``torch.utils.data.DataLoader`` with
decoding worker processes for an ImageList, both in the order the training loop chose (seeded
permutation, class-balanced re-sampling, DDP shard).

Decoding: Pillow (libjpeg-turbo), with ``Image.draft`` (libjpeg decodes at 1/2, 1/4 or 1/8 scale when
the target is that much smaller than the file; used at low resolution) and torchvision.transforms.v2
for the crops (antialiased resize). Pillow reads ImageNet's odd files (CMYK and grey JPEGs) through
``convert("RGB")``, releases the GIL while decoding (so evaluation decodes with threads), and needs no
dependency beyond torchvision. Measured CPU time per 500x375 JPEG (docs/imagenet-lt.md): 4.8 ms for a
224 px training crop, 3.2 ms at 64 px, i.e. ~200-300 images/s per worker. Adversarial training
consumes images ~7x slower than standard training (PGD-10: 11 forward and 10 backward passes per
batch), which is what makes CPU workers sufficient here; GPU decoding (nvjpeg), DALI or FFCV would
add a heavy dependency (FFCV also a converted copy of the data set) for a stage that is not the
bottleneck at these rates.
Every training image's random crop is drawn from a seed fixed by (run seed, epoch, position in the
epoch), so the crops do not depend on the number of workers and a resumed run draws the same ones.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import numpy as np
import torch

from .readers import DataError

EVAL_RESIZE = 256 / 224  # evaluation: resize the short side to size * 256/224, then centre-crop (the ImageNet standard)


class ImageList:
    """Image files decoded on demand to uint8 3 x size x size tensors.

    ``train``: RandomResizedCrop(size) and a horizontal flip when ``crop_flip`` (the ImageNet training
    crop), else the evaluation resize + centre crop. ``threads`` decode a whole list in ``.to()``.
    """

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4

    def __init__(self, files, size: int, train: bool = False, crop_flip: bool = True, threads: int = 8):
        self.files = np.asarray(files, dtype=object)
        self.size, self.train, self.crop_flip, self.threads = int(size), bool(train), bool(crop_flip), int(threads)
        self._transform = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), 3, self.size, self.size))

    def _sub(self, files) -> ImageList:
        return ImageList(files, self.size, self.train, self.crop_flip, self.threads)

    def __getitem__(self, key):
        """An int: that image decoded (C x H x W). A slice, index tensor or array: a lazy sub-list."""
        if isinstance(key, int | np.integer):
            return self.load(int(key))
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        files = self.files[key]
        return self._sub(np.atleast_1d(files))

    def transform(self):
        if self._transform is None:
            from torchvision.transforms import v2

            if self.train and self.crop_flip:
                steps = [v2.RandomResizedCrop(self.size, antialias=True), v2.RandomHorizontalFlip()]
            elif self.train:
                steps = [v2.Resize(self.size, antialias=True), v2.CenterCrop(self.size)]
            else:
                steps = [v2.Resize(round(self.size * EVAL_RESIZE), antialias=True), v2.CenterCrop(self.size)]
            self._transform = v2.Compose([*steps, v2.PILToTensor()])
        return self._transform

    def load(self, i: int, seed: int | None = None) -> torch.Tensor:
        """Image ``i`` as uint8 3 x size x size; ``seed`` fixes its random crop and flip."""
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        try:
            with Image.open(path) as im:
                # libjpeg decodes straight to the smallest 1/2^k scale still at least this large
                im.draft("RGB", (self.size * 2, self.size * 2) if self.train else
                         (round(self.size * EVAL_RESIZE),) * 2)
                im = im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"cannot read image {path}: {e}") from None
        if seed is None:
            return self.transform()(im)
        if torch.utils.data.get_worker_info() is not None:  # a DataLoader worker's generator is its own
            torch.manual_seed(seed)
            return self.transform()(im)
        with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
            torch.manual_seed(seed)
            return self.transform()(im)

    def to(self, device=None, non_blocking: bool = False) -> torch.Tensor:
        """All images of this list decoded into one uint8 N x 3 x size x size tensor on ``device``."""
        n = len(self)
        if n == 0:
            return torch.empty(tuple(self.shape), dtype=torch.uint8, device=device)
        if self.threads > 1 and n > 1:  # Pillow releases the GIL while decoding and resizing
            with concurrent.futures.ThreadPoolExecutor(min(self.threads, n)) as pool:
                images = list(pool.map(self.load, range(n)))
        else:
            images = [self.load(i) for i in range(n)]
        x = torch.stack(images)
        return x if device is None else x.to(device, non_blocking=non_blocking)

    def float(self) -> torch.Tensor:
        return self.to("cpu").float()

    def contiguous(self, *args, **kwargs) -> ImageList:
        return self


class _Decode(torch.utils.data.Dataset):
    """DataLoader view of a training ImageList: item ``(i, seed)`` is image i with its seeded crop."""

    def __init__(self, images: ImageList):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        i, seed = key
        return self.images.load(int(i), int(seed))


def crop_seeds(seed: int, epoch: int, n: int) -> torch.Tensor:
    """One crop seed per position of an epoch, fixed by (run seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randint(0, 2**62, (n,), generator=g)


def train_batches(x_train, y_train: torch.Tensor, order: torch.Tensor, stop: int, bs: int, device,
                  workers: int = 0, seed: int = 0, epoch: int = 0):
    """``(x, y)`` per training batch of ``order[:stop]``: x uint8 on ``device`` (in-memory tensors are
    indexed there; an :class:`ImageList` is decoded by ``workers`` DataLoader processes, 0: here)."""
    order = order[:stop]
    if isinstance(x_train, torch.Tensor):
        for i in range(0, stop, bs):
            idx = order[i:i + bs]
            yield x_train[idx], y_train[idx]
        return
    keys = order.cpu()
    seeds = crop_seeds(seed, epoch, len(order))[:stop]  # position in the (shard of the) epoch
    batches = [list(zip(keys[i:i + bs].tolist(), seeds[i:i + bs].tolist())) for i in range(0, stop, bs)]
    pin = torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(_Decode(x_train), batch_sampler=batches, num_workers=workers,
                                         pin_memory=pin, prefetch_factor=4 if workers else None)
    for b, x in enumerate(loader):
        idx = order[b * bs:(b + 1) * bs]
        yield x.to(device, non_blocking=True), y_train[idx]


def default_workers() -> int:
    """Decoding processes when ``data.workers`` is unset: the CPUs this process may use (a Slurm job's
    --cpus-per-task) less one, at most 16."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(0, min(16, n - 1))


def check_files(files, what: str) -> None:
    """The first missing listed file, named, before any training starts (a full scan is cheap next to
    decoding)."""
    for f in files:
        if not Path(f).is_file():
            raise DataError(f"{what} lists {f}, which is not there (is --data-root the ImageNet folder the "
                            f"split files' paths are relative to?)")


__all__ = ["ImageList", "check_files", "crop_seeds", "default_workers", "train_batches"]
