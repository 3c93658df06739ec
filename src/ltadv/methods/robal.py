"""RoBal: Wu et al., "Adversarial Robustness under Long-Tailed Distribution", CVPR 2021, arXiv 2104.02703.

Four parts, each a switch (``method.bsl``, ``method.cosine``, ``method.margin``, ``method.trades``):
1. balanced-softmax class biases tau_b * log n_i (``tau_b``);
2. cosine classifier s * W_i^T f / ((||W_i|| + gamma) ||f||) (``s``, ``gamma``; the model's head);
3. class-aware margin m_i = (tau_m / s) log(n_i / n_min) + m0 subtracted from the true class's cosine;
4. TRADES regulariser beta * KL( p(x) || p(x') ) on the model's logits (``beta``).
All on is RoBal; all off is plain AT (CE on the PGD examples). Defaults are RoBal's CIFAR-10-LT
config (s 10, m0 0.1, tau_m 0.3, tau_b 1.5 via ``presets/methods/robal.yaml``, beta 6).

The training attack maximises plain CE on the model's outputs; the method preset starts it at
x + U[0, eps) as RoBal's code does (``attack.init uniform_plus``). Where RoBal's code runs three
forward passes per step (x' for the loss, then x and x' again for the KL), this runs two and
reuses the adversarial logits.

Where s lives (``method.scale_in``). ``loss`` (default, RoBal's code: configs/*robal*_train.yaml set the
CosPlus classifier's ``scale: 1`` and MultiMarginLoss applies s): the head outputs cos, the loss is
CE(s * (cos - m_y) + tau_b log n), and the training attack and the TRADES KL see cos, i.e. softmax at
temperature s; at test time the head stays at scale 1 unless a post-hoc tau_p is set, when
RoBal's PostProc classifier multiplies by s before subtracting tau_p log prior. ``head``: the head outputs
s * cos, so the attack, the KL and evaluation all see the logits the model predicts with (the
paper's Eq. (3) reading; sharper KL, stronger training attack).
"""

from __future__ import annotations

from ..losses import robal_loss, trades_kl
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
        # RoBal's code: the head outputs cos, s multiplies inside the loss only (MultiMarginLoss)
        scale = m.s if (self.head == "cosine" and m.scale_in == "loss") else 1.0
        loss = robal_loss(logits_adv * scale, target, self.class_counts, logits_clean=None, tau_b=m.tau_b, s=m.s,
                          tau_m=m.tau_m, m0=m.m0, beta=m.beta, bsl=m.bsl, margin=m.margin)
        if m.trades:  # on the model's outputs (cos with scale_in loss), as RoBal's add_reg_train
            loss = loss + m.beta * trades_kl(logits_clean, logits_adv)
        return {"loss": loss, "logits": logits_adv}
