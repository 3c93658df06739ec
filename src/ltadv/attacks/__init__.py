"""Attacks are pure functions ``(model, x, y, ...) -> x_adv`` on pixels in [0, 1].

The L-inf threat model lives in :func:`project_linf`, the one projection every attack uses.
:data:`ATTACKS` maps the evaluation names (``clean``, ``pgd20``, ...) to functions
``fn(model, x, y, eps, settings=None) -> x_adv`` with the protocol's settings (SPEC section 5);
``settings`` (:class:`AttackSettings`) changes the step and the start where an author's test script
differs (``eval.alpha``, ``eval.fgsm_init``, ...), and ``None`` is SPEC section 5.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

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


INITS = ("uniform", "normal", "uniform_plus", "zero")


def random_init(x: torch.Tensor, eps: float, random_start: bool | str, clamp: bool = True) -> torch.Tensor:
    """Starting point: ``True``/``"uniform"`` U(-eps, eps), ``"normal"`` x + 0.001 N(0, 1)
    (the AT-BSL/TRADES reference), ``"uniform_plus"`` x + U[0, eps) (the RoBal training attack,
    wutong16/Adversarial_Long-Tail), ``False``/``"zero"`` x itself.

    With ``clamp`` (default) the start is projected onto the eps-ball and [0, 1]; without it the
    noisy start is used as drawn, pixels outside [0, 1] included, as the AT-BSL and RoBal test
    scripts do (their first projection comes after the first step).
    """
    if random_start is True or random_start == "uniform":
        start = x + torch.empty_like(x).uniform_(-eps, eps)
    elif random_start == "uniform_plus":
        start = x + eps * torch.rand_like(x)
    elif random_start == "normal":
        start = x + 0.001 * torch.randn_like(x)
    elif random_start is False or random_start == "zero":
        return x.clone()
    else:
        raise ValueError(f"unknown random_start {random_start!r}")
    return project_linf(start, x, eps) if clamp else start


def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    random_start: bool | str = True,
    clamp_start: bool = True,
) -> torch.Tensor:
    """L-inf projected gradient ascent (Madry et al., "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018, arXiv 1706.06083).

    ``loss_fn(logits, y)`` is maximised (default: summed cross entropy on raw logits); ``y`` may be
    labels, soft labels or any target the loss understands (TRADES passes the clean logits).
    ``clamp_start=False`` takes the first gradient at the random start as drawn (see
    :func:`random_init`); every step still ends with the projection, so x_adv is in the ball and box.
    The model's mode is left alone: the caller decides (training attacks run in eval mode).
    Gradients flow only to the input; parameter gradients are neither computed nor accumulated.
    """
    check_budget(eps, steps)
    loss_fn = loss_fn or ce_loss
    x = x.detach()
    x_adv = random_init(x, eps, random_start, clamp_start)
    if eps == 0:
        return project_linf(x_adv, x, eps)
    with frozen_params(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project_linf(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()


@dataclass(frozen=True)
class AttackSettings:
    """The details of the evaluation attacks that differ between authors' test scripts.

    The defaults are SPEC section 5; the protocols set the ``eval.*`` fields of the same names.
    AT-BSL ``eval.py`` (NISPLab/AT-BSL): FGSM from x + 0.001 N(0, 1), PGD-20 / CW-20 / LSA from
    x + U(-eps, eps), neither start clipped to [0, 1]. RoBal ``attacks/pgd_attack.py`` and
    ``attacks/other_attacks.py`` (wutong16/Adversarial_Long-Tail): step 0.0078, FGSM from x, PGD,
    CW and MIM from x + U(-eps, eps), unclipped.
    """

    alpha: float | None = None  # step of pgd20, cw, lsa and mim; None: eps / 4
    fgsm_init: str = "zero"  # start of fgsm (its one step is always eps)
    pgd_init: str = "uniform"  # start of pgd20, cw and lsa
    mim_init: str = "zero"  # start of mim
    clamp_start: bool = True  # project the random start onto the ball and [0, 1] before the first gradient

    def __post_init__(self):
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        for name in ("fgsm_init", "pgd_init", "mim_init"):
            if getattr(self, name) not in INITS:
                raise ValueError(f"{name} must be one of {', '.join(INITS)}, got {getattr(self, name)!r}")

    def step(self, eps: float) -> float:
        return eps / 4 if self.alpha is None else self.alpha

    @classmethod
    def of(cls, obj) -> AttackSettings:
        """``obj``'s fields of these names (e.g. a run's ``cfg.eval``); ``None``: the defaults."""
        if obj is None or isinstance(obj, cls):
            return obj or cls()
        return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls) if hasattr(obj, f.name)})


DEFAULT_SETTINGS = AttackSettings()


@register(ATTACKS, "clean")
def clean(model, x, y, eps, settings=None):
    return x


def _pgd20(model, x, y, eps, settings, loss_fn=None):
    s = settings or DEFAULT_SETTINGS
    return pgd(model, x, y, eps=eps, alpha=s.step(eps), steps=20, loss_fn=loss_fn, random_start=s.pgd_init,
               clamp_start=s.clamp_start)


@register(ATTACKS, "pgd20")
def pgd20(model, x, y, eps, settings=None):
    """PGD-20, step eps/4 (2/255 at 8/255), uniform random start, CE loss (SPEC section 5);
    ``settings.alpha``, ``pgd_init`` and ``clamp_start`` change the step and the start."""
    return _pgd20(model, x, y, eps, settings)


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
def fgsm(model, x, y, eps, settings=None):
    """FGSM: one signed-gradient step of size eps on CE from x itself, no random start (Goodfellow et
    al., "Explaining and Harnessing Adversarial Examples", ICLR 2015, arXiv 1412.6572);
    ``settings.fgsm_init`` / ``clamp_start`` start it elsewhere (AT-BSL: x + 0.001 N(0, 1), unclipped)."""
    s = settings or DEFAULT_SETTINGS
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1, random_start=s.fgsm_init, clamp_start=s.clamp_start)


@register(ATTACKS, "cw")
def cw(model, x, y, eps, settings=None):
    """CW-inf: PGD-20 (step eps/4, uniform start) on :func:`cw_loss` with confidence 50 (SPEC section 5).
    The reference scripts sum (AT-BSL, CAT's form) or average (RoBal) the loss over the batch: the
    per-sample gradients differ by a positive factor, so the signed steps are the same."""
    return _pgd20(model, x, y, eps, settings, cw_loss)


@register(ATTACKS, "lsa")
def lsa(model, x, y, eps, settings=None):
    """Logit-scaled attack: PGD-20 (step eps/4, uniform start) on CE of the logits times 10 (SPEC section 5)."""
    return _pgd20(model, x, y, eps, settings, scaled_ce_loss)


from . import autoattack  # noqa: E402,F401  (registers aa, aa_apgd and aa_torchattacks)
from . import mim as _mim  # noqa: E402,F401  (registers ATTACKS["mim"])
