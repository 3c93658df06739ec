"""An exponential moving average (EMA) of the weights, evaluated and selected beside the raw weights.

Weight averaging for adversarial training: Gowal et al., "Uncovering the Limits of Adversarial Training
against Norm-Bounded Adversarial Examples", arXiv 2010.03593 (decay 0.995), and Rebuffi et al., "Fixing
Data Augmentation to Improve Adversarial Robustness", arXiv 2103.01946. The update rule is the one
RobustLT (zhang-lilin/RobustLT, core/methods/utils.py ``ema_update``, there defined but never called) and
the helper-based AT code it comes from (imrahulr/hat) run after every optimizer step, with the 1-based
step count n (``global_step = (epoch - 1) * update_steps + update_iter``, ``update_iter`` from 1):

    d_n = 0                                              if n < warmup (the average copies the weights)
    d_n = min(decay, (1 + n - warmup) / (10 + n - warmup))   otherwise (``dynamic_decay``, the TensorFlow
                                                          ExponentialMovingAverage num_updates rule)
    W_ema <- d_n * W_ema + (1 - d_n) * W

BatchNorm statistics (``train.ema_bn``):

- ``ema`` (default): the float buffers (running mean and variance) are averaged with the same d_n, and
  the integer ``num_batches_tracked`` copied. The raw model's running statistics were measured under
  the raw weights of the last ~1/momentum batches; averaging them over the same window as the weights
  pairs the averaged weights with statistics of the same period, costs nothing, and needs no choice of
  clean or adversarial images (adversarial training fits BN on x', so a recompute on clean images
  would give other statistics than training saw, and one on x' needs an attack pass per evaluation).
- ``copy``: the raw model's running statistics are copied into the average before it is used
  (``update_bn`` in RobustLT / HAT, called once per epoch there; here before every use).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import reproducibility

CHECKPOINTS = ("ema_best", "ema_last")


def ema_decay_at(n: int, decay: float, warmup: int = 0) -> float:
    """The decay used by the ``n``-th optimizer step (1-based): 0 before ``warmup``, then the dynamic rule."""
    if n < warmup:
        return 0.0
    delta = n - warmup
    return min(decay, (1.0 + delta) / (10.0 + delta))


class WeightEMA:
    """The averaged copy of a model (``.model``, eval mode, no gradients) and its own selection record."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: int = 0, bn: str = "ema"):
        self.decay, self.warmup, self.bn = float(decay), int(warmup), bn
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.steps = 0
        self.best_score, self.best_epoch = -1.0, None
        self.epochs: list[dict] = []

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> float:
        """Average in ``model``'s current weights (call after each optimizer step); returns the d used."""
        self.steps += 1
        d = ema_decay_at(self.steps, self.decay, self.warmup)
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            if self.bn == "ema" and e.is_floating_point():
                e.mul_(d).add_(b, alpha=1.0 - d)
            else:
                e.copy_(b)
        return d

    @torch.no_grad()
    def averaged(self, model: torch.nn.Module) -> torch.nn.Module:
        """The average, ready to evaluate: with ``bn copy`` the raw model's BN statistics copied in first."""
        if self.bn == "copy":
            for e, b in zip(self.model.buffers(), model.buffers()):
                e.copy_(b)
        return self.model.eval()

    def end_epoch(self, model, epoch1: int, scores: Callable[[torch.nn.Module], dict] | None,
                  is_better: Callable[[float | None, float], bool], ckdir: Path) -> dict:
        """Score the average (``scores(module) -> {"val_clean", "val_robust", ...}``, None: not evaluated this
        epoch), keep its best and last weights (``ema_best`` / ``ema_last.safetensors``); returns the record."""
        avg = self.averaged(model)
        t0 = time.perf_counter()
        rng = reproducibility.capture_rng()  # the attack's random starts must not shift the raw run's draws
        rec = {"epoch": epoch1, **(scores(avg) if scores is not None else {"val_clean": None, "val_robust": None}),
               "eval_seconds": time.perf_counter() - t0}
        reproducibility.restore_rng(rng)
        self.epochs.append(rec)
        if is_better(rec["val_robust"], self.best_score):
            self.best_score = rec["val_robust"] if rec["val_robust"] is not None else self.best_score
            self.best_epoch = epoch1
            ckpt.save_weights(ckdir / "ema_best.safetensors", avg)
        ckpt.save_weights(ckdir / "ema_last.safetensors", avg)
        return self.record()

    def record(self) -> dict:
        """``record["ema"]``: the settings, steps averaged, the average's own best epoch and per-epoch scores."""
        return {"decay": self.decay, "warmup": self.warmup, "bn": self.bn, "steps": self.steps,
                "best_epoch": self.best_epoch, "epochs": list(self.epochs)}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "steps": self.steps, "best_score": self.best_score,
                "best_epoch": self.best_epoch, "epochs": list(self.epochs)}

    def load_state_dict(self, state: dict, source: str) -> None:
        ckpt.load_matching(self.model, state["model"], source)
        self.steps, self.best_score = int(state["steps"]), float(state["best_score"])
        self.best_epoch, self.epochs = state["best_epoch"], list(state["epochs"])


def build(cfg, model: torch.nn.Module) -> WeightEMA | None:
    """The run's weight average, or None when ``train.ema_decay`` is 0."""
    t = cfg.train
    return WeightEMA(model, t.ema_decay, t.ema_warmup, t.ema_bn) if t.ema_decay > 0 else None


def checkpoints(cfg, raw: tuple[str, ...]) -> tuple[str, ...]:
    """The checkpoints a run evaluates at the end: ``raw`` plus ``ema_<each>`` when the average is on."""
    return tuple(raw) + (tuple(f"ema_{w}" for w in raw) if cfg.train.ema_decay > 0 else ())
