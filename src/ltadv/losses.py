"""Losses for long-tailed adversarial training. Class counts are always passed in explicitly.

Every loss takes ``target`` as int labels (N,) or soft labels (N x C rows summing to 1, from Mixup
or CutMix); with one-hot soft labels it equals the hard-label version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_counts(class_counts, device=None) -> torch.Tensor:
    """log n_i as a float tensor (the balanced-softmax bias before tau_b)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float32)  # checked where it is (no device sync for a list)
    if (counts <= 0).any():
        raise ValueError("every class count must be >= 1")
    return counts.log().to(device)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross entropy for hard (N,) or soft (N x C) targets."""
    if target.dim() == logits.dim():
        loss = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
        if reduction == "mean":
            return loss.mean()
        if reduction == "sum":
            return loss.sum()
        return loss
    return F.cross_entropy(logits.float(), target, reduction=reduction)


def balanced_softmax_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_counts,
    tau_b: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Balanced Softmax Loss: -log( n_y^tau_b e^{z_y} / sum_i n_i^tau_b e^{z_i} ) = CE(z + tau_b log n, y).

    Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020,
    arXiv 2007.10740; used as the outer loss of AT-BSL (Yue et al., CVPR 2024, arXiv 2403.10073),
    with tau_b swept in that paper. A training-time loss only: predictions use the raw logits.
    """
    bias = tau_b * log_counts(class_counts, logits.device)
    return cross_entropy(logits.float() + bias, target, reduction=reduction)


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """KL( p(x) || p(x') ) = sum_i p_i(x) log(p_i(x) / p_i(x')), the TRADES regulariser.

    Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019,
    arXiv 1901.08573 (the TRADES and RoBal code compute this direction). ``batchmean`` averages over
    the batch; ``none`` gives one value per sample.
    """
    log_p_clean = F.log_softmax(logits_clean.float(), dim=1)
    log_p_adv = F.log_softmax(logits_adv.float(), dim=1)
    per_sample = (log_p_clean.exp() * (log_p_clean - log_p_adv)).sum(dim=1)
    if reduction == "batchmean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"trades_kl: reduction must be batchmean, sum or none, not {reduction!r}")


def _as_soft(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Int labels -> one-hot rows; soft rows pass through (float)."""
    if target.dim() == 2:
        return target.float()
    return F.one_hot(target, num_classes).float()


def trades_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, target: torch.Tensor, beta: float = 6.0
) -> torch.Tensor:
    """TRADES outer loss CE(z(x), y) + beta * KL( p(x) || p(x') ), batch-mean.

    Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019,
    arXiv 1901.08573, Eq. (5) with the surrogate CE for the natural term and beta = 6.
    """
    return cross_entropy(logits_clean, target) + beta * trades_kl(logits_clean, logits_adv)


# MART's code adds 1e-4 inside log(1 - p) so that a confident wrong class does not give log(0).
MART_BOOST_EPS = 1e-4


def boosted_cross_entropy(logits_adv: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """MART's BCE: -log p_y(x') - log(1 - max_{k != y} p_k(x')).

    Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified Examples",
    ICLR 2020 (OpenReview rklOg6EFwS), Eq. (5); as in the MART code the second log is taken of
    1 + 1e-4 - p. Soft targets weight each class's term by its share:
    sum_j t_j [ -log p_j - log(1 - max_{k != j} p_k) ].
    """
    log_p = F.log_softmax(logits_adv.float(), dim=1)
    p = log_p.exp()
    t = _as_soft(target, logits_adv.shape[1])
    top2 = p.topk(2, dim=1).values  # (N, 2)
    is_top = F.one_hot(p.argmax(dim=1), p.shape[1]).bool()
    other_max = torch.where(is_top, top2[:, 1:2], top2[:, 0:1])  # max_{k != j} p_k for every j
    per_sample = -(t * (log_p + torch.log(1 + MART_BOOST_EPS - other_max))).sum(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample


def mart_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, target: torch.Tensor, beta: float = 6.0
) -> torch.Tensor:
    """MART outer loss: BCE(z(x'), y) + beta * mean_n[ KL( p(x_n) || p(x'_n) ) * (1 - p_y(x_n)) ].

    Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified Examples",
    ICLR 2020 (OpenReview rklOg6EFwS), Eq. (8), beta = 6. With soft targets p_y is sum_j t_j p_j.
    """
    p_clean = F.softmax(logits_clean.float(), dim=1)
    t = _as_soft(target, logits_clean.shape[1])
    weight = 1 - (t * p_clean).sum(dim=1)
    kl = trades_kl(logits_clean, logits_adv, reduction="none")
    return boosted_cross_entropy(logits_adv, target) + beta * (kl * weight).mean()


def class_aware_margin(class_counts, s: float = 10.0, tau_m: float = 0.3, m0: float = 0.1, device=None) -> torch.Tensor:
    """RoBal's class-aware margins m_i = (tau_m / s) * log(n_i / n_min) + m0 (head classes get the larger one).

    Wu et al., "Adversarial Robustness under Long-Tailed Distribution", CVPR 2021, arXiv 2104.02703,
    Sec. 4.2; the 1/s matches the RoBal code, which subtracts m from the cosine before scaling by s.
    """
    log_n = log_counts(class_counts, device)
    return (tau_m / s) * (log_n - log_n.min()) + m0


def robal_loss(
    logits_adv: torch.Tensor,
    target: torch.Tensor,
    class_counts,
    logits_clean: torch.Tensor | None = None,
    tau_b: float = 1.5,
    s: float = 10.0,
    tau_m: float = 0.3,
    m0: float = 0.1,
    beta: float = 6.0,
    bsl: bool = True,
    margin: bool = True,
) -> torch.Tensor:
    """RoBal's outer loss with each part switchable (the cosine head is the model's part):

    L = CE( z(x') - s * m * t + tau_b * log n, t ) + beta * KL( p(x) || p(x') ),

    z = the model's logits (s cos(theta) with the cosine head), t = one-hot or soft target,
    the margin term only when ``margin``, the bias only when ``bsl``, the KL (on the model's logits,
    without bias or margin) only when ``logits_clean`` is given. Everything off is CE(z(x'), t), plain AT.
    Wu et al., "Adversarial Robustness under Long-Tailed Distribution", CVPR 2021, arXiv 2104.02703, Eq. (7)-(9).
    """
    z = logits_adv.float()
    if margin:
        m = class_aware_margin(class_counts, s, tau_m, m0, z.device)
        z = z - s * m * _as_soft(target, z.shape[1])
    if bsl:
        z = z + tau_b * log_counts(class_counts, z.device)
    loss = cross_entropy(z, target)
    if logits_clean is not None:
        loss = loss + beta * trades_kl(logits_clean, logits_adv)
    return loss
