"""Augmentation throughput: ltadv's batch path vs the reference per-image PIL path, in one process.

Batch path (what ``ltadv train`` runs): the training images sit in memory as a uint8 tensor on the
compute device; each batch is indexed, turned into float pixels and passed through
``build_pipeline`` (the augmentation, then per-image random crop + flip as tensor ops). The
AutoAugment family runs with the default ``data.aug_groups`` (16 independent draws per batch) and,
in its own column, with one draw per image (``aug_groups 0``).

PIL path (what the AT-BSL reference scripts run): a Dataset of PIL images through a DataLoader, a
per-image torchvision.transforms.v2 Compose (augmentation, RandomCrop with padding,
RandomHorizontalFlip, ToImage, ToDtype); Cutout as a per-image RandomErasing of the same area;
Mixup / CutMix as v2.MixUp / v2.CutMix on each collated batch, as torchvision's reference
classification scripts do.

Images are synthetic uint8 noise of the chosen size (speed does not depend on content here).
Prints a markdown table and writes JSON. Default (2048 CIFAR-sized images per cell, 2 CPU cores):
well under a minute.

    python benchmarks/bench_augment.py [--n 2048] [--size 32] [--channels 3] [--workers 0] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ltadv.data.augment import AUG_GROUPS, AUGMENTATIONS, build_pipeline
from ltadv.timing import Stopwatch, sync

PER_IMAGE = {"aua", "ra", "ta", "augmix"}  # transforms applied in groups on the batch path
MIXING = {"mixup", "cutmix"}


def batch_path(name: str, x_u8: torch.Tensor, y: torch.Tensor, batch: int, groups: int, num_classes: int) -> float:
    """Images per second of the in-memory batch path (index -> float -> pipeline)."""
    device = x_u8.device
    names = () if name == "none" else (name,)
    pipeline = build_pipeline(names, True, num_classes, x_u8.shape[-1], groups=groups)
    pipeline(x_u8[:batch].float().div(255), y[:batch])  # warm-up
    sync(device)
    order = torch.randperm(len(y), device=device)
    with Stopwatch(device) as sw:
        for i in range(0, len(y), batch):
            idx = order[i:i + batch]
            pipeline(x_u8[idx].float().div_(255), y[idx])
    return len(y) / sw.seconds


class PILDataset(Dataset):
    def __init__(self, x_u8: np.ndarray, y: np.ndarray, transform):
        mode = "L" if x_u8.shape[1] == 1 else "RGB"
        self.images = [PIL.Image.fromarray(img.transpose(1, 2, 0).squeeze(-1) if mode == "L" else
                                           img.transpose(1, 2, 0), mode) for img in x_u8]
        self.y, self.transform = y, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.y[i])


def pil_transform(name: str, size: int) -> v2.Compose:
    aug = {
        "aua": [v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)],
        "ra": [v2.RandAugment(num_ops=2, magnitude=8)],
        "ta": [v2.TrivialAugmentWide()],
        "augmix": [v2.AugMix()],
    }.get(name, [])
    tail = [v2.RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0)] if name == "cutout" else []
    return v2.Compose([*aug, v2.RandomCrop(size, padding=max(1, size // 8)), v2.RandomHorizontalFlip(),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True), *tail])


def pil_path(name: str, x_u8: np.ndarray, y: np.ndarray, batch: int, workers: int, num_classes: int) -> float:
    """Images per second of the per-image PIL DataLoader path."""
    ds = PILDataset(x_u8, y, pil_transform(name, x_u8.shape[-1]))
    mix = {"mixup": v2.MixUp(alpha=1.0, num_classes=num_classes),
           "cutmix": v2.CutMix(alpha=1.0, num_classes=num_classes)}.get(name)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=False, drop_last=False)
    with Stopwatch() as sw:
        for xb, yb in loader:
            if mix is not None:
                xb, yb = mix(xb, yb)
    return len(ds) / sw.seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2048, help="images per measurement")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32, help="image side (32: CIFAR, 8: digits)")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for the PIL path")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: per-core numbers; intra-op threads on small images "
                        "mostly add overhead, badly so on a shared machine)")
    p.add_argument("--device", default="auto", help="device of the batch path: auto, cpu, cuda")
    p.add_argument("--augs", default=",".join(["none", *sorted(AUGMENTATIONS)]))
    p.add_argument("--json", default="runs/bench/bench_augment.json", help="where to write the results")
    args = p.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.n, args.channels, args.size, args.size), dtype=torch.uint8)
    y = torch.randint(0, 10, (args.n,))
    x_dev, y_dev = x.to(device), y.to(device)
    rows = []
    t_start = time.perf_counter()
    for name in [a for a in args.augs.split(",") if a]:
        if name != "none" and name not in AUGMENTATIONS:
            raise SystemExit(f"bench_augment: unknown augmentation {name!r}")
        batch = batch_path(name, x_dev, y_dev, args.batch, AUG_GROUPS, 10)
        per_image = batch_path(name, x_dev, y_dev, args.batch, 0, 10) if name in PER_IMAGE else None
        pil = pil_path(name, x.numpy(), y.numpy(), args.batch, args.workers, 10)
        rows.append({"aug": name, "batch_img_s": batch, "batch_per_image_draws_img_s": per_image,
                     "pil_dataloader_img_s": pil, "speedup": batch / pil})
    total = time.perf_counter() - t_start

    header = ["aug", f"batch path (groups {AUG_GROUPS}) img/s", "batch path, per-image draws img/s",
              f"PIL DataLoader ({args.workers} workers) img/s", "batch / PIL"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        pi = f"{r['batch_per_image_draws_img_s']:,.0f}" if r["batch_per_image_draws_img_s"] else "-"
        lines.append(f"| {r['aug']} | {r['batch_img_s']:,.0f} | {pi} | {r['pil_dataloader_img_s']:,.0f} | "
                     f"{r['speedup']:.1f}x |")
    print(f"{args.n} images of {args.channels}x{args.size}x{args.size}, batch {args.batch}, device {device}, "
          f"{torch.get_num_threads()} threads, {total:.1f} s")
    print("\n".join(lines))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "settings": vars(args) | {"device": str(device), "threads": torch.get_num_threads(), "groups": AUG_GROUPS},
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "python": platform.python_version()},
        "seconds": total,
        "results": rows,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
