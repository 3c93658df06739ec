"""TRADES and MART: adversarial training with a clean-vs-adversarial KL regulariser.

TRADES: Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019,
arXiv 1901.08573. Inner maximisation: PGD on KL( p(x) || p(x') ) started at x + 0.001 N(0, 1)
(``attack.init normal``, the default); outer loss CE(z(x), y) + beta * KL( p(x) || p(x') ), beta = 6.
MART: Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified Examples",
ICLR 2020 (OpenReview rklOg6EFwS). Inner maximisation: PGD on plain CE (as AT); outer loss
BCE(z(x'), y) + beta * mean[ KL( p(x) || p(x') ) (1 - p_y(x)) ], beta = 6.
Both run two forward passes in the loss (x and x'); TRADES computes the clean logits of its attack
once (the model is in eval mode, so they do not change between PGD steps).
"""

from __future__ import annotations

import torch

from ..attacks import pgd
from ..losses import mart_loss, trades_kl, trades_loss
from ..registry import register
from . import METHODS, Method


def kl_attack_loss(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """Summed KL( p(x) || p(x') ): TRADES's inner objective (``pgd`` passes the clean logits as ``y``)."""
    return trades_kl(logits_clean, logits_adv, reduction="sum")


@register(METHODS, "trades")
class TRADES(Method):
    def perturb(self, model, x, target):
        with torch.no_grad():
            logits_clean = model(x).detach()
        a = self.cfg.attack
        return pgd(model, x, logits_clean, eps=self.batch_eps(target), alpha=self.alpha, steps=a.steps,
                   loss_fn=kl_attack_loss, random_start=a.init, clamp_start=a.clamp_start, norm=a.norm)

    def loss(self, model, x, x_adv, target):
        logits_clean = model(x)
        logits_adv = model(x_adv)
        if self.cfg.method.outer_loss == "auto" and self.cfg.method.reweight == "none":
            loss = trades_loss(logits_clean, logits_adv, target, beta=self.cfg.method.beta)
        else:  # a long-tail baseline as the natural term (methods/outer.py)
            loss = self.outer(logits_clean, target, "ce") + self.cfg.method.beta * trades_kl(logits_clean, logits_adv)
        return {"loss": loss, "logits": logits_adv}


@register(METHODS, "mart")
class MART(Method):
    def loss(self, model, x, x_adv, target):
        logits_clean = model(x)
        logits_adv = model(x_adv)
        loss = mart_loss(logits_clean, logits_adv, target, beta=self.cfg.method.beta)
        return {"loss": loss, "logits": logits_adv}
