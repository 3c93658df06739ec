"""Losses for long-tailed adversarial training. Class counts are always passed in explicitly.

Every loss takes ``target`` as int labels (N,) or soft labels (N x C rows summing to 1, from Mixup
or CutMix); with one-hot soft labels it equals the hard-label version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_counts(class_counts, device=None) -> torch.Tensor:
    """log n_i as a float tensor (the balanced-softmax bias before tau_b)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float32, device=device)
    if (counts <= 0).any():
        raise ValueError("every class count must be >= 1")
    return counts.log()


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
    return per_sample
