"""PGD adversarial training (AT) and AT with the Balanced Softmax Loss (AT-BSL).

AT: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018,
arXiv 1706.06083: min E[ CE(z(x'), y) ], x' from PGD on CE.
AT-BSL: Yue et al., "Revisiting Adversarial Training under Long-Tailed Distributions", CVPR 2024,
arXiv 2403.10073: the same attack (plain CE on raw logits), outer loss BSL(z(x'), y) with tau_b.
Both take ``method.outer_loss`` / ``method.reweight`` (methods/outer.py) to swap in a long-tail baseline loss.
"""

from __future__ import annotations

from ..registry import register
from . import METHODS, Method


@register(METHODS, "at")
class AT(Method):
    def loss(self, model, x, x_adv, target):
        logits = model(x_adv)
        return {"loss": self.outer(logits, target, "ce"), "logits": logits}


@register(METHODS, "at_bsl")
class ATBSL(Method):
    def loss(self, model, x, x_adv, target):
        logits = model(x_adv)
        loss = self.outer(logits, target, "bsl")  # method.outer_loss auto: BSL with tau_b
        return {"loss": loss, "logits": logits}
