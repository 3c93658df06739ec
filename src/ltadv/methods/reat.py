"""REAT: Li, Xu and Zhang, "Adversarial Training Over Long-Tailed Distribution" (later "Alleviating the
Effect of Data Imbalance on Adversarial Training"), arXiv 2307.10205; public code GuanlinLee/REAT
(loss_functions.py: RBL, REAT; train.py), followed detail by detail.

Two parts:
1. **Re-balancing loss (RBL) for the inner maximisation**: PGD on ``F.cross_entropy(weight=w)`` with
   w_i = 1 / (E_i + 1e-5), E_i = (1 - beta_i^{a_i}) / (1 - beta_i), beta_i = (n_i - 1) / n_i
   (effective numbers, Cui et al. 2019), normalised to sum to C, where a_i counts the previous
   epoch's adversarial examples *predicted* as class i (the first epoch uses a_i = n_i). A class
   nobody was predicted as has a_i = 0, E_i = 0 and weight 1e5 before normalisation, as in the code.
   Note: with the model in eval mode each sample's loss depends only on its own input, so a positive
   per-sample weight leaves the sign of its input gradient, hence every PGD step, unchanged; the
   RBL attack therefore produces the same x' as PGD on CE from the same start (tested). We keep it
   because it is the paper's objective (and it matters for any attack that is not sign-based).
2. **Outer loss**: BSL(z(x'), y) (tau_b 1) + lambda * TAIL over the penultimate features f (the input
   of the final linear layer, ``model(x, True)`` in the code) of the adversarial batch, N x D:

       TAIL = 1/|T| sum_{i in T} K_i * c_i,
       K_i = 1/(N D) sum_j KL( softmax(f_i) || softmax(f_j) ),   f_i detached (the target side),
       c_i = 1/N sum_j s_ij (w_{y_i} + w_{y_j}),

   s_ij = -1 for same-class pairs (j = i included) and +1 otherwise, w_c = sqrt(1 / prior_c),
   T = batch samples of the tail classes. This is what the code computes: ``nn.KLDivLoss(
   size_average='none')`` is the legacy argument, read as ``reduction='mean'`` (a truthy
   size_average), i.e. the mean over all N x D elements, a scalar K_i; the pair signs and weights
   then multiply that scalar, giving an N-vector per anchor; the vectors are summed over anchors and
   ``TAIL.mean() / counter`` averages over N and divides by |T|. Gradients reach every row of f
   through the log_softmax side. Tail classes: the code's ``range(C // 3 * 2 + 1, C)`` in label order
   (CIFAR-10: 7, 8, 9; CIFAR-100: 67..99), here the same positions in descending-count order (the
   same classes on our long-tailed splits, whose counts fall with the label). lambda =
   ``method.reat_tail`` (1 in the code, where BSL and TAIL are simply added).
Soft targets (Mixup/CutMix): BSL takes them as is; the tail set and pair signs use the argmax class.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..attacks import pgd
from ..losses import balanced_softmax_loss
from ..losses_lt import weighted_cross_entropy
from ..registry import register
from . import METHODS, Method


def rbl_weights(class_counts, adv_counts) -> torch.Tensor:
    """REAT's re-balancing class weights 1 / (E_i + 1e-5), normalised to sum to C (loss_functions.py RBL)."""
    n = torch.as_tensor(list(class_counts), dtype=torch.float64)
    a = torch.as_tensor(adv_counts, dtype=torch.float64)
    beta = (n - 1) / n
    e = (1 - beta.pow(a)) / (1 - beta)  # n_i = 1: beta 0, E = 1 for a >= 1 and 0 for a = 0 (0^0 = 1)
    w = 1 / (e + 1e-5)
    return (w * len(n) / w.sum()).float()


def rbl_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The attack's objective: class-weighted CE reduced as ``F.cross_entropy(weight=w)`` (as the code)."""
    return weighted_cross_entropy(logits, target, weights)


def tail_classes(class_counts) -> list[int]:
    """REAT's tail set: positions ``C // 3 * 2 + 1`` .. C - 1 in descending-count order (ties: label order)."""
    c = len(class_counts)
    order = sorted(range(c), key=lambda i: (-class_counts[i], i))
    return sorted(order[c // 3 * 2 + 1:])


def tail_feature_loss(features: torch.Tensor, labels: torch.Tensor, class_counts, tail) -> torch.Tensor:
    """REAT's TAIL term at the authors' scale (see the module docstring); 0 when no tail-class sample."""
    f = features.float().flatten(1)
    n, d = f.shape
    counts = torch.as_tensor(list(class_counts), dtype=torch.float32, device=f.device)
    w = (counts.sum() / counts).sqrt()
    is_tail = torch.zeros(len(counts), dtype=torch.bool, device=f.device)
    is_tail[list(tail)] = True
    anchors = is_tail[labels]
    if not anchors.any():
        return f.sum() * 0.0
    log_q = F.log_softmax(f, dim=1)  # every row j: the input side, which carries the gradient
    log_p = log_q[anchors].detach()  # the anchors' targets, detached
    p = log_p.exp()
    # K_i = mean over the N x D elements p_i,d (log p_i,d - log q_j,d)
    k = ((p * log_p).sum(1) * n - p @ log_q.sum(0)) / (n * d)
    same = labels[anchors][:, None] == labels[None, :]
    sign = torch.where(same, -1.0, 1.0)
    c = (sign * (w[labels[anchors]][:, None] + w[labels][None, :])).mean(dim=1)  # constants: no gradient
    return (k * c).mean()


def _head(model):
    """The Classifier inside DDP / torch.compile wrappers (its ``head`` module is hooked for features)."""
    m = getattr(model, "module", model)
    return getattr(m, "_orig_mod", m).head


@register(METHODS, "reat")
class REAT(Method):
    def __init__(self, cfg, class_counts):
        super().__init__(cfg, class_counts)
        c = len(self.class_counts)
        self.tail_classes = tail_classes(self.class_counts)
        self.adv_counts = torch.tensor(self.class_counts, dtype=torch.float64)  # a_i, first epoch: n_i
        self._next = torch.zeros(c, dtype=torch.float64)

    def perturb(self, model, x, target):
        a = self.cfg.attack
        w = rbl_weights(self.class_counts, self.adv_counts)
        return pgd(model, x, target, eps=self.batch_eps(target), alpha=self.alpha, steps=a.steps,
                   loss_fn=lambda logits, t: rbl_loss(logits, t, w), random_start=a.init, clamp_start=a.clamp_start,
                   norm=a.norm)

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
