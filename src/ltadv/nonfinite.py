"""The non-finite guard: training stops at the first NaN / inf loss (or weights), never saving them.

A diverged run ends with one line naming the epoch, the batch and the likely cause; its record is
marked ``failed`` with that line, and the checkpoints of the last finished epoch stay as they were.
"""

from __future__ import annotations

import math

import torch

from .config import Config
from .rundir import RunFailed


class TrainingDiverged(RunFailed):
    """The loss or the weights stopped being finite."""


def _kept(epoch: int) -> str:
    return (f"nothing of epoch {epoch + 1} was saved; the checkpoint of epoch {epoch} is kept" if epoch
            else "no checkpoint was written")


def likely_cause(cfg: Config, epoch: int, batch: int) -> str:
    if cfg.optim.lr >= 10:
        return f"optim.lr {cfg.optim.lr:g} is far too large"
    if cfg.train.amp == "fp16":
        return "fp16 overflow (try --train.amp bf16 or off)"
    m = cfg.method
    if epoch == 0 and batch == 0:
        return (f"the loss is not finite from the first batch: check the method's settings (tau_b {m.tau_b:g}, "
                f"beta {m.beta:g}, s {m.s:g}) and the data")
    return f"the learning rate ({cfg.optim.lr:g}) may be too large for this model and batch size"


def finite_loss(loss: torch.Tensor, cfg: Config, epoch: int, batch: int) -> float:
    """The loss as a float; :class:`TrainingDiverged` when it is NaN or infinite."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingDiverged(f"training stopped: the loss is {value} at epoch {epoch + 1}, batch {batch + 1}; "
                               f"likely cause: {likely_cause(cfg, epoch, batch)}; {_kept(epoch)}")
    return value


def check_weights(model: torch.nn.Module, cfg: Config, epoch: int) -> None:
    """Before an epoch's weights are evaluated and saved: every parameter and buffer is finite."""
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TrainingDiverged(f"training stopped: weight {name} is not finite after epoch {epoch + 1}; "
                                   f"likely cause: {likely_cause(cfg, epoch, 1)}; {_kept(epoch)}")
