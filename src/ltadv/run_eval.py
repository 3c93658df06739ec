"""Evaluating a run folder's checkpoints on the test split and merging the numbers into its record."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from . import distributed, threat
from .build import check_attacks, load_run_model, pick_device
from .config import Config, from_dict
from .data import LTData, build_data
from .evaluate import eps_sweep, evaluate, merge_saved_flags, sanity_warnings
from .fast import keep_freed_memory
from .results import RECORD_KEYS, RESULT, read_record, write_json_atomic
from .rundir import EVAL_STATE, RunLock
from .shard import Shard


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
    shard: Shard | None = None,
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

    Under ``torchrun`` (or with ``shard``, the DDP training loop's) every process attacks its part of
    the points and rank 0 writes the record, the same as one process's (:mod:`ltadv.shard`).
    """
    run_dir = Path(run_dir)
    read_record(run_dir, required=RECORD_KEYS)  # a missing run is named before a lock file is made
    main = shard.is_main if shard is not None else distributed.launched_rank() == 0
    with RunLock(run_dir, log) if main else contextlib.nullcontext():  # rank 0 is the one writer
        return _evaluate_run(run_dir, attacks, checkpoints, n, data, device, log, sweep_eps, eps, batch_size,
                             progress, shard, norm)


def _finished(record: dict, cfg: Config) -> bool:
    """Training is over (so evaluating it completes the run): not a failed or cut-short run."""
    if record.get("status") in ("trained", "complete"):
        return True
    return record.get("status") != "failed" and len(record.get("epochs") or []) >= cfg.train.epochs


def evaluation_key(which: str, n: int, eps: float, norm: str = "linf") -> str:
    """The key of one evaluation in ``record["evaluations"]``: what was evaluated (L-inf keys name no norm)."""
    return f"{which} n={n} eps={eps:.6g}" + ("" if norm == "linf" else f" norm={norm}")


def _evaluate_run(run_dir: Path, attacks, checkpoints, n, data, device, log, sweep_eps, eps_override=None,
                  batch_size=None, progress=None, shard=None, norm=None) -> dict:
    record = read_record(run_dir, required=RECORD_KEYS)
    cfg = from_dict(record["config"])
    run_norm = threat.eval_norm(cfg)
    norm = norm or run_norm
    settings = threat.eval_settings(cfg, norm)
    check_attacks(attacks)
    device = pick_device(device) if isinstance(device, str) else (device or pick_device(cfg.train.device))
    if shard is None:  # `torchrun ... ltadv eval`: join the process group (one process: the whole test set)
        shard, device = distributed.eval_setup(device)
        log = log if shard.is_main else (lambda *a, **k: None)
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
    run_eps = threat.eval_eps(cfg)
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
                           settings=settings, shard=shard)
        log(f"evaluated {which} checkpoint on {len(y)} test images in {time.perf_counter() - t0:.1f}s"
            + ("" if headline else f" (n={len(y)}, eps={eps:.4g}: its own entry; the run's numbers are kept)"))
        previous = (evaluations.get(key) or {}).get("metrics") or {}
        evaluations[key] = {"checkpoint": which, "n": int(len(y)), "eps": eps, "norm": norm, "headline": headline,
                            "metrics": {**previous, **metrics}}
        if headline:
            seconds[which] = {**seconds.get(which, {}), **secs}
            by_ckpt[which] = {**by_ckpt.get(which, {}), **metrics}
        if shard.is_main:  # one writer: rank 0 keeps the flags (every rank holds the same, gathered)
            flags = merge_saved_flags(state_dir / "flags.pt", f"n={len(y)} eps={eps!r}"
                                      + ("" if norm == "linf" else f" norm={norm}"), flags)
        warnings = sanity_warnings(flags, evaluations[key]["metrics"])
        if sweep_eps:
            sweep = eps_sweep(model, x, y, eps, batch_size=batch_size, shard=shard, settings=settings)
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
    if shard.is_main:  # the other ranks hold the same numbers but no lock: rank 0 writes
        write_json_atomic(run_dir / RESULT, record)
    return record
