"""Batch augmentation on the compute device.

A pipeline is a list of steps ``(x, target) -> (x, target)`` over float pixel batches in [0, 1]
(N x C x H x W); ``target`` is int labels or, after a mixing step (Mixup, CutMix), soft labels
(N x C rows summing to 1). Augmentations are registered in :data:`AUGMENTATIONS` by name; the
pipeline applies them in the order given and ends with random crop + horizontal flip for
CIFAR-like data (SPEC section 4; the AT-BSL scripts also put AutoAugment / RandAugment before
crop + flip).

| name     | what                                   | default (reference)                              |
|----------|----------------------------------------|--------------------------------------------------|
| mixup    | convex mix of image pairs and labels   | alpha 1.0, one lambda per batch                   |
| cutout   | zero a square, centre anywhere         | 16x16 on 32x32 (half the side), one per image     |
| cutmix   | paste a box from the paired image      | alpha 1.0, one box per batch, lambda = area kept  |
| augmix   | Dirichlet mix of augmentation chains   | severity 3, width 3, depth 1-3, alpha 1           |
| aua      | AutoAugment                            | CIFAR-10 policy                                   |
| ra       | RandAugment                            | 2 ops, magnitude 8 of 31 bins                     |
| ta       | TrivialAugment (wide)                  | one op, uniform magnitude                         |

Mixed targets: the training attack then maximises CE against the soft target, which equals
``lam * CE(y_a) + (1 - lam) * CE(y_b)`` (CE is linear in the target), the mixup attack loss of
Rice et al., "Overfitting in adversarially robust deep learning", ICML 2020, arXiv 2002.11569.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..registry import lookup, register

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# name -> factory(num_classes: int, image_size: int, groups: int = AUG_GROUPS) -> Step
AUGMENTATIONS: dict[str, Callable[..., Step]] = {}

# Independent draws per batch for the AutoAugment family (see per_image_groups). Each image's
# augmentation has exactly the per-image distribution of the reference; only images in the same
# group share their op within a batch. 0 = one draw per image (the reference's behaviour; slower).
AUG_GROUPS = 16


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


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] -> uint8 (exact for images that came from uint8)."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


@contextlib.contextmanager
def _single_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run tiny CPU ops on one thread: intra-op threading on a few small images costs more than it
    saves, badly so on a loaded machine (RandAugment, 16 groups of 8 x 3 x 32 x 32 on 2 busy cores:
    ~650 ms per batch with 2 threads vs ~40 ms with 1)."""
    if device.type != "cpu":
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def per_image_groups(transform: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, groups: int,
                     name: str = "augmentation") -> torch.Tensor:
    """Apply a torchvision v2 transform with (nearly) per-image randomness to a float batch.

    v2.AutoAugment / RandAugment / TrivialAugmentWide / AugMix draw their ops once per call, so a
    whole batch passed at once gets the *same* op. Calling them once per image restores the
    reference semantics but costs one Python call per image (~0.3 ms on CPU; on a GPU it is
    bound by kernel launches, far slower than the training step needs). Measured on 2 CPU cores
    for a 128 x 3 x 32 x 32 uint8 batch, RandAugment: 1 call/batch ~38k img/s, 8 calls ~19k,
    32 calls ~6.7k, 128 calls (per image) ~2k (benchmarks/bench_augment.py has the full table).
    We therefore split the batch into ``groups`` random groups and call the transform once per
    group: every image's augmentation still has the reference's per-image distribution (the draw
    is independent of which images share it), with ``groups`` independent draws per batch (Mixup
    and CutMix already share one lambda / box per batch in their reference code). ``groups <= 0``
    (or >= N) gives one draw per image. Images go through uint8, as the reference's PIL path does
    (posterize, equalize and solarize are defined on 8-bit levels).
    """
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name} works on 1- or 3-channel images, got {x.shape[1]} channels")
    n = x.shape[0]
    u8 = to_uint8(x)
    g = n if groups <= 0 else min(groups, n)
    with _single_cpu_thread(x.device):
        if g <= 1:
            out = transform(u8)
        else:
            out = torch.empty_like(u8)
            for idx in torch.randperm(n, device=x.device).chunk(g):
                out[idx] = transform(u8[idx])
    return out.float().div_(255)


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image, its centre uniform over the image and the square
    clipped at the border (DeVries & Taylor, "Improved Regularization of Convolutional Neural
    Networks with Cutout", 2017, arXiv 1708.04552).

    Hand-written as a batch mask rather than v2.RandomErasing because RandomErasing (a) draws one
    box per call, i.e. per batch on a batched tensor, and (b) keeps the box inside the image,
    whereas Cutout's centre may lie near the border so that less than size^2 pixels are erased.
    The fill is 0 on [0, 1] pixels (models normalise inside, as in the AT reference scripts).
    """
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), device=x.device) - size // 2
    cx = torch.randint(0, w, (n, 1, 1), device=x.device) - size // 2
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= cy) & (rows < cy + size) & (cols >= cx) & (cols < cx + size)  # n x h x w
    return x.masked_fill(inside[:, None], 0.0)


def _mixing_step(transform) -> Step:
    """v2.MixUp / v2.CutMix as a step: int labels become soft labels; soft labels (an earlier
    mixing step) are mixed again, so mixing steps stack."""

    def step(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return transform(x, target)

    return step


def _image_step(make: Callable[[], Callable], name: str, groups: int) -> Step:
    transform = make()

    def step(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return per_image_groups(transform, x, groups, name), target

    return step


@register(AUGMENTATIONS, "mixup")
def mixup(num_classes: int, image_size: int, groups: int = AUG_GROUPS, alpha: float = 1.0) -> Step:
    """Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018, arXiv 1710.09412):
    x = lam x_i + (1 - lam) x_j, target = lam y_i + (1 - lam) y_j, lam ~ Beta(alpha, alpha), one lam
    per batch as in the reference code; v2.MixUp pairs each image with its batch neighbour (the
    batch order is random)."""
    return _mixing_step(v2.MixUp(alpha=alpha, num_classes=num_classes))


@register(AUGMENTATIONS, "cutmix")
def cutmix(num_classes: int, image_size: int, groups: int = AUG_GROUPS, alpha: float = 1.0) -> Step:
    """CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
    Localizable Features", ICCV 2019, arXiv 1905.04899): paste a box of area ~(1 - lam) from the
    paired image, lam ~ Beta(alpha, alpha), labels mixed by the box's actual area; one box per batch
    as in the reference code; always applied (v2.CutMix)."""
    return _mixing_step(v2.CutMix(alpha=alpha, num_classes=num_classes))


@register(AUGMENTATIONS, "cutout")
def cutout_step(num_classes: int, image_size: int, groups: int = AUG_GROUPS) -> Step:
    """Cutout, 16 x 16 on 32 x 32 images, scaled to half the image side (4 x 4 on 8 x 8 digits)."""
    size = max(1, round(image_size * 16 / 32))

    def step(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cutout(x, size), target

    return step


@register(AUGMENTATIONS, "augmix")
def augmix(num_classes: int, image_size: int, groups: int = AUG_GROUPS) -> Step:
    """AugMix (Hendrycks et al., "AugMix: A Simple Data Processing Method to Improve Robustness and
    Uncertainty", ICLR 2020, arXiv 1912.02781), v2.AugMix defaults (severity 3, width 3, random depth
    1-3, alpha 1). The augmentation only: the paper's Jensen-Shannon consistency loss is not used."""
    return _image_step(v2.AugMix, "augmix", groups)


@register(AUGMENTATIONS, "aua")
def autoaugment(num_classes: int, image_size: int, groups: int = AUG_GROUPS) -> Step:
    """AutoAugment with the CIFAR-10 policy (Cubuk et al., "AutoAugment: Learning Augmentation
    Strategies from Data", CVPR 2019, arXiv 1805.09501), as in the AT-BSL scripts (``--aug aua``)."""
    return _image_step(lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10), "aua", groups)


@register(AUGMENTATIONS, "ra")
def randaugment(num_classes: int, image_size: int, groups: int = AUG_GROUPS) -> Step:
    """RandAugment, 2 ops at magnitude 8 (of 31 bins), as in the AT-BSL scripts (Cubuk et al.,
    "RandAugment: Practical automated data augmentation with a reduced search space", CVPR
    Workshops 2020, arXiv 1909.13719)."""
    return _image_step(lambda: v2.RandAugment(num_ops=2, magnitude=8), "ra", groups)


@register(AUGMENTATIONS, "ta")
def trivialaugment(num_classes: int, image_size: int, groups: int = AUG_GROUPS) -> Step:
    """TrivialAugment (wide) (Müller & Hutter, "TrivialAugment: Tuning-free Yet State-of-the-Art
    Data Augmentation", ICCV 2021, arXiv 2103.10158): one random op at a uniform random magnitude."""
    return _image_step(v2.TrivialAugmentWide, "ta", groups)


def build_pipeline(names: tuple[str, ...], crop_flip: bool, num_classes: int, image_size: int,
                   groups: int = AUG_GROUPS) -> Step:
    """Compose the named augmentations in order, then crop + flip when ``crop_flip``.

    ``groups``: independent draws per batch for the AutoAugment family (see :func:`per_image_groups`).
    """
    steps = [lookup(AUGMENTATIONS, n, "augmentation")(num_classes, image_size, groups=groups) for n in names]

    def pipeline(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for step in steps:
            x, target = step(x, target)
        if crop_flip:
            x = random_hflip(random_crop(x, padding=max(1, image_size // 8)))
        return x, target

    return pipeline
