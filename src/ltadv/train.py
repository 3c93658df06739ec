"""The training loop: one readable function, options are config fields (STYLE principle 7).

Per epoch: a fixed data order (seeded by seed and epoch), PGD inner maximisation with the model
in eval mode, an SGD step on the method's loss in train mode, the reference step schedule, robust
accuracy on the fixed selection split, best and last weights (safetensors) and an atomic checkpoint
of the whole training state, so ``--resume`` continues exactly where a run stopped.

The loop is here; setting the run up, resuming, the record and the checkpoints are in
``ltadv.session``; building devices and models in ``ltadv.build``; the schedule in ``ltadv.schedule``;
the test-split evaluation of a finished run in ``ltadv.run_eval``. ``evaluate_run``, ``load_run_model``
and ``RunDirError`` are re-exported here (``from ltadv.train import ...`` as before the split).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from . import ema as weight_ema
from .build import load_run_model
from .config import Config
from .data.sampler import epoch_order
from .data.stream import train_batches
from .evaluate import to_float
from .fast import EvalView
from .nonfinite import check_weights, finite_loss
from .progress import Progress
from .results import RESULT, write_json_atomic
from .run_eval import evaluate_run
from .rundir import CKPT_DIR, EVAL_STATE, RunDirError, RunGuard, guarded_run
from .schedule import epoch_stop, lr_at
from .session import (
    EpochCosts,
    epoch_line,
    epoch_row,
    planned_batches,
    save_epoch,
    start_banner,
    start_run,
    train_tensors,
    validate,
)
from .shard import Shard

__all__ = ["CKPT_DIR", "EVAL_STATE", "RunDirError", "evaluate_run", "load_run_model", "train", "train_step"]


def train(cfg: Config, out: str | Path, resume: bool = False, force: bool = False, log=print) -> dict:
    """Train (or continue) one run in ``out``; returns the run record also written to ``out/result.json``.

    The folder is locked while this runs (a second writer gets one line naming this PID); a run stopped
    by Ctrl-C / SIGTERM is recorded ``interrupted``, one stopped by an error (a non-finite loss, ...)
    ``failed`` with the reason (ltadv.rundir, ltadv.nonfinite).
    """
    with guarded_run(out, log) as guard:
        return _train(cfg, Path(out), resume, force, log, guard)


def _train(cfg: Config, out: Path, resume: bool, force: bool, log, guard: RunGuard) -> dict:
    run = start_run(cfg, out, resume, force, log, guard)
    cfg, data, device, dctx, model, method = run.cfg, run.data, run.device, run.dctx, run.model, run.method
    x_train, y_train, workers = train_tensors(run)
    bs = dctx.local_batch(cfg.optim.batch_size)  # optim.batch_size is the global batch
    run.log(start_banner(cfg, data, out, device, dctx.world_size, planned_batches(cfg, len(data.y_train)),
                         run.record["protocol_differences"], run.start_epoch))
    guard.begun = True  # from here an interruption or error is written into the record
    for epoch in range(run.start_epoch, cfg.train.epochs):
        for g in run.opt.param_groups:
            g["lr"] = lr_at(cfg, epoch)
        costs = EpochCosts(run)
        order = epoch_order(cfg.data.sampler, data.y_train, cfg.seed, epoch, cfg.train.epochs,
                            cfg.data.resample_start).to(device)  # a seeded permutation unless re-sampling
        method.set_epoch(epoch)
        order = dctx.shard(order)  # this process's disjoint part (all of it on one process)
        model.train()
        stats = {"loss": 0.0, "correct": 0, "seen": 0}
        stop = epoch_stop(cfg, len(order), bs)
        bar = Progress(math.ceil(stop / bs), f"epoch {epoch + 1}/{cfg.train.epochs}",
                       cfg.train.progress and dctx.is_main, run.log, cfg.train.log_every,
                       images_per_step=bs * dctx.world_size)
        for i, (x, y) in enumerate(train_batches(x_train, y_train, order, stop, bs, device, workers,
                                                 cfg.seed, epoch)):
            x, target = run.augment(to_float(x, device), y)
            if run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out_m = train_step(model, run.loss_fwd, run.attack_model, method, run.opt, x, target,
                               run.autocast, run.scaler, run.awp)
            if run.ema is not None:
                run.ema.update(model)
            stats["loss"] += finite_loss(out_m["loss"], cfg, epoch, i) * len(y)  # NaN/inf: stop, save nothing
            hard = target if target.dim() == 1 else target.argmax(1)
            stats["correct"] += int((out_m["logits"].detach().argmax(1) == hard).sum())
            stats["seen"] += len(y)
            bar.update(1, loss=f"{stats['loss'] / stats['seen']:.3f}")
        bar.close()
        stats["loss"], stats["correct"], stats["seen"] = dctx.all_sum(stats["loss"], stats["correct"], stats["seen"])
        stats["batches"] = math.ceil(stop / bs)
        check_weights(model, cfg, epoch)
        method.end_epoch()
        spent = costs.stop()

        t1 = time.perf_counter()
        val = validate(run, epoch + 1)
        row = epoch_row(run, epoch, stats, spent, time.perf_counter() - t1, val)
        save_epoch(run, epoch, row)
        run.log(epoch_line(cfg, row))

    run.record["status"] = "trained"
    write_json_atomic(out / RESULT, run.record)
    # every rank attacks its shard of the test split; rank 0 writes the record (ltadv.shard)
    dctx.barrier()  # rank 0's last checkpoint is on disk before the others load it
    return evaluate_run(out, cfg.eval.attacks, checkpoints=weight_ema.checkpoints(cfg, cfg.eval.checkpoints),
                        data=data, log=run.log,
                        device=device, shard=Shard(dctx.rank, dctx.world_size))


def train_step(model, loss_fwd, attack_model, method, opt, x, target, autocast, scaler, awp=None) -> dict:
    """One adversarial training step: attack in eval mode, then an SGD step on the method's loss.

    ``model`` is the bare module (its mode is toggled here), ``loss_fwd`` what the loss calls (the
    model, compiled and/or DDP-wrapped), ``attack_model`` what the attack calls: the model itself or
    its :class:`~ltadv.fast.EvalView` (BN folded, channels_last), refreshed here from the live weights
    so the attack sees the current model. ``awp`` (ltadv/awp.py) perturbs the weights for the step and
    restores them after it.
    """
    view = getattr(attack_model, "_orig_mod", attack_model)
    if isinstance(view, EvalView):
        view.refresh()
    model.eval()
    with autocast():
        x_adv = method.perturb(attack_model, x, target)
    model.train()
    diff = awp.perturb(model, method, x, x_adv, target, autocast) if awp is not None else None
    with autocast():
        out = method.loss(loss_fwd, x, x_adv, target)
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(out["loss"]).backward()
        scaler.step(opt)
        scaler.update()
    else:
        out["loss"].backward()
        opt.step()
    if diff is not None:
        awp.restore(model, diff)
    return out
