"""A training run's bookkeeping, apart from the training loop itself (``ltadv.train``): setting the
run up (folder checks, data, model, optimizer, attack view, resume), the record and its per-epoch rows,
the training costs of an epoch, the selection split's evaluation, and the checkpoints written after
every epoch (best and last weights as safetensors, the whole training state atomically for ``--resume``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from . import distributed, reproducibility, threat
from . import ema as weight_ema
from .awp import build as build_awp
from .build import (
    autocast_for,
    check_names,
    focal_bias_init,
    inference_model,
    make_model,
    memory_layouts,
    model_meta,
    peak_memory_mb,
    pick_device,
)
from .config import Config, ConfigError, from_dict, protocol_differences
from .data import LTData, build_data, build_pipeline, write_subset_file
from .data.stream import default_workers
from .evaluate import class_groups, robust_flags, summarize
from .fast import eval_view, keep_freed_memory
from .methods import METHODS
from .results import RESULT, environment, git_commit, read_record, write_json_atomic
from .rundir import CKPT_DIR, SUBSET_FILE, RunGuard
from .schedule import epoch_stop, is_better, lr_at, selects_at
from .shard import Shard


@dataclass
class TrainingRun:
    """Everything the epoch loop works with, built by :func:`start_run`."""

    cfg: Config
    out: Path
    data: LTData
    device: torch.device
    dctx: Any  # distributed.DistContext
    method: Any
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    autocast: Any
    scaler: Any
    attack_model: torch.nn.Module  # what the attack calls: the model or its BN-folded eval view
    loss_fwd: Any  # what the loss calls: the model, compiled and/or DDP-wrapped
    augment: Any
    channels_last: bool
    x_sel: torch.Tensor  # the selection split (validation, or test when reproducing the reference)
    y_sel: torch.Tensor
    groups: dict
    record: dict
    log: Any
    awp: Any = None  # AWP's proxy copy (ltadv.awp); None unless method.awp
    ema: Any = None  # the weight average (ltadv.ema); None unless train.ema_decay > 0
    start_epoch: int = 0
    best_score: float = -1.0
    forward_calls: list = field(default_factory=lambda: [0])


def saved_run_state(out: Path, cfg: Config) -> tuple[dict | None, Config]:
    """(training state, config) to resume ``out`` with; the saved config wins only where it may change.

    A resumed run is the same run: a config that differs from the saved one in a field that changes
    the training is an error (see :data:`reproducibility.RESUME_MAY_CHANGE`), never a silent swap.
    """
    last = out / CKPT_DIR / "last.pt"
    if last.is_file():
        state = ckpt.load_state(last, required=ckpt.STATE_KEYS)
        saved = state["config"]
    elif (out / RESULT).is_file():
        state, record = None, read_record(out)
        if record.get("epochs"):
            raise ckpt.CheckpointError(f"cannot resume {out}: {last} is missing but the run record has "
                                       f"{len(record['epochs'])} finished epochs; --force starts it again")
        saved = record["config"]
    else:
        return None, cfg
    try:
        saved_cfg = from_dict(saved)
    except ConfigError as e:
        raise ckpt.CheckpointError(f"the configuration saved in {out} is not valid here: {e}") from None
    # compared as resolved configs: a field added since the run was saved counts as its default
    reproducibility.check_resume_config(saved_cfg.to_dict(), cfg.to_dict(), str(out))
    return state, cfg


def start_run(cfg: Config, out: Path, resume: bool, force: bool, log, guard: RunGuard) -> TrainingRun:
    """Check, build and (with ``resume``) restore everything the loop needs; the run folder is touched
    only after the config, the data and the checkpoint have passed their checks."""
    check_names(cfg)
    device = pick_device(cfg.train.device)
    state = None
    if resume:
        state, cfg = saved_run_state(out, cfg)
    dctx, device = distributed.setup(device)
    if device.type == "cpu":
        keep_freed_memory()  # reuse freed activations instead of page-faulting fresh mmaps every step
    dctx.local_batch(cfg.optim.batch_size)  # a global batch that does not split is an error before any write
    dctx.check_sync_bn(cfg.train.sync_bn, device)  # SyncBatchNorm on CPU: refused before any write
    log = log if dctx.is_main else (lambda *a, **k: None)
    reproducibility.set_deterministic(cfg.train.deterministic)
    data = build_data(cfg.data, cfg.seed)  # data errors surface before the run folder is touched
    threat.check_class_eps(cfg, data.num_classes)
    if state is not None and list(state["class_counts"]) != data.class_counts:
        raise ckpt.CheckpointError(f"checkpoint in {out} was trained on other class counts {state['class_counts']}")
    if cfg.eval.select_on == "val" and len(data.y_val) == 0:
        raise ConfigError("eval.select_on val, but the subset has no validation images "
                          "(set data.val_per_class, or eval.select_on test or last)")
    dctx.run_on_main(guard.start, resume, force, cfg.to_dict())  # checks, locks, --force clears ltadv's files

    reproducibility.seed_everything(cfg.seed, dctx.rank)
    method = METHODS[cfg.method.name](cfg, data.class_counts)
    meta = model_meta(data, method.head, cfg.model.normalize)
    model = make_model(cfg, meta)
    if cfg.model.focal_bias_init and state is None:
        focal_bias_init(model, data.class_counts)
    model = model.to(device)
    channels_last, view_channels_last = memory_layouts(cfg, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov)
    autocast, scaler = autocast_for(cfg, device)
    awp, ema = build_awp(cfg, model), weight_ema.build(cfg, model)
    fwd = torch.compile(model) if cfg.train.compile else model
    # Attacks run on a BN-folded channels_last eval view (same function, ~1.5x faster; ltadv.fast).
    attack_model = eval_view(model, fold_bn=cfg.train.fold_bn, channels_last=view_channels_last)
    attack_model = fwd if attack_model is model else (torch.compile(attack_model) if cfg.train.compile
                                                      else attack_model)
    model = dctx.sync_batchnorm(model, cfg.train.sync_bn, log)  # in place, after the BN-folded attack view
    # a streamed data set crops and flips in its decoding workers (ImageNet's RandomResizedCrop)
    augment = build_pipeline(cfg.data.aug, cfg.data.crop_flip and not streamed(data), data.num_classes,
                             data.image_size, groups=cfg.data.aug_groups)
    x_sel, y_sel = selection_split(cfg, data)
    run = TrainingRun(cfg, out, data, device, dctx, method, model, opt, autocast, scaler, attack_model,
                      dctx.wrap(model, fwd, device, cfg.train.compile),  # DDP for the loss; attacks use the bare model
                      augment, channels_last, x_sel, y_sel,
                      class_groups(data.class_counts, cfg.eval.head_frac, cfg.eval.tail_frac),
                      new_record(cfg, data, meta, device, dctx.world_size, len(y_sel)), log, awp, ema)
    if state is not None:
        restore(run, state)
    else:
        write_json_atomic(out / RESULT, run.record)  # the run's config is on disk from the start (--resume reads it)
        if dctx.is_main and data.train_indices is not None:
            write_subset_file(out / SUBSET_FILE, data)  # the exact images, reusable as data.subset_file
    count_forwards(run)
    return run


def streamed(data: LTData) -> bool:
    """The training images are decoded from disk batch by batch (ImageNet-LT), not held as a tensor."""
    return not isinstance(data.x_train, torch.Tensor)


def train_tensors(run: TrainingRun):
    """(x, y, decoding workers) the batch loop reads: in-memory images on the device, or the streamed list."""
    data, device = run.data, run.device
    x = data.x_train if streamed(data) else data.x_train.to(device)
    workers = run.cfg.data.workers if run.cfg.data.workers is not None else default_workers()  # streamed only
    return x, data.y_train.to(device), workers


def selection_split(cfg: Config, data: LTData) -> tuple[torch.Tensor, torch.Tensor]:
    """The images the best epoch is chosen on: the held-out validation set, or the test set when
    reproducing the reference (``last``: no per-epoch evaluation, as RoBal, TRADES and MART report)."""
    x_sel, y_sel = (data.x_val, data.y_val) if cfg.eval.select_on == "val" else (data.x_test, data.y_test)
    if cfg.eval.val_n is not None:
        x_sel, y_sel = x_sel[: cfg.eval.val_n], y_sel[: cfg.eval.val_n]
    if cfg.eval.max_batches is not None:
        cap = cfg.eval.max_batches * cfg.eval.batch_size
        x_sel, y_sel = x_sel[:cap], y_sel[:cap]
    return x_sel, y_sel


def new_record(cfg: Config, data: LTData, meta: dict, device, world_size: int, n_sel: int) -> dict:
    """The run record (``result.json``) before the first epoch."""
    return {
        "ltadv_record": 1,
        "status": "running",
        "config": cfg.to_dict(),
        "class_counts": data.class_counts,
        "groups": class_groups(data.class_counts, cfg.eval.head_frac, cfg.eval.tail_frac),
        "model_meta": meta,
        "commit": git_commit(),
        "device": str(device),
        "world_size": world_size,
        "epochs": [],
        "best_epoch": None,
        "selection": {"split": cfg.eval.select_on, "n": int(n_sel) if cfg.eval.select_on != "last" else 0,
                      "attack": cfg.eval.val_attack, "from_epoch": min(cfg.eval.select_from, cfg.train.epochs),
                      "ties": cfg.eval.select_ties},
        "protocol": cfg.protocol,
        "protocol_differences": protocol_differences(cfg),
        "threat_model": threat.describe(cfg),
        "environment": environment(),
    }


def restore(run: TrainingRun, state: dict) -> None:
    """Continue from a saved training state: weights, optimizer, scaler, RNG streams, the method's own
    state, the epochs so far and the best score."""
    ckpt.load_matching(run.model, state["model"], str(run.out / CKPT_DIR / "last.pt"))
    run.opt.load_state_dict(state["optimizer"])
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    reproducibility.restore_rng(run.dctx.pick_rng(state["rng"], run.log))
    run.start_epoch, run.best_score = int(state["epoch"]), float(state["best_score"])
    run.method.load_state_dict(state.get("method_state") or {})
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"], str(run.out / CKPT_DIR / "last.pt"))
        run.record["ema"] = run.ema.record()
    run.record["epochs"], run.record["best_epoch"] = list(state["epochs"]), state["best_epoch"]
    run.log(f"resuming {run.out} after epoch {run.start_epoch}")


def count_forwards(run: TrainingRun) -> None:
    """Cost accounting: model forward calls in the training phase (attack steps included). A hook on the
    eager module is free, but with torch.compile it would break the graph, so then nothing is counted."""
    if run.cfg.train.compile:
        return
    calls = run.forward_calls
    for counted in {run.model, run.attack_model, *([run.awp.proxy] if run.awp else [])}:  # view, AWP proxy: modules too
        counted.register_forward_pre_hook(lambda _m, _a: calls.__setitem__(0, calls[0] + 1))


class EpochCosts:
    """The training phase's wall time, peak memory and forward calls for one epoch (started on creation)."""

    def __init__(self, run: TrainingRun):
        self.run = run
        if run.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(run.device)
        run.forward_calls[0] = 0
        self.t0 = time.perf_counter()

    def stop(self) -> dict:
        device = self.run.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        costs = {"train_seconds": time.perf_counter() - self.t0, "peak_mem_mb": peak_memory_mb(device),
                 "forward_passes": None if self.run.cfg.train.compile else self.run.forward_calls[0]}
        if device.type == "cuda":  # the evaluation's peak is measured on its own
            torch.cuda.reset_peak_memory_stats(device)
        return costs


def validate(run: TrainingRun, epoch1: int) -> tuple[dict, dict]:
    """(clean, robust) summaries on the selection split after 1-based epoch ``epoch1``; Nones when that
    epoch is not evaluated (before ``eval.select_from``, or selection is the last epoch)."""
    if not selects_at(run.cfg, epoch1):
        none = {"overall": None, "balanced": None, "tail": None}
        return none, none
    return selection_scores(run, run.model)


def selection_scores(run: TrainingRun, weights: torch.nn.Module) -> tuple[dict, dict]:
    """(clean, robust) summaries of ``weights`` (the trained model or its weight average) on the selection
    split, as the model predicts at test time, with ``eval.val_attack`` in the run's threat model."""
    cfg = run.cfg
    model = inference_model(weights, cfg, run.data.class_counts, run.record["model_meta"]["head"])
    flags = robust_flags(model, run.x_sel, run.y_sel, [cfg.eval.val_attack], threat.eval_eps(cfg),
                         cfg.eval.batch_size, settings=threat.eval_settings(cfg),
                         shard=Shard(run.dctx.rank, run.dctx.world_size))  # DDP: each rank its batches
    n_cls = run.data.num_classes
    return (summarize(flags["clean"], run.y_sel, n_cls, run.groups),
            summarize(flags[cfg.eval.val_attack], run.y_sel, n_cls, run.groups))


def val_fields(clean: dict, robust: dict) -> dict:
    """The selection scores of an epoch row (and of the weight average's row)."""
    return {"val_clean": clean["overall"], "val_robust": robust["overall"],
            "val_robust_balanced": robust["balanced"], "val_robust_tail": robust["tail"]}


def epoch_row(run: TrainingRun, epoch: int, train: dict, costs: dict, eval_seconds: float,
              val: tuple[dict, dict]) -> dict:
    """One row of ``record["epochs"]``. ``train``: loss, correct, seen, batches of this epoch."""
    seen, secs = train["seen"], costs["train_seconds"]
    return {
        "epoch": epoch + 1,
        "lr": lr_at(run.cfg, epoch),
        "train_loss": train["loss"] / max(seen, 1),
        "train_robust_acc": train["correct"] / max(seen, 1),
        "train_seconds": secs,
        "eval_seconds": eval_seconds,
        "images_per_second": seen / secs if secs > 0 else None,
        "peak_mem_mb": costs["peak_mem_mb"],
        "eval_peak_mem_mb": peak_memory_mb(run.device),
        "forward_passes": costs["forward_passes"],
        "batches": train["batches"],  # this process's batches (re-sampling, DDP shards, drop_last)
        **val_fields(*val),
        **run.method.epoch_info(),  # e.g. CFA's per-class eps
    }


def save_epoch(run: TrainingRun, epoch: int, row: dict) -> None:
    """Append the epoch's row, keep the best weights by the selection rule, and write the last weights,
    the whole training state (atomically: a kill leaves the previous one) and the record."""
    cfg, out, record = run.cfg, run.out, run.record
    record["epochs"].append(row)
    if is_better(cfg, row["val_robust"], run.best_score):
        run.best_score = row["val_robust"] if row["val_robust"] is not None else run.best_score
        record["best_epoch"] = epoch + 1
        ckpt.save_weights(out / CKPT_DIR / "best.safetensors", run.model)
    ckpt.save_weights(out / CKPT_DIR / "last.safetensors", run.model)
    if run.ema is not None:  # the average's own scores, best and last weights (ltadv.ema)
        record["ema"] = run.ema.end_epoch(run.model, epoch + 1, ema_scorer(run, epoch + 1),
                                          lambda s, b: is_better(cfg, s, b), out / CKPT_DIR)
    ckpt.save_state(out / CKPT_DIR / "last.pt", {
        "model": run.model.state_dict(),
        "optimizer": run.opt.state_dict(),
        **({"scaler": run.scaler.state_dict()} if run.scaler is not None else {}),
        "rng": run.dctx.gather_rng(reproducibility.capture_rng()),  # python, numpy, torch and CUDA generators
        "epoch": epoch + 1,
        "best_score": run.best_score,
        "best_epoch": record["best_epoch"],
        "epochs": record["epochs"],
        "config": cfg.to_dict(),
        "class_counts": run.data.class_counts,
        "method_state": run.method.state_dict(),
        **({"ema": run.ema.state_dict()} if run.ema is not None else {}),
    })
    write_json_atomic(out / RESULT, record)


def ema_scorer(run: TrainingRun, epoch1: int):
    """The weight average's selection-split scores after ``epoch1`` (None when that epoch is not evaluated)."""
    if not selects_at(run.cfg, epoch1):
        return None

    return lambda average: val_fields(*selection_scores(run, average))  # the same scores as the raw weights' row


def epoch_line(cfg: Config, row: dict) -> str:
    """The log line after an epoch."""
    split = "val" if cfg.eval.select_on == "val" else "test"
    scores = (f"{split} clean {row['val_clean']:.3f}  {split} {cfg.eval.val_attack} {row['val_robust']:.3f}  "
              if row["val_robust"] is not None else "")
    return (f"epoch {row['epoch']:3d}/{cfg.train.epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
            f"{scores}{row['train_seconds']:.1f}s + {row['eval_seconds']:.1f}s")


def start_banner(cfg: Config, data: LTData, out: Path, device, world: int, batches: int, diffs: dict,
                 start_epoch: int) -> str:
    """What is about to run, before the first batch: data and class counts, model, method, schedule,
    selection, device and where the record goes."""
    c = data.class_counts
    sel = {"val": f"best {cfg.eval.val_attack} on {len(data.y_val)} validation images",
           "test": f"best {cfg.eval.val_attack} on the test set", "last": "the last epoch"}[cfg.eval.select_on]
    if cfg.eval.select_on != "last" and cfg.eval.select_from > 1:
        sel += f" from epoch {min(cfg.eval.select_from, cfg.train.epochs)}"
    lines = [
        f"ltadv {'resuming' if start_epoch else 'training'} {out}",
        f"  data    {cfg.data.name}: {len(c)} classes, {sum(c)} training images (largest class {c[0]}, smallest "
        f"{min(c)}, IR {max(c) / max(min(c), 1):.4g}), {len(data.y_test)} test images",
        f"  run     {cfg.method.name} on {cfg.model.name}, eps {cfg.attack.eps:.4g}"
        f"{' (L2)' if cfg.attack.norm == 'l2' else ''}, PGD-{cfg.attack.steps} training "
        f"attack, {cfg.train.epochs} epochs x {batches} batches of {cfg.optim.batch_size}, lr {cfg.optim.lr:g}"
        f"{', aug ' + '+'.join(cfg.data.aug) if cfg.data.aug else ''}",
        f"  select  {sel}; device {device}" + (f" x {world} processes" if world > 1 else ""),
    ]
    if cfg.protocol:
        lines.append(f"  protocol {cfg.protocol}"
                     + (": differs in " + ", ".join(diffs) if diffs else " (every field as the authors')"))
    return "\n".join(lines)


def planned_batches(cfg: Config, n_train: int) -> int:
    """Batches per epoch of the global batch, for the banner."""
    return math.ceil(epoch_stop(cfg, n_train, cfg.optim.batch_size) / cfg.optim.batch_size)
