"""Adversarial Weight Perturbation (AWP), a switch on any training objective whose loss is pure.

Wu, Xia, Wang, "Adversarial Weight Perturbation Helps Robust Generalization", NeurIPS 2020,
arXiv 2004.05884; code csdongxian/AWP (AT_AWP/utils_awp.py ``AdvWeightPerturb``, trades_AWP/utils_awp.py
``TradesAWP``; the same scheme in RobustLT, zhang-lilin/RobustLT core/methods/awp.py).

Per training step, after the attack has produced x' (the authors use that same x': AWP has no attack
of its own, and one ascent step on the weights, their ``awp_iter=1``):

1. a proxy copy of the model, in train mode (its BN uses batch statistics; the model's running
   statistics are untouched, "a proxy model ... which does not affect the statistics of BN"), takes
   the gradient g of the training loss at x'. The authors' proxies maximise the objective the step
   minimises: AT-AWP ``-CE(proxy(x'), y)``, TRADES-AWP ``-(CE(proxy(x), y) + beta KL(p(x) || p(x')))``
   with the gradient through both branches. ltadv calls the method's own ``loss`` on the proxy, which
   is exactly those two for ``at`` and ``trades``, and BSL for ``at_bsl``;
2. every weight with more than one dimension whose name holds ``weight`` (conv and linear
   matrices; not biases, not BN's affine vectors) is moved by
   ``v = gamma * ||W|| / (||g|| + 1e-20) * g``, per layer, Frobenius norms (``diff_in_weights``:
   the authors take one SGD step on the proxy and rescale the difference ``lr * g``, so their proxy
   learning rate cancels; this is the exact direction that finite difference rounds);
3. the loop's step runs on the perturbed model (loss, backward, optimizer step), then ``v`` is
   subtracted again (``restore``: the update the step made stays, the perturbation goes).

AWP is on from 1-based epoch ``method.awp_warmup`` (AT-AWP: ``epoch >= 0`` 0-based, i.e. from the
start; TRADES-AWP: ``epoch >= 10`` 1-based; RobustLT ``current_epoch > 0``, from the start).
"""

from __future__ import annotations

import contextlib
import copy

import torch

EPS = 1e-20  # utils_awp.py's EPS in ||W|| / (||diff|| + EPS)


def perturbed_names(model: torch.nn.Module) -> list[str]:
    """The parameters AWP moves: ``'weight' in name`` and more than one dimension (``diff_in_weights``)."""
    return [n for n, p in model.named_parameters() if "weight" in n and p.dim() > 1]


def weight_perturbation(weights: dict[str, torch.Tensor], grads: dict[str, torch.Tensor | None],
                        gamma: float) -> dict[str, torch.Tensor]:
    """``{name: gamma * ||W|| / (||g|| + 1e-20) * g}``, one Frobenius norm per layer (a missing g: 0)."""
    out = {}
    for name, w in weights.items():
        g = grads.get(name)
        g = torch.zeros_like(w) if g is None else g.to(w.dtype)
        out[name] = gamma * w.norm() / (g.norm() + EPS) * g
    return out


def add_into(model: torch.nn.Module, diff: dict[str, torch.Tensor], coeff: float = 1.0) -> None:
    """``W += coeff * diff[name]`` in place for every named parameter in ``diff`` (``add_into_weights``)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in diff:
                p.add_(diff[name] if coeff == 1.0 else coeff * diff[name])


def _mean_over_processes(grads):
    """Under DDP, the proxy gradient of the whole global batch (the authors' DataParallel proxy sees it all),
    so every process adds the same perturbation and subtracts it again exactly."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return grads
    out = []
    for g in grads:
        if g is not None:
            g = g.contiguous()
            dist.all_reduce(g)
            g = g / dist.get_world_size()
        out.append(g)
    return out


class AWP:
    """The adversary on the weights of one model: ``v = awp.perturb(...)``, the step, ``awp.restore(v)``."""

    def __init__(self, model: torch.nn.Module, gamma: float, warmup: int = 0):
        self.gamma, self.warmup = float(gamma), int(warmup)
        self.proxy = copy.deepcopy(model)  # made once; loaded from the model before each step
        self.names = perturbed_names(model)

    def active(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` (1-based ``epoch + 1``) uses AWP."""
        return epoch + 1 >= self.warmup

    def perturb(self, model, method, x, x_adv, target, autocast=None) -> dict[str, torch.Tensor] | None:
        """Compute ``v`` on the proxy and add it to ``model``'s weights; None (nothing done) before warm-up."""
        if not self.active(method.epoch):
            return None
        self.proxy.load_state_dict(model.state_dict())
        self.proxy.train()
        params = dict(self.proxy.named_parameters())
        with torch.enable_grad(), (autocast or contextlib.nullcontext)():
            loss = method.loss(self.proxy, x, x_adv, target)["loss"]
        grads = torch.autograd.grad(loss.float(), [params[n] for n in self.names], allow_unused=True)
        grads = _mean_over_processes(grads)
        weights = {n: p.detach() for n, p in model.named_parameters() if n in self.names}
        diff = weight_perturbation(weights, dict(zip(self.names, grads)), self.gamma)
        add_into(model, diff)
        return diff

    @staticmethod
    def restore(model, diff: dict[str, torch.Tensor] | None) -> None:
        """Subtract the perturbation again after the optimizer step (``restore``: coeff -1)."""
        if diff is not None:
            add_into(model, diff, -1.0)


def build(cfg, model: torch.nn.Module) -> AWP | None:
    """The run's AWP adversary, or None when ``method.awp`` is off."""
    return AWP(model, cfg.method.awp_gamma, cfg.method.awp_warmup) if cfg.method.awp else None
