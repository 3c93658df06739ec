"""Training objectives, one file each, registered by name in :data:`METHODS`.

A method never touches the optimizer or the model's mode (STYLE principle 3). The training loop
calls ``x_adv = method.perturb(model, x, target)`` with the model in eval mode (BN statistics
frozen, as in the reference), then ``out = method.loss(model, x, x_adv, target)`` in train mode, and
steps on ``out["loss"]``. ``target`` is int labels or soft labels (Mixup/CutMix).
"""

from __future__ import annotations

import torch

from ..attacks import pgd
from ..config import Config
from ..losses import log_counts
from ..threat import hard_labels

METHODS: dict = {}


class Method:
    """Base: PGD with CE on the raw logits as the inner maximisation (SPEC section 1)."""

    def __init__(self, cfg: Config, class_counts: list[int]):
        self.cfg = cfg
        self.class_counts = list(class_counts)
        self._log_n: torch.Tensor | None = None

    def log_n(self, device) -> torch.Tensor:
        if self._log_n is None or self._log_n.device != torch.device(device):
            self._log_n = log_counts(self.class_counts, device)
        return self._log_n

    @property
    def head(self) -> str:
        """The classifier head this method trains (RoBal switches to the cosine head)."""
        return self.cfg.model.head

    @property
    def eps(self) -> float:
        return self.cfg.attack.eps

    @property
    def alpha(self) -> float:
        a = self.cfg.attack.alpha
        return self.cfg.attack.eps / 4 if a is None else a

    def batch_eps(self, target: torch.Tensor):
        """The training radius of each sample: ``attack.eps``, or ``attack.class_eps[y]`` (a tensor [B])
        when per-class budgets are set (ltadv.threat). The step stays ``self.alpha``."""
        if not self.cfg.attack.class_eps:
            return self.cfg.attack.eps
        eps = torch.tensor(self.cfg.attack.class_eps, dtype=torch.float32, device=target.device)
        return eps[hard_labels(target)]

    def perturb(self, model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        a = self.cfg.attack
        if self.cfg.method.robustlt:  # RobustLT's class-wise budgets (methods/robustlt.py)
            from .robustlt import robustlt_perturb

            return robustlt_perturb(self, model, x, target)
        return pgd(model, x, target, eps=self.batch_eps(target), alpha=self.alpha, steps=a.steps, random_start=a.init,
                   clamp_start=a.clamp_start, norm=a.norm)

    def loss(self, model, x: torch.Tensor, x_adv: torch.Tensor, target: torch.Tensor) -> dict:
        raise NotImplementedError

    # Epoch hooks and state, for objectives that change over training (DRW, REAT); no-ops by default.
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the loop before each epoch (0-based), also after a resume."""
        self.epoch = epoch

    def end_epoch(self) -> None:
        """Called by the loop after each epoch's last step, before the checkpoint is written."""

    def epoch_info(self) -> dict:
        """Extra fields for this epoch's record (e.g. CFA's per-class eps); none by default."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def outer(self, logits: torch.Tensor, target: torch.Tensor, default: str = "ce") -> torch.Tensor:
        """The classification loss chosen by ``method.outer_loss`` (``auto``: this method's own ``default``)."""
        from .outer import outer_loss

        return outer_loss(self, logits, target, default)


# Registration happens on import of each method file.
from . import at, robal, trades  # noqa: E402,F401, I001
from . import baselines, reat  # noqa: E402,F401, I001
from . import taet  # noqa: E402,F401, I001
from . import cfa  # noqa: E402,F401, I001
