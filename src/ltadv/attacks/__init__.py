"""Attacks are pure functions ``(model, x, y, ...) -> x_adv`` on pixels in [0, 1].

The L-inf threat model lives in :func:`project_linf`, the one projection every attack uses.
:data:`ATTACKS` maps the evaluation names (``clean``, ``pgd20``, ...) to functions
``fn(model, x, y, eps) -> x_adv`` with the protocol's settings (SPEC section 5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..registry import register

ATTACKS: dict[str, Callable[..., torch.Tensor]] = {}


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L-inf ball of radius eps around x, intersected with the pixel box [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross entropy on the raw logits (hard or soft targets): the reference attack loss."""
    if y.dim() == logits.dim():
        return -(y * F.log_softmax(logits.float(), dim=1)).sum()
    return F.cross_entropy(logits.float(), y, reduction="sum")


def check_budget(eps: float, steps: int) -> None:
    """The checks every iterative attack makes on its budget."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


@contextlib.contextmanager
def frozen_params(model: torch.nn.Module):
    """``requires_grad=False`` on every trainable parameter for the duration, restored afterwards:
    an attack needs input gradients only, so no parameter gradient is computed or accumulated."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


def random_init(x: torch.Tensor, eps: float, random_start: bool | str) -> torch.Tensor:
    """Starting point: ``True``/``"uniform"`` U(-eps, eps), ``"normal"`` x + 0.001 N(0, 1)
    (the AT-BSL/TRADES reference), ``"uniform_plus"`` x + U[0, eps) (the RoBal training attack,
    wutong16/Adversarial_Long-Tail), ``False``/``"zero"`` x itself."""
    if random_start is True or random_start == "uniform":
        return project_linf(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
    if random_start == "uniform_plus":
        return project_linf(x + eps * torch.rand_like(x), x, eps)
    if random_start == "normal":
        return project_linf(x + 0.001 * torch.randn_like(x), x, eps)
    if random_start is False or random_start == "zero":
        return x.clone()
    raise ValueError(f"unknown random_start {random_start!r}")


def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    random_start: bool | str = True,
) -> torch.Tensor:
    """L-inf projected gradient ascent (Madry et al., "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018, arXiv 1706.06083).

    ``loss_fn(logits, y)`` is maximised (default: summed cross entropy on raw logits); ``y`` may be
    labels, soft labels or any target the loss understands (TRADES passes the clean logits).
    The model's mode is left alone: the caller decides (training attacks run in eval mode).
    Gradients flow only to the input; parameter gradients are neither computed nor accumulated.
    """
    check_budget(eps, steps)
    loss_fn = loss_fn or ce_loss
    x = x.detach()
    x_adv = random_init(x, eps, random_start)
    if eps == 0:
        return x_adv
    with frozen_params(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project_linf(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()


@register(ATTACKS, "clean")
def clean(model, x, y, eps):
    return x


@register(ATTACKS, "pgd20")
def pgd20(model, x, y, eps):
    """PGD-20, step eps/4 (2/255 at 8/255), uniform random start, CE loss (SPEC section 5)."""
    return pgd(model, x, y, eps=eps, alpha=eps / 4, steps=20, random_start=True)


def cw_loss(logits: torch.Tensor, y: torch.Tensor, confidence: float = 50.0) -> torch.Tensor:
    """Summed Carlini-Wagner margin loss -max(z_y - max_{i != y} z_i + confidence, 0) (Carlini & Wagner,
    "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017, arXiv 1608.04644).

    Maximising it pushes the true logit below the best other one by up to ``confidence``; the
    L-inf "CW" of the adversarial-training literature is PGD on this loss.
    """
    z = logits.float()
    real = z.gather(1, y[:, None]).squeeze(1)
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).max(1).values
    return -(real - other + confidence).clamp(min=0).sum()


def scaled_ce_loss(logits: torch.Tensor, y: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """Cross entropy on ``scale * logits``: undoes a small logit scale whose saturated softmax hides
    the gradient (a check against gradient masking by logit adjustment)."""
    return ce_loss(scale * logits.float(), y)


@register(ATTACKS, "fgsm")
def fgsm(model, x, y, eps):
    """FGSM: one signed-gradient step of size eps on CE from x itself, no random start (Goodfellow et
    al., "Explaining and Harnessing Adversarial Examples", ICLR 2015, arXiv 1412.6572)."""
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1, random_start=False)


@register(ATTACKS, "cw")
def cw(model, x, y, eps):
    """CW-inf: PGD-20 (step eps/4, uniform start) on :func:`cw_loss` with confidence 50 (SPEC section 5)."""
    return pgd(model, x, y, eps=eps, alpha=eps / 4, steps=20, loss_fn=cw_loss, random_start=True)


@register(ATTACKS, "lsa")
def lsa(model, x, y, eps):
    """Logit-scaled attack: PGD-20 (step eps/4, uniform start) on CE of the logits times 10 (SPEC section 5)."""
    return pgd(model, x, y, eps=eps, alpha=eps / 4, steps=20, loss_fn=scaled_ce_loss, random_start=True)


from . import autoattack  # noqa: E402,F401  (registers aa and aa_torchattacks)
from . import mim as _mim  # noqa: E402,F401  (registers ATTACKS["mim"])
