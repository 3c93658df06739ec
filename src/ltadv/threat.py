"""The threat model of a run: the norm (L-inf or L2) and the per-class training budgets.

``attack.norm`` (``linf`` | ``l2``) is the ball of the training attack and, unless ``eval.norm`` says
otherwise, of every evaluation attack; eps is always in pixel units of [0, 1] images. ``attack.class_eps``
gives each class its own training radius (one value per class); the attack then takes a per-sample eps,
``class_eps[y]``. The projections and steps live in :mod:`ltadv.attacks`.
"""

from __future__ import annotations

import dataclasses

import torch

from .config import Config, ConfigError


def eval_norm(cfg: Config) -> str:
    """The norm of the test attacks: ``eval.norm``, else the training ``attack.norm``."""
    return cfg.eval.norm or cfg.attack.norm


def eval_eps(cfg: Config) -> float:
    """The radius of the test (and selection) attacks: ``eval.eps``, else the training ``attack.eps``."""
    return cfg.attack.eps if cfg.eval.eps is None else cfg.eval.eps


def eval_settings(cfg: Config, norm: str | None = None):
    """The run's ``cfg.eval`` with the norm resolved (``norm``, else :func:`eval_norm`): what
    :func:`ltadv.evaluate.robust_flags` takes as ``settings`` (its attack fields become an
    :class:`~ltadv.attacks.AttackSettings`, ``attack_misclassified`` stays with it)."""
    norm = norm or eval_norm(cfg)
    starts = [k for k in ("fgsm_init", "pgd_init", "mim_init") if getattr(cfg.eval, k) == "uniform_plus"]
    if norm == "l2" and starts:
        raise ConfigError(f"eval.{starts[0]} uniform_plus (x + U[0, eps)) is L-inf only: an l2 evaluation needs "
                          f"uniform, normal or zero starts")
    return dataclasses.replace(cfg.eval, norm=norm)


def check_class_eps(cfg: Config, num_classes: int) -> None:
    """``attack.class_eps`` holds one radius per class of the data (or is empty)."""
    n = len(cfg.attack.class_eps)
    if n and n != num_classes:
        raise ConfigError(f"attack.class_eps must hold one eps per class: the data has {num_classes} classes, "
                          f"attack.class_eps has {n} values")


def class_eps(cfg: Config, num_classes: int, device=None) -> torch.Tensor:
    """The per-class training radii [C]: ``attack.class_eps``, else ``attack.eps`` for every class."""
    check_class_eps(cfg, num_classes)
    values = cfg.attack.class_eps or (cfg.attack.eps,) * num_classes
    return torch.tensor(values, dtype=torch.float32, device=device)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Int labels of a batch: ``target`` itself, or the argmax of soft labels (Mixup / CutMix)."""
    return target if target.dim() == 1 else target.argmax(1)


def describe(cfg: Config) -> dict:
    """The run record's ``threat_model``: which norm and radius the model was trained and is evaluated with."""
    train = {"norm": cfg.attack.norm, "eps": cfg.attack.eps}
    if cfg.attack.class_eps:
        train["class_eps"] = list(cfg.attack.class_eps)
    return {"train": train, "eval": {"norm": eval_norm(cfg),
                                     "eps": eval_eps(cfg)}}
