"""Long-tail baseline losses (the family RoBal's code ships), usable as the outer loss of any method.

Every function takes ``logits`` (N x C), ``target`` as int labels (N,) or soft labels (N x C, from
Mixup/CutMix) and the class counts n_i; with one-hot soft labels each equals its hard-label version.
Per-sample class weights (re-weighting) multiply each sample's loss by w(t) = sum_c t_c w_c and the
batch mean is taken, the convention of Cui et al.'s class-balanced loss (weights sum to C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import _as_soft, cross_entropy, log_counts


def _counts(class_counts, device=None) -> torch.Tensor:
    log_counts(class_counts)  # the same ">= 1" check as everywhere else
    return torch.as_tensor(list(class_counts), dtype=torch.float32, device=device)


def _reduce(per_sample: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
            reduction: str) -> torch.Tensor:
    if weights is not None:
        per_sample = per_sample * (_as_soft(target, len(weights)) @ weights.to(per_sample.device))
    if reduction == "mean":
        return per_sample.mean()
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


def weighted_cross_entropy(logits, target, weights=None, reduction: str = "mean") -> torch.Tensor:
    """CE with optional per-class sample weights (re-weighting; with CB weights: the class-balanced
    softmax loss of Cui et al., CVPR 2019, arXiv 1901.05555)."""
    return _reduce(cross_entropy(logits, target, reduction="none"), target, weights, reduction)


def focal_loss(logits, target, gamma: float = 2.0, weights=None, reduction: str = "mean") -> torch.Tensor:
    """Focal loss -sum_c t_c (1 - p_c)^gamma log p_c (for a hard label: -(1 - p_y)^gamma log p_y).

    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, arXiv 1708.02002, Eq. (4) in its
    softmax form; gamma = 2 as in the paper and RoBal's outer-focal config. gamma = 0 is CE.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    t = _as_soft(target, logits.shape[1])
    per_sample = -(t * (1 - log_p.exp()).pow(gamma) * log_p).sum(dim=1)
    return _reduce(per_sample, target, weights, reduction)


def ldam_margins(class_counts, max_m: float = 0.5, device=None) -> torch.Tensor:
    """m_c = C / n_c^{1/4}, with C chosen so that the largest margin (the rarest class) is ``max_m``.

    Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019,
    arXiv 1906.07413, Eq. (12); max_m = 0.5 as in their code and RoBal's outer-LDAM config.
    """
    m = _counts(class_counts, device).pow(-0.25)
    return m * (max_m / m.max())


def ldam_loss(logits, target, class_counts, max_m: float = 0.5, s: float = 1.0, weights=None,
              reduction: str = "mean") -> torch.Tensor:
    """LDAM: CE( s * (z - m * t), t ), the true class's logit lowered by its margin m_y.

    Cao et al., NeurIPS 2019, arXiv 1906.07413. Their CIFAR code pairs it with a normalised (cosine)
    classifier and s = 30; RoBal's outer-LDAM config on a plain linear classifier uses s = 1, our default.
    DRW (deferred re-weighting) is ``weights`` switched on late in training (``method.drw_start``).
    """
    z = logits.float()
    m = ldam_margins(class_counts, max_m, z.device)
    z = s * (z - m * _as_soft(target, z.shape[1]))
    return weighted_cross_entropy(z, target, weights, reduction)


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
