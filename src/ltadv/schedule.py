"""The run's schedule: learning rate per epoch, how much of an epoch is trained, when the selection split
is evaluated and which epoch is the best. Pure functions of the config (no state), so a resumed run gets
the same values as an uninterrupted one."""

from __future__ import annotations

import math

from .config import Config


def milestones_passed(cfg: Config, epoch1: int) -> int:
    """How many milestones 1-based epoch ``epoch1`` has reached, as the reference scripts count them.

    AT-BSL (train_at_bsl_cifar10.py): ``if epoch >= 75: lr = 0.1 * lr`` with ``epoch`` 1-based, so a
    milestone at 75 gives 74 epochs at the full rate. ``optim.milestone_unit epoch`` takes the numbers as
    written there; ``fraction`` takes m * train.epochs (0.75 of 100 is that same epoch 75).
    """
    if cfg.optim.milestone_unit == "epoch":
        return sum(epoch1 >= m for m in cfg.optim.milestones)
    return sum(epoch1 >= m * cfg.train.epochs - 1e-9 for m in cfg.optim.milestones)


def lr_at(cfg: Config, epoch: int) -> float:
    """The learning rate of 0-based ``epoch`` (1-based ``epoch + 1`` in the authors' scripts).

    ``step``: lr * lr_decay^(milestones passed). ``compound``: RoBal's ``adjust_learning_rate``
    (wutong16/Adversarial_Long-Tail, train.py) multiplies the optimizer's CURRENT rate by
    lr_decay^(milestones passed) at the start of every epoch, so after the first milestone the rate keeps
    falling tenfold per epoch; computed here in closed form so a resumed run gets the same rate.
    """
    o = cfg.optim

    def factor(e1: int) -> float:  # RoBal: decay from the milestones, or (e + 1) / warmup_epochs while warming up
        return (e1 + 1) / o.warmup_epochs if e1 < o.warmup_epochs else o.lr_decay ** milestones_passed(cfg, e1)

    if o.lr_schedule == "compound":
        return o.lr * math.prod(factor(e) for e in range(1, epoch + 2))
    return o.lr * factor(epoch + 1)


def epoch_stop(cfg: Config, n: int, bs: int) -> int:
    """How many of an epoch's ``n`` images are trained on, in batches of ``bs``: all of them, less the
    last short batch with ``data.drop_last`` (the LDAM-DRW / RoBal DataLoader's drop_last=True), at most
    ``train.max_batches`` batches (a smoke test of a real recipe)."""
    stop = n - n % bs if cfg.data.drop_last and n >= bs else n
    return stop if cfg.train.max_batches is None else min(stop, cfg.train.max_batches * bs)


def selects_at(cfg: Config, epoch1: int) -> bool:
    """Whether 1-based epoch ``epoch1`` is evaluated on the selection split.

    From ``eval.select_from`` on (AT-BSL: ``if epoch >= 75`` in train_at_bsl_cifar10.py; the earlier
    epochs cost nothing), and always the last epoch, so a shortened run still has a best checkpoint.
    ``select_on last`` evaluates none.
    """
    if cfg.eval.select_on == "last":
        return False
    return epoch1 >= min(cfg.eval.select_from, cfg.train.epochs)


def is_better(cfg: Config, score: float | None, best: float) -> bool:
    """Best-epoch rule: the highest robust accuracy on the selection split; ``select_ties first`` keeps the
    earlier epoch (AT-BSL's ``rob > best_rob``), ``last`` the later (REAT's ``>= best_eval_acc``);
    ``select_on last``: every epoch replaces the previous one."""
    if cfg.eval.select_on == "last":
        return True
    if score is None:
        return False
    return score > best or (cfg.eval.select_ties == "last" and score == best)
