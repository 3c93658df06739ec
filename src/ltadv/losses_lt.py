"""Long-tail baseline losses (the family RoBal's code ships), usable as the outer loss of any method.

Every function takes ``logits`` (N x C), ``target`` as int labels (N,) or soft labels (N x C, from
Mixup/CutMix) and the class counts n_i; with one-hot soft labels each equals its hard-label version.

**Soft targets.** A soft row t is read as a distribution over labels, and each loss is the t-weighted
mixture of its hard-label losses, sum_c t_c L(z, c) (per sample; also for the weights and the
normaliser below). For cross entropy that is the usual -sum_c t_c log p_c.

**Re-weighting** (per-class weights w_c, ``method.reweight`` / DRW / CB) follows the authors' code:

- softmax CE, LDAM, logit-adjusted, CDT, BSL: ``F.cross_entropy(weight=w)`` as in LDAM-DRW
  (kaidic/LDAM-DRW, cifar_train.py: ``nn.CrossEntropyLoss(weight=per_cls_weights)``, losses.py
  LDAMLoss) and RoBal's DRW path (wutong16/Adversarial_Long-Tail, methods/train_modes.py passes
  ``weights`` into methods/losses_inclass.py): the weighted mean sum_n w_{y_n} l_n / sum_n w_{y_n}
  over the batch, not mean(w l). Soft targets: sum_n sum_c t_nc w_c l_nc / sum_n sum_c t_nc w_c.
  (PyTorch's probability-target cross entropy divides by N instead, so a one-hot soft target would
  disagree with its label.) With Mixup/CutMix's one lambda per batch and a permuted partner this is
  exactly lam * CE_w(z, y_a) + (1 - lam) * CE_w(z, y_b), the usual mixup criterion (tested).
- softmax focal: LDAM-DRW's FocalLoss(weight=w): the weight enters *inside* the focal factor,
  v = w_y * CE, loss = mean_n (1 - e^{-v})^gamma v (a plain batch mean).
- sigmoid focal and class-balanced sigmoid focal: RoBal's FocalLoss(use_sigmoid=True) / CBLoss:
  sum over the N x C binary terms, each multiplied by its sample's class weight w_{y_n}, divided by
  the number of labels N (``focal_loss.sum() / labels_onehot.sum()``), not by the weights' sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as _binary_focal

from .losses import _as_soft, log_counts


def _counts(class_counts, device=None) -> torch.Tensor:
    log_counts(class_counts)  # the same ">= 1" check as everywhere else
    return torch.as_tensor(list(class_counts), dtype=torch.float32, device=device)


def _reduce(per_sample: torch.Tensor, reduction: str, denominator: torch.Tensor | float | None = None):
    if reduction == "mean":
        return per_sample.mean() if denominator is None else per_sample.sum() / denominator
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def inverse_frequency_weights(class_counts, device=None) -> torch.Tensor:
    """w_c proportional to 1 / n_c, normalised so that sum_c w_c = C (plain re-weighting)."""
    n = _counts(class_counts, device)
    w = 1.0 / n
    return w * len(n) / w.sum()


def effective_number_weights(class_counts, beta: float = 0.9999, device=None) -> torch.Tensor:
    """Class-balanced weights w_c proportional to (1 - beta) / (1 - beta^{n_c}), normalised to sum to C.

    Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019, arXiv 1901.05555,
    Eq. (3)-(4): E_n = (1 - beta^n) / (1 - beta) is the effective number of samples; beta = 0.9999 is
    their CIFAR-LT choice. beta = 0 gives equal weights, beta -> 1 inverse frequency.
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    n = _counts(class_counts, device).double()
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w * len(n) / w.sum()).float()


def class_weights(kind: str, class_counts, beta: float = 0.9999, device=None) -> torch.Tensor | None:
    """``none`` -> None, ``inverse`` -> :func:`inverse_frequency_weights`, ``effective`` -> CB weights."""
    if kind == "none":
        return None
    if kind == "inverse":
        return inverse_frequency_weights(class_counts, device)
    if kind == "effective":
        return effective_number_weights(class_counts, beta, device)
    raise ValueError(f"unknown re-weighting {kind!r}; choose none, inverse or effective")


def _soft_weighted(nll: torch.Tensor, target: torch.Tensor, weights, reduction: str) -> torch.Tensor:
    """sum_c t_nc w_c nll_nc per sample; the mean divides by sum_nc t_nc w_c (by N without weights)."""
    tw = target.float() if weights is None else target.float() * weights.to(device=nll.device, dtype=torch.float32)
    return _reduce((tw * nll).sum(dim=1), reduction, None if weights is None else tw.sum())


def weighted_cross_entropy(logits, target, weights=None, reduction: str = "mean") -> torch.Tensor:
    """CE with optional per-class weights, reduced as ``F.cross_entropy(weight=w)``: the batch mean is
    sum_n w_{y_n} l_n / sum_n w_{y_n}; ``none`` gives w_{y_n} l_n (see the module docstring for soft
    targets). With effective-number weights this is LDAM-DRW's ``Reweight`` rule (the class-balanced
    softmax loss of Cui et al., CVPR 2019, arXiv 1901.05555, as kaidic/LDAM-DRW's cifar_train.py runs it)."""
    if target.dim() == 1:
        w = None if weights is None else weights.to(device=logits.device, dtype=torch.float32)
        return F.cross_entropy(logits.float(), target, weight=w, reduction=reduction)
    return _soft_weighted(-F.log_softmax(logits.float(), dim=1), target, weights, reduction)


def focal_loss(logits, target, gamma: float = 2.0, weights=None, reduction: str = "mean") -> torch.Tensor:
    """Softmax focal loss as LDAM-DRW computes it: v = w_y CE(z, y), loss = (1 - e^{-v})^gamma v,
    batch mean (for w = 1: -(1 - p_y)^gamma log p_y).

    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, arXiv 1708.02002, Eq. (4) in its
    softmax form; kaidic/LDAM-DRW losses.py (FocalLoss: ``F.cross_entropy(reduction='none',
    weight=w)`` then the focal factor, then ``.mean()``), so class weights sit inside the factor and
    the mean is over N, not over the weights. gamma = 0 is CE (weighted: mean(w l)). Soft targets:
    sum_c t_c of the hard-label values. RoBal's focal is the sigmoid form, :func:`sigmoid_focal_loss`.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    v = -log_p if weights is None else -log_p * weights.to(device=logits.device, dtype=torch.float32)
    per_class = (-torch.expm1(-v)).pow(gamma) * v  # 1 - e^{-v} = 1 - p_c^{w_c}
    return _reduce((_as_soft(target, logits.shape[1]) * per_class).sum(dim=1), reduction)


def sigmoid_focal_loss(logits, target, gamma: float = 2.0, weights=None, reduction: str = "mean") -> torch.Tensor:
    """Sigmoid (per-class binary) focal loss, RoBal's FocalLoss(use_sigmoid=True) and, with weights, CBLoss.

    Each logit z_c is a binary classifier for "class c": with p_t = sigmoid(z_c) for the true class and
    sigmoid(-z_c) for the others, loss = sum_{n,c} w_{y_n} (-(1 - p_t)^gamma log p_t) / N. Lin et al.,
    ICCV 2017, arXiv 1708.02002, Eq. (5) without alpha; RoBal (wutong16/Adversarial_Long-Tail,
    methods/losses_inclass.py FocalLoss: ``focal_loss.sum() / labels_onehot.sum()``; CBLoss repeats
    the sample's class weight over its C binary terms), gamma = 2 in configs/CIFAR10_LT/
    cifar10_LT0.02_pgdat_outer_focal.yaml. The per-element term is torchvision's
    ``sigmoid_focal_loss(alpha=-1)``. Soft targets: the t-weighted mixture of the hard-label losses,
    i.e. element (n, c) is t_c w_c f1 + (sum_k t_k w_k - t_c w_c) f0 with f1 / f0 the positive /
    negative binary terms (for w = 1: t_c f1 + (1 - t_c) f0), and the normaliser is sum(t) = N.
    """
    z = logits.float()
    t = _as_soft(target, z.shape[1])
    pos = _binary_focal(z, torch.ones_like(z), alpha=-1, gamma=gamma)  # -(1 - s(z))^g log s(z)
    neg = _binary_focal(z, torch.zeros_like(z), alpha=-1, gamma=gamma)  # -s(z)^g log(1 - s(z))
    if weights is None:
        elems = t * pos + (1 - t) * neg
    else:
        tw = t * weights.to(device=z.device, dtype=torch.float32)
        elems = tw * pos + (tw.sum(dim=1, keepdim=True) - tw) * neg
    return _reduce(elems.sum(dim=1), reduction, t.sum())


def cb_focal_sigmoid_loss(logits, target, class_counts, beta: float = 0.9999, gamma: float = 2.0,
                          reduction: str = "mean") -> torch.Tensor:
    """Class-balanced sigmoid focal loss: :func:`sigmoid_focal_loss` weighted by effective numbers.

    Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019, arXiv 1901.05555,
    Eq. (8) ("class-balanced focal loss"); RoBal's CBLoss(loss_type="focal", use_sigmoid=True) with
    beta = 0.9999 and gamma = 2 (configs/CIFAR10_LT/cifar10_LT0.02_pgdat_outer_CB.yaml and
    ..._rw-fine.yaml): weights (1 - beta) / (1 - beta^{n_c}) normalised to sum to C, each sample's
    weight on all its C binary terms, sum divided by N.
    """
    w = effective_number_weights(class_counts, beta, logits.device)
    return sigmoid_focal_loss(logits, target, gamma=gamma, weights=w, reduction=reduction)


def ldam_margins(class_counts, max_m: float = 0.5, device=None) -> torch.Tensor:
    """m_c = C / n_c^{1/4}, with C chosen so that the largest margin (the rarest class) is ``max_m``.

    Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019,
    arXiv 1906.07413, Eq. (12); max_m = 0.5 as in their code and RoBal's outer-LDAM config.
    """
    m = _counts(class_counts, device).pow(-0.25)
    return m * (max_m / m.max())


def ldam_loss(logits, target, class_counts, max_m: float = 0.5, s: float = 1.0, weights=None,
              reduction: str = "mean") -> torch.Tensor:
    """LDAM: CE( s * (z - m_y e_y), y ), the true class's logit lowered by its margin m_y.

    Cao et al., NeurIPS 2019, arXiv 1906.07413; kaidic/LDAM-DRW losses.py LDAMLoss (``F.cross_entropy(
    s * output, target, weight=w)``, so DRW weights reduce as sum(w l) / sum(w)). Their CIFAR code pairs
    it with a normalised (cosine) classifier and s = 30; RoBal's outer-LDAM config on a plain linear
    classifier uses s = 1, our default. DRW (deferred re-weighting) is ``weights`` switched on late in
    training (``method.drw_start``). Soft targets: sum_c t_c of the hard-label losses, each with its own
    class's margin (an N x C x C computation).
    """
    z = logits.float()
    m = ldam_margins(class_counts, max_m, z.device)
    if target.dim() == 1:
        return weighted_cross_entropy(s * (z - m * F.one_hot(target, z.shape[1])), target, weights, reduction)
    shifted = s * (z[:, None, :] - torch.diag_embed(m))  # [n, c, :] = the logits if the label were c
    nll = -F.log_softmax(shifted, dim=2).diagonal(dim1=1, dim2=2)  # N x C: the hard-label loss for each c
    return _soft_weighted(nll, target, weights, reduction)


def logit_adjusted_loss(logits, target, class_counts, tau: float = 1.0, weights=None,
                        reduction: str = "mean") -> torch.Tensor:
    """Logit-adjusted loss CE(z + tau * log pi, t), pi = n / sum(n) the training prior.

    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, arXiv 2007.07314, Eq. (10),
    tau = 1. log pi and log n differ by a constant, which softmax ignores: this equals the Balanced
    Softmax Loss with tau_b = tau (tested).
    """
    n = _counts(class_counts, logits.device)
    z = logits.float() + tau * (n / n.sum()).log()
    return weighted_cross_entropy(z, target, weights, reduction)


def cdt_temperatures(class_counts, gamma: float = 0.3, device=None) -> torch.Tensor:
    """a_c = (n_max / n_c)^gamma >= 1 (the rarest class gets the largest temperature)."""
    n = _counts(class_counts, device)
    return (n.max() / n).pow(gamma)


def cdt_loss(logits, target, class_counts, gamma: float = 0.3, weights=None, reduction: str = "mean") -> torch.Tensor:
    """Class-dependent temperatures: CE(z_c / a_c, t) with a_c = (n_max / n_c)^gamma; predictions use raw z.

    Ye et al., "Identifying and Compensating for Feature Deviation in Imbalanced Deep Learning", 2020,
    arXiv 2001.01385, Eq. (5); gamma = 0.3 as in RoBal's outer-CDT config (the paper tunes gamma).
    """
    z = logits.float() / cdt_temperatures(class_counts, gamma, logits.device)
    return weighted_cross_entropy(z, target, weights, reduction)


OUTER_LOSSES = ("ce", "bsl", "focal", "cb", "ldam", "la", "cdt")
