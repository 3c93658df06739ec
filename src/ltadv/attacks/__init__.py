"""Attacks are pure functions ``(model, x, y, ...) -> x_adv`` on pixels in [0, 1].

The threat model lives in :func:`project` (L-inf: :func:`project_linf`, L2: :func:`project_l2`), the one
projection every attack uses, and :func:`ascent_direction` (the sign of the gradient for L-inf, the
gradient over its L2 norm for L2). ``eps`` is a float or a per-sample tensor of shape [B].
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


NORMS = ("linf", "l2")


def per_sample(eps, x: torch.Tensor):
    """``eps`` as it broadcasts against ``x``: a float stays a float; a tensor of shape [B] (one radius per
    sample, e.g. a per-class budget indexed by the labels) becomes [B, 1, ..., 1] on x's device."""
    if isinstance(eps, torch.Tensor):
        if eps.dim() == 0:
            return float(eps)
        if eps.shape != (x.shape[0],):
            raise ValueError(f"a per-sample eps must have shape [{x.shape[0]}], got {list(eps.shape)}")
        return eps.to(x.device, torch.float32).view(-1, *([1] * (x.dim() - 1)))
    return eps


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps) -> torch.Tensor:
    """Project onto the L-inf ball of radius eps around x, intersected with the pixel box [0, 1]."""
    eps = per_sample(eps, x)
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def _l2(v: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of v, shaped [B, 1, ..., 1]."""
    return v.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (v.dim() - 1)))


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps) -> torch.Tensor:
    """Scale delta = x_adv - x down to L2 norm eps when it is longer, then clamp x + delta to [0, 1].

    torchattacks' PGDL2 order (``attacks/pgdl2.py``, v3.5.1): the clamp moves each pixel towards x (x is
    in [0, 1]), so it can only shorten delta and the result stays in the ball and the box.
    """
    eps = per_sample(eps, x)
    delta = x_adv - x
    factor = torch.clamp(eps / (_l2(delta) + 1e-12), max=1.0)
    return (x + delta * factor).clamp_(0.0, 1.0)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps, norm: str = "linf") -> torch.Tensor:
    """The threat model: onto the ``norm`` ball of radius eps around x, intersected with [0, 1]."""
    if norm == "linf":
        return project_linf(x_adv, x, eps)
    if norm == "l2":
        return project_l2(x_adv, x, eps)
    raise ValueError(f"unknown norm {norm!r}; use {' or '.join(NORMS)}")


def ascent_direction(grad: torch.Tensor, norm: str = "linf") -> torch.Tensor:
    """The steepest-ascent step of unit size: sign(grad) for L-inf, grad / ||grad||_2 per sample for L2
    (torchattacks PGDL2 divides by the norm plus 1e-10, so a zero gradient gives no step)."""
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / (_l2(grad) + 1e-10)
    raise ValueError(f"unknown norm {norm!r}; use {' or '.join(NORMS)}")


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross entropy on the raw logits (hard or soft targets): the reference attack loss."""
    if y.dim() == logits.dim():
        return -(y * F.log_softmax(logits.float(), dim=1)).sum()
    return F.cross_entropy(logits.float(), y, reduction="sum")


def check_budget(eps, steps: int) -> None:
    """The checks every iterative attack makes on its budget (``eps`` a float or a per-sample tensor)."""
    if isinstance(eps, torch.Tensor):
        if not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
            raise ValueError(f"every per-sample eps must be finite and >= 0, got {eps.tolist()}")
    elif eps < 0:
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


def _is_zero(eps) -> bool:
    return bool((eps == 0).all()) if isinstance(eps, torch.Tensor) else eps == 0


def random_init(x: torch.Tensor, eps, random_start: bool | str, clamp: bool = True,
                norm: str = "linf") -> torch.Tensor:
    """Starting point: ``True``/``"uniform"`` U(-eps, eps), ``"normal"`` x + 0.001 N(0, 1)
    (the AT-BSL/TRADES reference), ``"uniform_plus"`` x + U[0, eps) (the RoBal training attack,
    wutong16/Adversarial_Long-Tail), ``False``/``"zero"`` x itself.

    With ``clamp`` (default) the start is projected onto the eps-ball and [0, 1]; without it the
    noisy start is used as drawn, pixels outside [0, 1] included, as the AT-BSL and RoBal test
    scripts do (their first projection comes after the first step).

    L2 (``norm="l2"``): ``"uniform"`` is torchattacks' PGDL2 start (``attacks/pgdl2.py``, v3.5.1): a
    Gaussian direction scaled to length r * eps with r ~ U(0, 1) per sample; ``"normal"`` and ``"zero"``
    are as above; ``"uniform_plus"`` has no L2 counterpart and is refused.
    """
    eps_b = per_sample(eps, x)
    if norm == "l2" and random_start not in (False, "zero", "normal"):
        if random_start == "uniform_plus":
            raise ValueError("the uniform_plus start (x + U[0, eps)) is L-inf only; "
                             "use uniform, normal or zero with L2")
        if random_start is not True and random_start != "uniform":
            raise ValueError(f"unknown random_start {random_start!r}")
        d = torch.randn_like(x)
        r = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
        start = x + d / (_l2(d) + 1e-12) * r * eps_b
    elif random_start is True or random_start == "uniform":
        start = x + (torch.rand_like(x) * 2 - 1) * eps_b
    elif random_start == "uniform_plus":
        start = x + eps_b * torch.rand_like(x)
    elif random_start == "normal":
        start = x + 0.001 * torch.randn_like(x)
    elif random_start is False or random_start == "zero":
        return x.clone()
    else:
        raise ValueError(f"unknown random_start {random_start!r}")
    return project(start, x, eps, norm) if clamp else start


def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps,
    alpha,
    steps: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    random_start: bool | str = True,
    clamp_start: bool = True,
    norm: str = "linf",
) -> torch.Tensor:
    """Projected gradient ascent (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018, arXiv 1706.06083), L-inf (default) or L2.

    ``loss_fn(logits, y)`` is maximised (default: summed cross entropy on raw logits); ``y`` may be
    labels, soft labels or any target the loss understands (TRADES passes the clean logits).
    ``eps`` (and ``alpha``) may be a float or a per-sample tensor of shape [B] (e.g. a per-class budget
    ``class_eps[y]``). L-inf steps ``alpha * sign(grad)``; L2 steps ``alpha * grad / ||grad||_2`` per sample
    and projects by rescaling delta, as torchattacks' PGDL2 (v3.5.1); both then clamp to [0, 1].
    ``clamp_start=False`` takes the first gradient at the random start as drawn (see
    :func:`random_init`); every step still ends with the projection, so x_adv is in the ball and box.
    The model's mode is left alone: the caller decides (training attacks run in eval mode).
    Gradients flow only to the input; parameter gradients are neither computed nor accumulated.
    """
    check_budget(eps, steps)
    loss_fn = loss_fn or ce_loss
    x = x.detach()
    x_adv = random_init(x, eps, random_start, clamp_start, norm)
    if _is_zero(eps):
        return project(x_adv, x, eps, norm)
    step = per_sample(alpha, x)
    with frozen_params(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + step * ascent_direction(grad, norm), x, eps, norm)
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
    norm: str = "linf"  # the threat model: linf | l2 (eps is then an L2 radius in pixel units)

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
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
        # a None norm (``eval.norm`` unset: the training norm) is resolved by the caller (ltadv.threat)
        return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls) if hasattr(obj, f.name)
                      and not (f.name == "norm" and getattr(obj, f.name) is None)})


DEFAULT_SETTINGS = AttackSettings()


@register(ATTACKS, "clean")
def clean(model, x, y, eps, settings=None):
    return x


def _pgd20(model, x, y, eps, settings, loss_fn=None):
    s = settings or DEFAULT_SETTINGS
    return pgd(model, x, y, eps=eps, alpha=s.step(eps), steps=20, loss_fn=loss_fn, random_start=s.pgd_init,
               clamp_start=s.clamp_start, norm=s.norm)


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
    ``settings.fgsm_init`` / ``clamp_start`` start it elsewhere (AT-BSL: x + 0.001 N(0, 1), unclipped).
    L2 (``settings.norm``): one step of length eps along grad / ||grad||_2 (the fast gradient method)."""
    s = settings or DEFAULT_SETTINGS
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1, random_start=s.fgsm_init, clamp_start=s.clamp_start,
               norm=s.norm)


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
