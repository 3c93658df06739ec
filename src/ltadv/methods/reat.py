"""REAT: Li, Xu and Zhang, "Adversarial Training Over Long-Tailed Distribution" (later "Alleviating the
Effect of Data Imbalance on Adversarial Training"), arXiv 2307.10205; public code GuanlinLee/REAT.

Two parts:
1. **Re-balancing loss (RBL) for the inner maximisation**: PGD on CE weighted per class by
   w_i proportional to 1 / E_i, E_i = (1 - beta_i^{a_i}) / (1 - beta_i), beta_i = (n_i - 1) / n_i
   (effective numbers, Cui et al. 2019), where a_i counts the previous epoch's adversarial examples
   *predicted* as class i (the first epoch uses a_i = n_i); weights normalised to sum to C.
   We clamp a_i >= 1 so that a class nobody was predicted as gets E_i = 1 rather than weight 1e5.
   Note: with the model in eval mode each sample's loss depends only on its own input, so a positive
   per-sample weight leaves the sign of its input gradient, hence every PGD step, unchanged; the
   RBL attack therefore produces the same x' as PGD on CE from the same start (tested). We keep it
   because it is the paper's objective (and it matters for any attack that is not sign-based).
2. **Outer loss**: BSL(z(x'), y) (tau_b = 1) + lambda * TAIL, the tail-feature term over the
   penultimate features f of the adversarial batch:
   TAIL = 1/|T| sum_{i in T} 1/N sum_j s_ij (w_{y_i} + w_{y_j}) KL( softmax(f_i) || softmax(f_j) ),
   T = batch samples of tail classes (the last C // 3 classes by count), w_c = sqrt(1 / prior_c),
   s_ij = -1 for same-class pairs and +1 otherwise, the anchor f_i detached. The sign convention,
   weights and tail set follow the authors' code; their reduction (``KLDivLoss`` averaged to a
   scalar before the pair weights) collapses the pairwise sum into a product of two means; we
   compute the pairwise sum it spells out. lambda = ``method.reat_tail`` (1 in the code).
Soft targets (Mixup/CutMix): BSL takes them as is; the tail set and pair signs use the argmax class.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..attacks import pgd
from ..losses import _as_soft, balanced_softmax_loss
from ..registry import register
from . import METHODS, Method


def rbl_weights(class_counts, adv_counts) -> torch.Tensor:
    """REAT's re-balancing class weights 1 / E_i from training counts n_i and adversarial counts a_i."""
    n = torch.as_tensor(list(class_counts), dtype=torch.float64)
    a = torch.as_tensor(adv_counts, dtype=torch.float64).clamp(min=1)
    beta = (n - 1) / n
    # E_i -> a_i when beta_i -> 0 (n_i = 1): (1 - 0^a) / 1 = 1 for a >= 1, which the formula gives directly.
    e = (1 - beta.pow(a)) / (1 - beta)
    w = 1 / e
    return (w * len(n) / w.sum()).float()


def rbl_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Summed class-weighted CE (the attack's objective; summed so the step does not depend on batch size)."""
    t = _as_soft(target, logits.shape[1])
    per_sample = -(t * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return (per_sample * (t @ weights.to(logits.device))).sum()


def tail_feature_loss(features: torch.Tensor, labels: torch.Tensor, class_counts, tail_classes) -> torch.Tensor:
    """REAT's TAIL term (see the module docstring); 0 when the batch holds no tail-class sample."""
    f = features.float().flatten(1)
    counts = torch.as_tensor(list(class_counts), dtype=torch.float32, device=f.device)
    w = (counts.sum() / counts).sqrt()
    is_tail = torch.zeros(len(counts), dtype=torch.bool, device=f.device)
    is_tail[list(tail_classes)] = True
    anchors = is_tail[labels]
    if not anchors.any():
        return f.sum() * 0.0
    log_p = F.log_softmax(f, dim=1)
    log_p_anchor = log_p[anchors].detach()
    p_anchor = log_p_anchor.exp()
    kl = (p_anchor * log_p_anchor).sum(1, keepdim=True) - p_anchor @ log_p.T  # KL(p_i || p_j), |T| x N
    same = labels[anchors][:, None] == labels[None, :]
    sign = torch.where(same, -1.0, 1.0)
    pair_w = w[labels[anchors]][:, None] + w[labels][None, :]
    return (sign * pair_w * kl).mean(dim=1).mean()


def _head(model):
    """The Classifier inside DDP / torch.compile wrappers (its ``head`` module is hooked for features)."""
    m = getattr(model, "module", model)
    return getattr(m, "_orig_mod", m).head


@register(METHODS, "reat")
class REAT(Method):
    def __init__(self, cfg, class_counts):
        super().__init__(cfg, class_counts)
        c = len(self.class_counts)
        order = sorted(range(c), key=lambda i: (-self.class_counts[i], i))
        self.tail_classes = order[c - c // 3:]
        self.adv_counts = torch.tensor(self.class_counts, dtype=torch.float64)  # a_i, first epoch: n_i
        self._next = torch.zeros(c, dtype=torch.float64)

    def perturb(self, model, x, target):
        a = self.cfg.attack
        w = rbl_weights(self.class_counts, self.adv_counts)
        return pgd(model, x, target, eps=a.eps, alpha=self.alpha, steps=a.steps,
                   loss_fn=lambda logits, t: rbl_loss(logits, t, w), random_start=a.init)

    def loss(self, model, x, x_adv, target):
        store = {}
        handle = _head(model).register_forward_hook(lambda _m, inp, _out: store.__setitem__("f", inp[0]))
        try:
            logits = model(x_adv)
        finally:
            handle.remove()
        labels = target if target.dim() == 1 else target.argmax(1)
        loss = balanced_softmax_loss(logits, target, self.class_counts, tau_b=self.cfg.method.tau_b)
        if self.cfg.method.reat_tail:
            loss = loss + self.cfg.method.reat_tail * tail_feature_loss(store["f"], labels, self.class_counts,
                                                                          self.tail_classes)
        pred = logits.detach().argmax(1)
        self._next = self._next.to(pred.device) + torch.bincount(pred, minlength=len(self.class_counts)).double()
        return {"loss": loss, "logits": logits}

    def end_epoch(self) -> None:
        """The counts of this epoch's adversarial predictions become next epoch's a_i (summed over processes)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._next)
        if self._next.sum() > 0:
            self.adv_counts = self._next.cpu().clone()
        self._next = torch.zeros_like(self.adv_counts)

    def state_dict(self) -> dict:
        return {"adv_counts": self.adv_counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        if "adv_counts" in state:
            self.adv_counts = torch.as_tensor(state["adv_counts"], dtype=torch.float64).cpu()
