"""CFA: class-wise calibrated fair adversarial training, on AT (``at_cfa``) and TRADES (``trades_cfa``).

Wei, Wang, Guo, Wang, "CFA: Class-Wise Calibrated Fair Adversarial Training", CVPR 2023, arXiv 2303.14460;
the authors' code PKU-ML/CFA (``train.py``, ``attack.py``), read at commit 071f333. Per class k, from
A_k, the training robust accuracy of class k in the PREVIOUS epoch (the adversarial examples of the
training attack, classified by the logits the loss sees, before the optimizer step):

- CCM, calibrated margin: eps_k = (lambda_1 + A_k) * eps (``method.cfa_lambda1``, their ``--lambda-1``
  default 0.5); the training attack of a sample of class k uses eps_k, the step stays ``alpha``
  (their 2/255 for every class).
- CCR, calibrated regularisation (``trades_cfa``): beta_k = (lambda_2 + A_k) beta / (1 + (lambda_2 + A_k) beta)
  (``method.cfa_lambda2``, default 0.5), and the TRADES loss is mean_i [(1 - beta_y) CE(z(x_i), y_i) +
  beta_y KL(p(x_i) || p(x'_i))]. Before the calibration starts, and with ``method.cfa_ccr false``,
  beta_k = beta / (1 + beta) for every class: their TRADES loss is always this convex form, i.e. ordinary
  TRADES divided by 1 + beta.
- Both apply from 0-based epoch ``method.cfa_begin`` on (their ``--begin`` 10, ``if epoch >= args.begin``);
  before it every class trains at eps (and beta / (1 + beta)).

A_k: ``method.cfa_acc class`` (default) is correct_k / n_k, the paper's class-wise training robust
accuracy; ``total`` is their ``CW_log.result()``, C * correct_k / N, which equals it on balanced data
(their CIFAR-10) but on long-tailed data scales A_k by n_k / (N / C). A class with no training image in
an epoch keeps eps (and beta / (1 + beta)) in the next. With ``attack.class_eps`` set, eps_k is
calibrated from that class's own radius. Counts are summed over processes under DDP.

Where ltadv differs from their script: the training attack runs on the model in eval mode (their
AT+CCM attack, ``cw_attack_pgd``, runs in train mode, so its BN layers use batch statistics and update
their running averages at every attack step); the outer loss of ``at_cfa`` follows ``method.outer_loss``
(their CE is the default; ``bsl`` gives AT-BSL + CFA). Their fairness-aware weight averaging (FAWA) is
not implemented here.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ..losses import cross_entropy, trades_kl
from ..registry import register
from ..threat import class_eps as base_class_eps
from ..threat import hard_labels
from . import METHODS, Method
from .trades import TRADES


def cfa_class_eps(base_eps: torch.Tensor, train_robust: torch.Tensor, lambda1: float) -> torch.Tensor:
    """CCM: eps_k = (lambda1 + A_k) * base_k; a class with no accuracy (NaN) keeps base_k."""
    eps = (lambda1 + train_robust.to(base_eps)) * base_eps
    return torch.where(torch.isnan(train_robust.to(base_eps)), base_eps, eps)


def cfa_class_beta(beta: float, train_robust: torch.Tensor | None, lambda2: float) -> torch.Tensor | float:
    """CCR: beta_k = (lambda2 + A_k) beta / (1 + (lambda2 + A_k) beta); without accuracies (or where A_k is
    NaN) beta / (1 + beta), the weight of their uncalibrated TRADES loss."""
    plain = beta / (1 + beta)
    if train_robust is None:
        return plain
    r = (lambda2 + train_robust.double()) * beta
    return torch.where(torch.isnan(r), torch.full_like(r, plain), r / (1 + r)).float()


def class_accuracy(correct: torch.Tensor, seen: torch.Tensor, how: str = "class") -> torch.Tensor:
    """A_k from per-class correct and seen counts: ``class`` correct_k / n_k (NaN for an unseen class);
    ``total`` C * correct_k / N (their ``CW_log.result()``)."""
    correct, seen = correct.double(), seen.double()
    if how == "total":
        return len(correct) * correct / seen.sum().clamp_min(1)
    return torch.where(seen > 0, correct / seen.clamp_min(1), torch.full_like(correct, math.nan))


class _CFA(Method):
    """CCM / CCR bookkeeping shared by the AT and TRADES variants."""

    def __init__(self, cfg, class_counts):
        super().__init__(cfg, class_counts)
        c = len(self.class_counts)
        self.base_eps = base_class_eps(cfg, c)
        self.train_robust: torch.Tensor | None = None  # A_k of the last finished epoch (float64, CPU)
        self._correct = torch.zeros(c, dtype=torch.float64)
        self._seen = torch.zeros(c, dtype=torch.float64)

    @property
    def calibrating(self) -> bool:
        return self.train_robust is not None and self.epoch >= self.cfg.method.cfa_begin

    def class_eps(self) -> torch.Tensor:
        """This epoch's training radius per class [C]."""
        if not (self.cfg.method.cfa_ccm and self.calibrating):
            return self.base_eps
        return cfa_class_eps(self.base_eps, self.train_robust, self.cfg.method.cfa_lambda1)

    def class_beta(self):
        """This epoch's TRADES weight per class (a float before the calibration starts)."""
        m = self.cfg.method
        return cfa_class_beta(m.beta, self.train_robust if (m.cfa_ccr and self.calibrating) else None, m.cfa_lambda2)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._eps = self.class_eps()

    def batch_eps(self, target):
        if not hasattr(self, "_eps"):
            self._eps = self.class_eps()
        return self._eps.to(target.device)[hard_labels(target)]

    def count(self, logits_adv: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate this batch's training robust accuracy per class (the logits the loss trains on)."""
        y = hard_labels(target)
        c = len(self.class_counts)
        ok = (logits_adv.detach().argmax(1) == y).double()
        self._correct = self._correct.to(y.device) + torch.zeros(c, dtype=torch.float64, device=y.device).index_add_(
            0, y, ok)
        self._seen = self._seen.to(y.device) + torch.bincount(y, minlength=c).double()

    def end_epoch(self) -> None:
        """This epoch's A_k (summed over processes) become the next epoch's calibration."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._correct)
            dist.all_reduce(self._seen)
        if self._seen.sum() > 0:
            self.train_robust = class_accuracy(self._correct, self._seen, self.cfg.method.cfa_acc).cpu()
        self._correct = torch.zeros(len(self.class_counts), dtype=torch.float64)
        self._seen = torch.zeros_like(self._correct)

    def epoch_info(self) -> dict:
        """The per-class eps this epoch trained with and the per-class training robust accuracy it measured."""
        acc = None if self.train_robust is None else [None if math.isnan(a) else float(a) for a in self.train_robust]
        return {"cfa_class_eps": [float(e) for e in self._eps], "cfa_train_robust": acc}

    def state_dict(self) -> dict:
        return {} if self.train_robust is None else {"cfa_train_robust": self.train_robust.clone()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("cfa_train_robust") is not None:
            self.train_robust = torch.as_tensor(state["cfa_train_robust"], dtype=torch.float64).cpu()


@register(METHODS, "at_cfa")
class ATCFA(_CFA):
    """AT + CFA (their ``--mode AT --ccm``): PGD with eps_y, the outer loss on z(x') (CE by default)."""

    def loss(self, model, x, x_adv, target):
        logits = model(x_adv)
        self.count(logits, target)
        return {"loss": self.outer(logits, target, "ce"), "logits": logits}


@register(METHODS, "trades_cfa")
class TRADESCFA(_CFA):
    """TRADES + CFA (their ``--mode TRADES --ccm --ccr``): the KL attack with eps_y, the loss
    mean[(1 - beta_y) CE(z(x), y) + beta_y KL(p(x) || p(x'))]."""

    perturb = TRADES.perturb

    def loss(self, model, x, x_adv, target):
        logits_clean = model(x)
        logits_adv = model(x_adv)
        self.count(logits_adv, target)
        beta = self.class_beta()
        if isinstance(beta, torch.Tensor):
            beta = beta.to(logits_adv.device)[hard_labels(target)]
        ce = cross_entropy(logits_clean, target, reduction="none")
        kl = trades_kl(logits_clean, logits_adv, reduction="none")
        return {"loss": ((1 - beta) * ce + beta * kl).mean(), "logits": logits_adv}
