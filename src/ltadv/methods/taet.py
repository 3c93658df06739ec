"""TAET: two-stage adversarial equalization training.

Wang Yu-Hang et al., "TAET: Two-Stage Adversarial Equalization Training on Long-Tailed Distributions",
CVPR 2025, arXiv 2503.01924; the authors' code BuhuiOK/TAET-Two-Stage-Adversarial-Equalization-Training-
on-Long-Tailed-Distributions (code/HARL.py and the ``train_model`` loop of code/TAET/TAET.ipynb).

- Stage 1, the "initial stabilization" (0-based epochs ``< method.taet_ce_epochs``, the notebook's
  ``if epoch < 40`` of 100): cross entropy on the clean images, no attack.
- Stage 2, HARL: the run's PGD attack (the authors': model in eval mode, start x + 0.001 N(0, 1), 10 steps
  of 0.003 in an L-inf ball of 0.031 on mean CE, first gradient at the unclipped start), then on the
  adversarial logits, with l_i the per-sample CE and, for EVERY class c (an absent class has L_c = 0 and
  still counts in the means), L_c = sum_{y_i = c} l_i / (n_c + 1e-10):

      L = alpha * mean_c L_c + beta * mean_c (L_c - mean L)^2 + gamma * sum_c (L_c / (sum_c L_c + 1e-10))^2

  (balanced cross-class, hierarchical deviation and rare-class emphasis terms; alpha = beta = gamma = 0.1).
- The notebook runs ``outputs = model(inputs)`` on the clean batch in train mode before either branch
  (unused, but it moves the BN running statistics); reproduced here with one gradient-free clean forward.

RobustLT's re-implementation (zhang-lilin/RobustLT core/methods/taet.py, configs/*/taet_*.yaml) computes
the same HARL loss but differs in the schedule and the attack: its 1-based ``current_epoch < ce_epochs``
gives 39 clean epochs, its attack runs in train mode with BN batch statistics from a U(-eps, eps) start
(step 2/255, eps 8/255), and it has no extra clean forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses import cross_entropy
from ..registry import register
from . import METHODS, Method


def harl_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.1, beta: float = 0.1,
              gamma: float = 0.1) -> torch.Tensor:
    """TAET's hierarchical adversarial robustness loss (HARL.py) on the adversarial logits.

    Soft targets (Mixup / CutMix) give soft per-sample CE, and each sample counts for its largest class.
    """
    num_classes = logits.shape[1]
    log_p = F.log_softmax(logits.float(), dim=1)
    if target.dim() == 2:
        per_sample, hard = -(target * log_p).sum(1), target.argmax(1)
    else:
        per_sample, hard = F.nll_loss(log_p, target, reduction="none"), target
    mask = F.one_hot(hard, num_classes).float()  # N x C
    class_losses = (per_sample[:, None] * mask).sum(0) / (mask.sum(0) + 1e-10)
    mean = class_losses.mean()
    share = class_losses / (class_losses.sum() + 1e-10)
    return alpha * mean + beta * ((class_losses - mean) ** 2).mean() + gamma * (share ** 2).sum()


@register(METHODS, "taet")
class TAET(Method):
    def clean_stage(self) -> bool:
        return self.epoch < self.cfg.method.taet_ce_epochs

    def perturb(self, model, x, target):
        return x if self.clean_stage() else super().perturb(model, x, target)

    def loss(self, model, x, x_adv, target):
        with torch.no_grad():
            model(x)  # the notebook's unused clean forward in train mode: BN running statistics move
        m = self.cfg.method
        if self.clean_stage():
            logits = model(x)
            return {"loss": cross_entropy(logits, target), "logits": logits}
        logits = model(x_adv)
        return {"loss": harl_loss(logits, target, m.taet_alpha, m.taet_beta, m.taet_gamma), "logits": logits}
