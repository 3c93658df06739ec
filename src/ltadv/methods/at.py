"""PGD adversarial training (AT) and AT with the Balanced Softmax Loss (AT-BSL).

AT: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018,
arXiv 1706.06083: min E[ CE(z(x'), y) ], x' from PGD on CE.
AT-BSL: Yue et al., "Revisiting Adversarial Training under Long-Tailed Distributions", CVPR 2024,
arXiv 2403.10073: the same attack (plain CE on raw logits), outer loss BSL(z(x'), y) with tau_b.
"""

from __future__ import annotations

from ..losses import balanced_softmax_loss, cross_entropy
from ..registry import register
from . import METHODS, Method


@register(METHODS, "at")
class AT(Method):
    def loss(self, model, x, x_adv, target):
        logits = model(x_adv)
        return {"loss": cross_entropy(logits, target), "logits": logits}


@register(METHODS, "at_bsl")
class ATBSL(Method):
    def loss(self, model, x, x_adv, target):
        logits = model(x_adv)
        loss = balanced_softmax_loss(logits, target, self.class_counts, tau_b=self.cfg.method.tau_b)
        return {"loss": loss, "logits": logits}
