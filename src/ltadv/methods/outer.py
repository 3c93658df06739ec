"""The outer (training) loss chosen by ``method.outer_loss``, with optional (deferred) re-weighting.

Shared by AT, AT-BSL and TRADES (its natural term), so every long-tail loss of RoBal's baseline
suite works as the outer loss of any of them without a new training loop:

- ``ce`` cross entropy; ``bsl`` Balanced Softmax (``method.tau_b``);
- ``focal`` softmax focal (``method.focal_gamma``), Lin et al., ICCV 2017, arXiv 1708.02002, as LDAM-DRW
  (kaidic/LDAM-DRW) computes it;
- ``cb`` CE with effective-number weights (``method.cb_beta``), Cui et al., CVPR 2019, arXiv 1901.05555,
  LDAM-DRW's ``Reweight`` rule (``F.cross_entropy(weight=w)``);
- ``focal_sigmoid`` sigmoid (per-class binary) focal, RoBal's FocalLoss(use_sigmoid=True), outer-focal config;
- ``cb_focal_sigmoid`` class-balanced sigmoid focal (``method.cb_beta``, ``method.focal_gamma``), RoBal's
  CBLoss, outer-CB and rw-fine configs;
- ``ldam`` (``method.ldam_max_m``, ``method.ldam_s``), Cao et al., NeurIPS 2019, arXiv 1906.07413;
- ``la`` logit-adjusted loss (``method.la_tau``), Menon et al., ICLR 2021, arXiv 2007.07314;
- ``cdt`` class-dependent temperatures (``method.cdt_gamma``), Ye et al., arXiv 2001.01385.

``method.reweight`` (``inverse`` | ``effective``) weights each sample by its class's weight from epoch
``floor(method.drw_start * train.epochs)`` (0-based) on: 0 re-weights the whole run, 0.8 is the deferred
re-weighting (DRW) schedule of Cao et al. (``epoch // 160`` of 200, 0-based). The reduction is the one
the weighted loss's source uses (``losses_lt`` module docstring): sum(w_y l) / sum(w_y) for the softmax
CE family, weights inside the focal factor for ``focal``, sum(w_y l) / N for ``focal_sigmoid`` (then
equal to ``cb_focal_sigmoid`` with effective weights). RoBal's LogitAdjustLoss and CDTLoss ignore the
weights they are passed; ours apply them with the CE reduction.
"""

from __future__ import annotations

import math

import torch

from ..losses import balanced_softmax_loss, cross_entropy
from ..losses_lt import (
    cb_focal_sigmoid_loss,
    cdt_loss,
    class_weights,
    effective_number_weights,
    focal_loss,
    ldam_loss,
    logit_adjusted_loss,
    sigmoid_focal_loss,
    weighted_cross_entropy,
)


def reweight_active(cfg, epoch: int) -> bool:
    m = cfg.method
    return m.reweight != "none" and epoch >= math.floor(m.drw_start * cfg.train.epochs)


def outer_loss(method, logits: torch.Tensor, target: torch.Tensor, default: str = "ce") -> torch.Tensor:
    cfg, counts = method.cfg, method.class_counts
    m = cfg.method
    name = default if m.outer_loss == "auto" else m.outer_loss
    w = class_weights(m.reweight, counts, m.cb_beta, logits.device) if reweight_active(cfg, method.epoch) else None
    if name == "ce":
        return cross_entropy(logits, target) if w is None else weighted_cross_entropy(logits, target, w)
    if name == "bsl":
        if w is None:
            return balanced_softmax_loss(logits, target, counts, tau_b=m.tau_b)
        return weighted_cross_entropy(logits.float() + m.tau_b * method.log_n(logits.device), target, w)
    if name == "focal":
        return focal_loss(logits, target, gamma=m.focal_gamma, weights=w)
    if name == "cb":
        return weighted_cross_entropy(logits, target, effective_number_weights(counts, m.cb_beta, logits.device))
    if name == "ldam":
        return ldam_loss(logits, target, counts, max_m=m.ldam_max_m, s=m.ldam_s, weights=w)
    if name == "la":
        return logit_adjusted_loss(logits, target, counts, tau=m.la_tau, weights=w)
    if name == "cdt":
        return cdt_loss(logits, target, counts, gamma=m.cdt_gamma, weights=w)
    if name == "focal_sigmoid":
        return sigmoid_focal_loss(logits, target, gamma=m.focal_gamma, weights=w)
    if name == "cb_focal_sigmoid":
        return cb_focal_sigmoid_loss(logits, target, counts, beta=m.cb_beta, gamma=m.focal_gamma)
    raise ValueError(f"unknown outer loss {name!r}")
