"""RoBal: Wu et al., "Adversarial Robustness under Long-Tailed Distribution", CVPR 2021, arXiv 2104.02703.

Four parts, each a switch (``method.bsl``, ``method.cosine``, ``method.margin``, ``method.trades``):
1. balanced-softmax class biases tau_b * log n_i (``tau_b``);
2. cosine classifier s * W_i^T f / ((||W_i|| + gamma) ||f||) (``s``, ``gamma``; the model's head);
3. class-aware margin m_i = (tau_m / s) log(n_i / n_min) + m0 subtracted from the true class's cosine;
4. TRADES regulariser beta * KL( p(x) || p(x') ) on the model's logits (``beta``).
All on is RoBal; all off is plain AT (CE on the PGD examples). Defaults are RoBal's CIFAR-10-LT
config (s 10, m0 0.1, tau_m 0.3, tau_b 1.5 via ``presets/methods/robal.yaml``, beta 6).

The training attack maximises plain CE on the model's logits; the method preset starts it at
x + U[0, eps) as RoBal's code does (``attack.init uniform_plus``). Where RoBal's code runs three
forward passes per step (x' for the loss, then x and x' again for the KL), this runs two and
reuses the adversarial logits. One difference: RoBal's code applies s inside the loss (its head
outputs plain cosines, so its attack and KL see cos), while our head outputs s * cos, so the attack,
the KL and evaluation all see the logits the model predicts with.
"""

from __future__ import annotations

from ..losses import robal_loss
from ..registry import register
from . import METHODS, Method


@register(METHODS, "robal")
class RoBal(Method):
    @property
    def head(self) -> str:
        return "cosine" if self.cfg.method.cosine else self.cfg.model.head

    def loss(self, model, x, x_adv, target):
        m = self.cfg.method
        logits_adv = model(x_adv)
        logits_clean = model(x) if m.trades else None
        loss = robal_loss(logits_adv, target, self.class_counts, logits_clean=logits_clean, tau_b=m.tau_b, s=m.s,
                          tau_m=m.tau_m, m0=m.m0, beta=m.beta, bsl=m.bsl, margin=m.margin)
        return {"loss": loss, "logits": logits_adv}
