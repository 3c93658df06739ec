"""The training loop: one readable function, options are config fields (STYLE principle 7).

Per epoch: a fixed data order (seeded by seed and epoch), PGD inner maximisation with the model
in eval mode, an SGD step on the method's loss in train mode, the reference step schedule, robust
accuracy on the fixed validation subset, best and last weights (safetensors) and an atomic
checkpoint of the whole training state, so ``--resume`` continues exactly where a run stopped.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import distributed, reproducibility, threat
from .config import Config, ConfigError, from_dict, protocol_differences
from .data import AUGMENTATIONS, DATASETS, LTData, build_data, build_pipeline, write_subset_file
from .data.sampler import epoch_order
from .evaluate import (
    class_groups,
    eps_sweep,
    evaluate,
    merge_saved_flags,
    robust_flags,
    sanity_warnings,
    summarize,
    to_float,
)
from .fast import EvalView, eval_view, keep_freed_memory
from .methods import METHODS
from .models import MODELS, Classifier, build_model, posthoc
from .nonfinite import check_weights, finite_loss
from .progress import Progress
from .registry import lookup
from .results import RECORD_KEYS, RESULT, environment, git_commit, read_record, write_json_atomic
from .rundir import CKPT_DIR, EVAL_STATE, SUBSET_FILE, RunDirError, RunGuard, RunLock, guarded_run

__all__ = ["CKPT_DIR", "EVAL_STATE", "RunDirError", "evaluate_run", "load_run_model", "train"]


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``: a device that exists here, else a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is {name!r} but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {name!r} is not available here")
    elif dev.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


def check_names(cfg: Config) -> None:
    """Every registry name in the config exists (one clear error naming the bad one)."""
    lookup(DATASETS, cfg.data.name, "dataset")
    lookup(MODELS, cfg.model.name, "model")
    lookup(METHODS, cfg.method.name, "method")
    for a in cfg.data.aug:
        lookup(AUGMENTATIONS, a, "augmentation")
    check_attacks((*cfg.eval.attacks, cfg.eval.val_attack))


def autocast_for(cfg: Config, device: torch.device):
    mode = cfg.train.amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "off"
    if mode == "off":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


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


def memory_layouts(cfg: Config, device: torch.device) -> tuple[bool, bool]:
    """(channels_last for the trained model, channels_last for the attack's eval view).

    ``auto``: the model goes channels_last on CUDA (tensor-core convolutions); the eval view also on
    CPU, where oneDNN's NHWC convolutions ran the attack step ~1.3x faster (benchmarks/).
    """
    mode = cfg.model.channels_last
    return mode == "on" or (mode == "auto" and device.type == "cuda"), mode != "off"


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak resident set so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_meta(data: LTData, method_head: str, normalize: bool = True) -> dict:
    """What a saved model needs to be rebuilt. ``normalize`` false: the reference models' raw [0, 1] input
    (the AT-BSL, RoBal, TRADES, MART and REAT networks have no normalisation layer), kept as mean 0, std 1."""
    mean, std = (list(data.mean), list(data.std)) if normalize else ([0.0] * data.in_channels, [1.0] * data.in_channels)
    return {"num_classes": data.num_classes, "in_channels": data.in_channels, "image_size": data.image_size,
            "head": method_head, "mean": mean, "std": std}


def head_scale(cfg: Config, head: str) -> float:
    """The cosine head's output scale: 1 when RoBal applies s inside its loss (``method.scale_in loss``,
    RoBal's CosPlus classifier with scale 1), else ``method.s``."""
    if head == "cosine" and cfg.method.name == "robal" and cfg.method.scale_in == "loss":
        return 1.0
    return cfg.method.s


def make_model(cfg: Config, meta: dict) -> Classifier:
    return build_model(cfg.model.name, meta["num_classes"], meta["in_channels"], meta["mean"], meta["std"],
                       head=meta["head"], s=head_scale(cfg, meta["head"]), gamma=cfg.method.gamma)


def focal_bias_init(model: Classifier, class_counts) -> None:
    """RoBal's FC_Classifier(focal_init=True): bias_i = -log((1 - pi_i) / pi_i), pi the training prior
    (Lin et al., "Focal Loss for Dense Object Detection", arXiv 1708.02002, Sec. 3.3's prior init)."""
    bias = getattr(model.head, "bias", None)
    if bias is None:
        raise ConfigError("model.focal_bias_init needs a linear head with a bias")
    prior = torch.as_tensor(list(class_counts), dtype=torch.float32)
    prior = prior / prior.sum()
    with torch.no_grad():
        bias.copy_(-torch.log((1 - prior) / prior))


def inference_model(model, cfg: Config, class_counts, head: str):
    """The model as it predicts and is attacked at test time: RoBal-N's post-hoc tau_p adjustment when set.

    With ``method.scale_in loss`` the head outputs cos; RoBal's PostProc classifier (the N configs' eval)
    multiplies by s before subtracting tau_p * log prior, so the wrapper does too. Without tau_p the
    cosine is used as is, as RoBal-R's eval config (CosPlus, scale 1) does.
    """
    return posthoc(model, class_counts, cfg.method.tau_p, scale=cfg.method.s / head_scale(cfg, head))


def build_checked(cfg: Config, meta, weights: Path, source: str) -> Classifier:
    """``make_model`` after checking ``meta`` and the tensor shapes in ``weights``' header against a
    model built on the meta device: a file claiming 10 million classes is refused before allocating."""
    ckpt.check_model_meta(meta, source)
    lookup(MODELS, cfg.model.name, "model")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in make_model(cfg, meta).state_dict().items()}
    ckpt.check_header(weights, shapes)
    return make_model(cfg, meta)


def _rng_state() -> dict:
    return reproducibility.capture_rng()  # python, numpy, torch and CUDA generators


def _set_rng_state(state: dict | None) -> None:
    reproducibility.restore_rng(state)


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
        saved = from_dict(saved).to_dict()  # a field added since the run was saved takes its default
    except ConfigError as e:
        raise ckpt.CheckpointError(f"the configuration saved in {out} is not valid here: {e}") from None
    reproducibility.check_resume_config(saved, cfg.to_dict(), str(out))
    return state, cfg


def train(cfg: Config, out: str | Path, resume: bool = False, force: bool = False, log=print) -> dict:
    """Train (or continue) one run in ``out``; returns the run record also written to ``out/result.json``.

    The folder is locked while this runs (a second writer gets one line naming this PID); a run stopped
    by Ctrl-C / SIGTERM is recorded ``interrupted``, one stopped by an error (a non-finite loss, ...)
    ``failed`` with the reason (ltadv.rundir, ltadv.nonfinite).
    """
    with guarded_run(out, log) as guard:
        return _train(cfg, Path(out), resume, force, log, guard)


def _train(cfg: Config, out: Path, resume: bool, force: bool, log, guard: RunGuard) -> dict:
    check_names(cfg)
    device = pick_device(cfg.train.device)
    state = None
    if resume:
        state, cfg = saved_run_state(out, cfg)
    dctx, device = distributed.setup(device)
    if device.type == "cpu":
        keep_freed_memory()  # reuse freed activations instead of page-faulting fresh mmaps every step
    dctx.local_batch(cfg.optim.batch_size)  # a global batch that does not split is an error before any write
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
    fwd = torch.compile(model) if cfg.train.compile else model
    # Attacks run on a BN-folded channels_last eval view (same function, ~1.5x faster; ltadv.fast).
    attack_model = eval_view(model, fold_bn=cfg.train.fold_bn, channels_last=view_channels_last)
    attack_model = fwd if attack_model is model else (torch.compile(attack_model) if cfg.train.compile
                                                      else attack_model)
    augment = build_pipeline(cfg.data.aug, cfg.data.crop_flip, data.num_classes, data.image_size,
                             groups=cfg.data.aug_groups)

    # Selection split: the held-out validation set, or the test set when reproducing the reference
    # (``last``: no per-epoch evaluation, the last epoch is the result, as RoBal, TRADES and MART report).
    x_sel, y_sel = (data.x_val, data.y_val) if cfg.eval.select_on == "val" else (data.x_test, data.y_test)
    if cfg.eval.val_n is not None:
        x_sel, y_sel = x_sel[: cfg.eval.val_n], y_sel[: cfg.eval.val_n]
    if cfg.eval.max_batches is not None:
        cap = cfg.eval.max_batches * cfg.eval.batch_size
        x_sel, y_sel = x_sel[:cap], y_sel[:cap]
    eps_eval = cfg.attack.eps if cfg.eval.eps is None else cfg.eval.eps
    groups = class_groups(data.class_counts, cfg.eval.head_frac, cfg.eval.tail_frac)

    record = {
        "ltadv_record": 1,
        "status": "running",
        "config": cfg.to_dict(),
        "class_counts": data.class_counts,
        "groups": groups,
        "model_meta": meta,
        "commit": git_commit(),
        "device": str(device),
        "world_size": dctx.world_size,
        "epochs": [],
        "best_epoch": None,
        "selection": {"split": cfg.eval.select_on, "n": int(len(y_sel)) if cfg.eval.select_on != "last" else 0,
                      "attack": cfg.eval.val_attack, "from_epoch": min(cfg.eval.select_from, cfg.train.epochs),
                      "ties": cfg.eval.select_ties},
        "protocol": cfg.protocol,
        "protocol_differences": protocol_differences(cfg),
        "threat_model": threat.describe(cfg),
        "environment": environment(),
    }
    start_epoch, best_score = 0, -1.0
    if state is not None:
        load_into = ckpt.load_matching
        load_into(model, state["model"], str(out / CKPT_DIR / "last.pt"))
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(dctx.pick_rng(state["rng"], log))
        start_epoch, best_score = int(state["epoch"]), float(state["best_score"])
        method.load_state_dict(state.get("method_state") or {})
        record["epochs"], record["best_epoch"] = list(state["epochs"]), state["best_epoch"]
        log(f"resuming {out} after epoch {start_epoch}")
    else:
        write_json_atomic(out / RESULT, record)  # the run's config is on disk from the start (--resume reads it)
        if dctx.is_main and data.train_indices is not None:
            write_subset_file(out / SUBSET_FILE, data)  # the exact images, reusable as data.subset_file
    loss_fwd = dctx.wrap(model, fwd, device, cfg.train.compile)  # DDP for the loss; attacks use the bare model

    # Cost accounting: model forward calls in the training phase (attack steps included); a hook on the
    # eager module is free, but with torch.compile it would break the graph, so then it is not counted.
    forward_calls = [0]
    if not cfg.train.compile:
        for counted in {model, attack_model}:  # the attack's eval view is a module of its own
            counted.register_forward_pre_hook(lambda _m, _a: forward_calls.__setitem__(0, forward_calls[0] + 1))
    x_train = data.x_train.to(device)
    y_train = data.y_train.to(device)
    bs = dctx.local_batch(cfg.optim.batch_size)  # optim.batch_size is the global batch
    batches = math.ceil(epoch_stop(cfg, len(data.y_train), cfg.optim.batch_size) / cfg.optim.batch_size)
    log(start_banner(cfg, data, out, device, dctx.world_size, batches, record["protocol_differences"], start_epoch))
    guard.begun = True  # from here an interruption or error is written into the record
    for epoch in range(start_epoch, cfg.train.epochs):
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, epoch)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        order = epoch_order(cfg.data.sampler, data.y_train, cfg.seed, epoch, cfg.train.epochs,
                            cfg.data.resample_start).to(device)  # a seeded permutation unless re-sampling
        method.set_epoch(epoch)
        order = dctx.shard(order)  # this process's disjoint part (all of it on one process)
        t0 = time.perf_counter()
        forward_calls[0] = 0
        model.train()
        total_loss, total_correct, seen = 0.0, 0, 0
        stop = epoch_stop(cfg, len(order), bs)
        bar = Progress(math.ceil(stop / bs), f"epoch {epoch + 1}/{cfg.train.epochs}",
                       cfg.train.progress and dctx.is_main, log, cfg.train.log_every,
                       images_per_step=bs * dctx.world_size)
        for i in range(0, stop, bs):
            idx = order[i:i + bs]
            x = to_float(x_train[idx], device)
            y = y_train[idx]
            x, target = augment(x, y)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out_m = train_step(model, loss_fwd, attack_model, method, opt, x, target, autocast, scaler)
            total_loss += finite_loss(out_m["loss"], cfg, epoch, i // bs) * len(idx)  # NaN/inf: stop, save nothing
            hard = target if target.dim() == 1 else target.argmax(1)
            total_correct += int((out_m["logits"].detach().argmax(1) == hard).sum())
            seen += len(idx)
            bar.update(1, loss=f"{total_loss / seen:.3f}")
        bar.close()
        total_loss, total_correct, seen = dctx.all_sum(total_loss, total_correct, seen)
        check_weights(model, cfg, epoch)
        method.end_epoch()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t0
        train_forwards, train_peak_mb = forward_calls[0], peak_memory_mb(device)  # before eval adds its own
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        t1 = time.perf_counter()
        if selects_at(cfg, epoch + 1):
            flags = robust_flags(inference_model(model, cfg, data.class_counts, meta["head"]), x_sel, y_sel,
                                 [cfg.eval.val_attack], eps_eval, cfg.eval.batch_size,
                                 settings=threat.eval_settings(cfg))
            val_clean = summarize(flags["clean"], y_sel, data.num_classes, groups)
            val_robust = summarize(flags[cfg.eval.val_attack], y_sel, data.num_classes, groups)
        else:  # not evaluated (before eval.select_from, or selection is the last epoch)
            val_clean = val_robust = {"overall": None, "balanced": None, "tail": None}
        eval_seconds = time.perf_counter() - t1
        rec = {
            "epoch": epoch + 1,
            "lr": lr_at(cfg, epoch),
            "train_loss": total_loss / max(seen, 1),
            "train_robust_acc": total_correct / max(seen, 1),
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "images_per_second": seen / train_seconds if train_seconds > 0 else None,
            "peak_mem_mb": train_peak_mb,
            "eval_peak_mem_mb": peak_memory_mb(device),
            "forward_passes": None if cfg.train.compile else train_forwards,
            "batches": math.ceil(stop / bs),  # this process's batches (re-sampling, DDP shards, drop_last)
            "val_clean": val_clean["overall"],
            "val_robust": val_robust["overall"],
            "val_robust_balanced": val_robust["balanced"],
            "val_robust_tail": val_robust["tail"],
        }
        rec.update(method.epoch_info())  # e.g. CFA's per-class eps
        record["epochs"].append(rec)
        if is_better(cfg, rec["val_robust"], best_score):
            best_score = rec["val_robust"] if rec["val_robust"] is not None else best_score
            record["best_epoch"] = epoch + 1
            ckpt.save_weights(out / CKPT_DIR / "best.safetensors", model)
        ckpt.save_weights(out / CKPT_DIR / "last.safetensors", model)
        ckpt.save_state(out / CKPT_DIR / "last.pt", {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            **({"scaler": scaler.state_dict()} if scaler is not None else {}),
            "rng": dctx.gather_rng(_rng_state()),
            "epoch": epoch + 1,
            "best_score": best_score,
            "best_epoch": record["best_epoch"],
            "epochs": record["epochs"],
            "config": cfg.to_dict(),
            "class_counts": data.class_counts,
            "method_state": method.state_dict(),
        })
        write_json_atomic(out / RESULT, record)
        split = "val" if cfg.eval.select_on == "val" else "test"
        scores = (f"{split} clean {rec['val_clean']:.3f}  {split} {cfg.eval.val_attack} {rec['val_robust']:.3f}  "
                  if rec["val_robust"] is not None else "")
        log(f"epoch {epoch + 1:3d}/{cfg.train.epochs}  lr {rec['lr']:.4g}  loss {rec['train_loss']:.4f}  {scores}"
            f"{train_seconds:.1f}s + {eval_seconds:.1f}s")

    record["status"] = "trained"
    write_json_atomic(out / RESULT, record)
    if not dctx.is_main:  # rank 0 evaluates on the test split; the others are done
        return record
    return evaluate_run(out, cfg.eval.attacks, checkpoints=cfg.eval.checkpoints, data=data, log=log)


def epoch_stop(cfg: Config, n: int, bs: int) -> int:
    """How many of an epoch's ``n`` images are trained on, in batches of ``bs``: all of them, less the
    last short batch with ``data.drop_last`` (the LDAM-DRW / RoBal DataLoader's drop_last=True), at most
    ``train.max_batches`` batches (a smoke test of a real recipe)."""
    stop = n - n % bs if cfg.data.drop_last and n >= bs else n
    return stop if cfg.train.max_batches is None else min(stop, cfg.train.max_batches * bs)


def check_attacks(names) -> None:
    """Every attack name exists and its optional dependency is installed (one clear line otherwise),
    checked before any folder is touched or any work is done."""
    from .attacks import ATTACKS

    for a in names:
        check = getattr(lookup(ATTACKS, a, "attack"), "check", None)
        if check is not None:
            check()


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


def train_step(model, loss_fwd, attack_model, method, opt, x, target, autocast, scaler) -> dict:
    """One adversarial training step: attack in eval mode, then an SGD step on the method's loss.

    ``model`` is the bare module (its mode is toggled here), ``loss_fwd`` what the loss calls (the
    model, compiled and/or DDP-wrapped), ``attack_model`` what the attack calls: the model itself or
    its :class:`~ltadv.fast.EvalView` (BN folded, channels_last), refreshed here from the live weights
    so the attack sees the current model.
    """
    view = getattr(attack_model, "_orig_mod", attack_model)
    if isinstance(view, EvalView):
        view.refresh()
    model.eval()
    with autocast():
        x_adv = method.perturb(attack_model, x, target)
    model.train()
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
    return out


def load_run_model(run_dir: str | Path, which: str = "best", device=None) -> tuple[Classifier, dict]:
    """(eval-mode model, record) from a run folder's safetensors weights."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    run_dir = Path(run_dir)
    record = read_record(run_dir, required=RECORD_KEYS)
    cfg = from_dict(record["config"])
    weights = run_dir / CKPT_DIR / f"{which}.safetensors"
    model = build_checked(cfg, record["model_meta"], weights, f"run record {run_dir / RESULT}")
    ckpt.load_weights(weights, model)
    model = inference_model(model, cfg, record["class_counts"], record["model_meta"]["head"])  # RoBal-N's tau_p
    model = model.to(device or "cpu").eval()
    return model, record


def evaluate_run(
    run_dir: str | Path,
    attacks,
    checkpoints=("best", "last"),
    n: int | None = None,
    data: LTData | None = None,
    device=None,
    log=print,
    sweep_eps: bool = False,
    eps: float | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    norm: str | None = None,
) -> dict:
    """Evaluate a run's best and/or last weights on the balanced test split; merge into result.json.

    Every evaluation is kept under ``record["evaluations"]``, keyed by what was evaluated
    (``"<checkpoint> n=<images> eps=<eps>"``). Only the run's own evaluation (its ``eval.n``, usually the
    whole test set, at its eps) updates the headline ``metrics`` / ``metrics_by_checkpoint``; a subset
    (``n``) or another ``eps`` adds its own entry and leaves the headline numbers byte-identical.

    ``record["metrics"]`` holds the selected checkpoint's numbers (best when evaluated, else last);
    ``record["metrics_by_checkpoint"]`` holds each evaluated checkpoint's; ``record["sanity"]`` the
    sanity-check warnings per checkpoint (also logged); with ``sweep_eps``, ``record["eps_sweep"]``
    PGD-20 accuracy at eps x 1, 2, 4, 8. ``norm`` (linf | l2; default the run's ``eval.norm`` or
    ``attack.norm``) evaluates in another threat model, kept as its own entry.
    Cascade attacks (``aa``) keep resumable state under
    ``RUN_DIR/eval_state/<checkpoint>/``, so an interrupted AutoAttack continues where it stopped.
    The run folder is locked meanwhile (one writer at a time).
    """
    run_dir = Path(run_dir)
    read_record(run_dir, required=RECORD_KEYS)  # a missing run is named before a lock file is made
    with RunLock(run_dir, log):
        return _evaluate_run(run_dir, attacks, checkpoints, n, data, device, log, sweep_eps, eps, batch_size,
                             progress, norm)


def _finished(record: dict, cfg: Config) -> bool:
    """Training is over (so evaluating it completes the run): not a failed or cut-short run."""
    if record.get("status") in ("trained", "complete"):
        return True
    return record.get("status") != "failed" and len(record.get("epochs") or []) >= cfg.train.epochs


def evaluation_key(which: str, n: int, eps: float, norm: str = "linf") -> str:
    """The key of one evaluation in ``record["evaluations"]``: what was evaluated (L-inf keys name no norm)."""
    return f"{which} n={n} eps={eps:.6g}" + ("" if norm == "linf" else f" norm={norm}")


def _evaluate_run(run_dir: Path, attacks, checkpoints, n, data, device, log, sweep_eps, eps_override=None,
                  batch_size=None, progress=None, norm=None) -> dict:
    record = read_record(run_dir, required=RECORD_KEYS)
    cfg = from_dict(record["config"])
    run_norm = threat.eval_norm(cfg)
    norm = norm or run_norm
    settings = threat.eval_settings(cfg, norm)
    check_attacks(attacks)
    device = pick_device(device) if isinstance(device, str) else (device or pick_device(cfg.train.device))
    if torch.device(device).type == "cpu":
        keep_freed_memory()
    if data is None:
        data = build_data(cfg.data, cfg.seed)
    x, y = data.x_test, data.y_test
    run_n = len(y) if cfg.eval.n is None else min(cfg.eval.n, len(y))  # the run's own evaluation
    if cfg.eval.max_batches is not None:
        run_n = min(run_n, cfg.eval.max_batches * cfg.eval.batch_size)
    n = min(n, len(y)) if n is not None else run_n
    x, y = x[:n], y[:n]
    run_eps = cfg.attack.eps if cfg.eval.eps is None else cfg.eval.eps
    eps = run_eps if eps_override is None else float(eps_override)
    # else: an entry of its own, the headline numbers stay
    headline = n == run_n and eps == run_eps and norm == run_norm
    batch_size = batch_size or cfg.eval.batch_size
    progress = cfg.train.progress if progress is None else progress
    evaluations = dict(record.get("evaluations") or {})
    by_ckpt = dict(record.get("metrics_by_checkpoint") or {})
    sanity, sweeps = dict(record.get("sanity") or {}), dict(record.get("eps_sweep") or {})
    seconds = dict(record.get("eval_seconds") or {})
    for which in checkpoints:
        model, _ = load_run_model(run_dir, which, device)
        t0 = time.perf_counter()
        flags, secs = {}, {}
        key = evaluation_key(which, len(y), eps, norm)
        # a subset / other-eps evaluation keeps its resumable attack state and flags apart from the run's own
        state_dir = run_dir / EVAL_STATE / which
        if not headline:
            state_dir = state_dir / (f"n{len(y)}-eps{eps:.6g}" + ("" if norm == "linf" else f"-{norm}"))
        metrics = evaluate(model, x, y, list(attacks), eps, record["class_counts"], batch_size,
                           cfg.eval.head_frac, cfg.eval.tail_frac, progress=progress,
                           state_dir=state_dir, flags_out=flags, seconds_out=secs,
                           settings=settings)
        log(f"evaluated {which} checkpoint on {len(y)} test images in {time.perf_counter() - t0:.1f}s"
            + ("" if headline else f" (n={len(y)}, eps={eps:.4g}: its own entry; the run's numbers are kept)"))
        previous = (evaluations.get(key) or {}).get("metrics") or {}
        evaluations[key] = {"checkpoint": which, "n": int(len(y)), "eps": eps, "norm": norm, "headline": headline,
                            "metrics": {**previous, **metrics}}
        if headline:
            seconds[which] = {**seconds.get(which, {}), **secs}
            by_ckpt[which] = {**by_ckpt.get(which, {}), **metrics}
        flags = merge_saved_flags(state_dir / "flags.pt", f"n={len(y)} eps={eps!r}"
                                  + ("" if norm == "linf" else f" norm={norm}"), flags)
        warnings = sanity_warnings(flags, evaluations[key]["metrics"])
        if sweep_eps:
            sweep = eps_sweep(model, x, y, eps, batch_size=batch_size, settings=settings)
            if headline:
                sweeps[which] = sweep
            evaluations[key]["eps_sweep"] = sweep
            warnings += sweep["warnings"]
            log(f"eps sweep ({which}): " + ", ".join(f"{e:.4g}: {r:.3f}" for e, r in
                                                       zip(sweep["eps"], sweep["robust"])))
        if headline:
            sanity[which] = warnings
        evaluations[key]["sanity"] = warnings
        for w in warnings:
            log(f"warning ({which} checkpoint): {w}")
        if not warnings:
            log(f"sanity checks ({which} checkpoint): no warnings")
    record["evaluations"] = evaluations
    record["last_evaluation"] = [evaluation_key(w, len(y), eps, norm) for w in checkpoints]
    if sweeps:
        record["eps_sweep"] = sweeps
    if headline:
        record["metrics_by_checkpoint"] = by_ckpt
        record["sanity"] = sanity
        record["eval_seconds"] = seconds
        record["metrics"] = by_ckpt.get("best") or by_ckpt.get("last")
        record["eval"] = {"eps": eps, "norm": norm, "n": int(len(y)), "test_set": int(len(data.y_test))}
    if _finished(record, cfg):
        record["status"] = "complete"
    write_json_atomic(run_dir / RESULT, record)
    return record
