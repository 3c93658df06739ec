"""RobustLT's class-wise wrapper: a per-class perturbation budget that grows towards the tail.

Zhang, Guo, Li, Shi, Liu, "Taming the Long Tail: Rebalancing Adversarial Training via Adaptive
Perturbation", CVPR 2026; code zhang-lilin/RobustLT (core/methods/robustlt.py; configs/*/robustlt_*.yaml).
With n_c the training images of class c, N their sum, r_c = sqrt(log(n_max / n_c)) and alpha =
``method.robustlt_alpha``:

    tau = alpha / sum_c (n_c / N) r_c,    eps_c = (1 - alpha) eps + tau r_c eps

so the head keeps (1 - alpha) eps, the tail gets more, and the sample-weighted mean of eps_c is eps.
The budget ramps in linearly: eps_c(t) = eps_c * min((t - 1) / (beta * E), 1) at 1-based epoch t of E
(``method.robustlt_beta``; 0: the full budget from the start), so the first epoch trains on x itself.
Each sample's attack uses its class's eps and a step scaled alike (alpha_i = alpha * eps_i / eps); the
random start is drawn with the global eps, as RobustLT's ``get_adversarial_examples`` draws it, and the
first projection onto the sample's own ball follows the first step.

Composes with every method whose attack is the base PGD on cross entropy (at, at_bsl, mart, robal, taet,
the long-tail baselines); RobustLT also wraps REAT, whose attack ltadv weights differently (not wired).
Differences from RobustLT's run, as everywhere in ltadv: the attack runs in eval mode (RobustLT: train
mode with BN batch statistics) and its loss is the summed CE (same sign of the gradient as their mean).
All classes of equal size (r = 0 everywhere, RobustLT's tau divides by zero) give eps_c = eps.
"""

from __future__ import annotations

import math

import torch

from ..attacks import ce_loss, frozen_params, project_linf, random_init


def robustlt_eps(class_counts, eps: float, alpha: float) -> list[float]:
    """The full per-class budgets eps_c (before the ramp)."""
    n = [float(c) for c in class_counts]
    total, n_max = sum(n), max(n)
    r = [math.sqrt(math.log(n_max / c)) for c in n]
    weighted = sum(c / total * rc for c, rc in zip(n, r))
    if weighted == 0:
        return [eps] * len(n)
    tau = alpha / weighted
    return [(1 - alpha) * eps + tau * rc * eps for rc in r]


def robustlt_intensity(epoch: int, epochs: int, beta: float) -> float:
    """The ramp at 0-based ``epoch`` (RobustLT's 1-based ``(current_epoch - 1) / (beta * num_epochs)``)."""
    return min(epoch / (beta * epochs), 1.0) if beta > 0 else 1.0


def classwise_pgd(model, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, eps_start: float, alpha: float,
                  steps: int, random_start="uniform", clamp_start: bool = True) -> torch.Tensor:
    """L-inf PGD on summed CE with a per-sample budget ``eps`` (N,) and step ``alpha * eps / eps_start``."""
    x = x.detach()
    e = eps.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    step = alpha * e / eps_start if eps_start > 0 else torch.zeros_like(e)
    x_adv = random_init(x, eps_start, random_start, clamp_start)
    with frozen_params(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(ce_loss(model(x_adv), y), x_adv)
            x_adv = project_linf(x_adv.detach() + step * grad.sign(), x, eps.to(x.dtype))  # per-sample [N]
    return x_adv.detach()


def robustlt_perturb(method, model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The method's attack with RobustLT's class-wise budgets at the method's current epoch."""
    cfg, a = method.cfg, method.cfg.attack
    scale = robustlt_intensity(method.epoch, cfg.train.epochs, cfg.method.robustlt_beta)
    per_class = torch.tensor(robustlt_eps(method.class_counts, a.eps, cfg.method.robustlt_alpha), device=x.device)
    classes = target if target.dim() == 1 else target.argmax(1)
    return classwise_pgd(model, x, target, per_class[classes] * scale, a.eps, method.alpha, a.steps,
                         random_start=a.init, clamp_start=a.clamp_start)
