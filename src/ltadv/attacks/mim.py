"""MIM: the momentum iterative attack (MI-FGSM), L-inf.

Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018, arXiv 1710.06081, Algorithm 1:
g_{t+1} = mu * g_t + grad / ||grad||_1 (per sample), x_{t+1} = clip_{x, eps}(x_t + alpha * sign(g_{t+1})),
started at x itself, decay mu = 1.0 as in the paper. The evaluation entry ``mim`` uses 20 steps of
alpha = eps / 4 (2/255 at 8/255), the same budget as ``pgd20``, as robustness papers report MIM-20.
RoBal's test script (``attacks/other_attacks.py``, wutong16/Adversarial_Long-Tail) starts it at
x + U(-eps, eps), unclipped, with step 0.0078 (``eval.mim_init uniform``, ``eval.clamp_start false``,
``eval.alpha 0.0078``) and divides the gradient by its mean absolute value instead of its L1 norm:
a factor of the input size, the same for every step, so the same signs.
L2 (``settings.norm l2``): the paper's L2 variant (section 3.1), x_{t+1} = x_t + alpha * g_{t+1} / ||g_{t+1}||_2,
projected onto the L2 ball and [0, 1].
"""

from __future__ import annotations

import torch

from ..registry import register
from . import (
    ATTACKS,
    DEFAULT_SETTINGS,
    _is_zero,
    ascent_direction,
    ce_loss,
    check_budget,
    frozen_params,
    project,
    random_init,
)


def mim(model, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int, mu: float = 1.0,
        loss_fn=None, random_start: bool | str = False, clamp_start: bool = True, norm: str = "linf") -> torch.Tensor:
    """Momentum iterative FGSM in the ``norm`` eps-ball around x (L-inf default, or L2), intersected with [0, 1].

    Starts at x (the paper) unless ``random_start`` names a start (see :func:`ltadv.attacks.random_init`).
    The model's mode is left alone (callers evaluate in eval mode); parameters get no gradients.
    """
    check_budget(eps, steps)
    loss_fn = loss_fn or ce_loss
    x = x.detach()
    x_adv = random_init(x, eps, random_start, clamp_start, norm)
    if _is_zero(eps):
        return project(x_adv, x, eps, norm)
    g = torch.zeros_like(x)
    with frozen_params(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(model(x_adv), y), x_adv)
            l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            g = mu * g + grad / l1
            x_adv = project(x_adv.detach() + alpha * ascent_direction(g, norm), x, eps, norm)
    return x_adv.detach()


@register(ATTACKS, "mim")
def mim20(model, x, y, eps, settings=None):
    """MIM-20: 20 steps of eps / 4, decay 1.0, from x (Dong et al., CVPR 2018, arXiv 1710.06081);
    ``settings.alpha``, ``mim_init`` and ``clamp_start`` change the step and the start."""
    s = settings or DEFAULT_SETTINGS
    return mim(model, x, y, eps=eps, alpha=s.step(eps), steps=20, mu=1.0, random_start=s.mim_init,
               clamp_start=s.clamp_start, norm=s.norm)
