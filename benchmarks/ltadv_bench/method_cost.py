"""Training cost of several methods measured in ONE process, interleaved, as ratios to a baseline method.

Wall-clock seconds recorded by runs that trained at different moments on a shared machine measure the
machine's load as much as the method (the findings study saw the same AT-BSL config take 37 s or 120 s
depending on what else ran). Here every method trains the same number of batches of its own config, round
after round, in a rotating order, one thread; each round gives every method's CPU seconds (process time,
which other processes' load barely moves) and wall seconds, and the ratio to the baseline in that round.
The ratios' mean and 95% t interval over rounds are what a reader can compare. No library times a set of
training steps this way (pytest-benchmark and timeit time one callable, not interleaved configs), hence
the hand-written loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path

import torch

from ltadv.config import Config
from ltadv.data.sampler import epoch_order
from ltadv.data.stream import train_batches
from ltadv.evaluate import to_float
from ltadv.intervals import t_interval
from ltadv.rundir import guarded_run
from ltadv.schedule import epoch_stop
from ltadv.session import start_run, train_tensors
from ltadv.train import train_step


def _epoch(run, epoch: int) -> None:
    """One training epoch of ``run`` as ltadv.train's loop runs it (no validation, no checkpoint)."""
    cfg, data, device = run.cfg, run.data, run.device
    x_train, y_train, workers = train_tensors(run)
    bs = cfg.optim.batch_size
    order = epoch_order(cfg.data.sampler, data.y_train, cfg.seed, epoch, cfg.train.epochs,
                        cfg.data.resample_start).to(device)
    run.method.set_epoch(epoch)
    run.model.train()
    stop = epoch_stop(cfg, len(order), bs)
    for x, y in train_batches(x_train, y_train, order, stop, bs, device, workers, cfg.seed, epoch):
        x, target = run.augment(to_float(x, device), y)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        train_step(run.model, run.loss_fwd, run.attack_model, run.method, run.opt, x, target,
                   run.autocast, run.scaler, run.awp)
    run.method.end_epoch()


def method_costs(configs: Mapping[str, Config], out: str | Path, rounds: int = 5, baseline: str | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Train one epoch of each config per round (``rounds`` rounds, the order rotating each round) and
    return {"rounds", "baseline", "cpu_s": {name: [per round]}, "wall_s": ..., "ratio": {name: {"mean",
    "lo", "hi"}}} with the CPU-time ratio to ``baseline`` (default: the first config). Each config's run
    folder is ``out/<name>`` (scratch: the weights move on from round to round as training does)."""
    names = list(configs)
    if not names:
        raise ValueError("method_costs: no config")
    if rounds < 2:
        raise ValueError("method_costs: rounds must be >= 2 (the interval needs two rounds)")
    baseline = baseline or names[0]
    if baseline not in configs:
        raise ValueError(f"method_costs: baseline {baseline!r} is not one of {names}")
    out = Path(out)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    with ExitStack() as stack:
        runs = {}
        for n in names:
            guard = stack.enter_context(guarded_run(out / n, lambda *_a, **_k: None))
            runs[n] = start_run(configs[n], out / n, False, True, lambda *_a, **_k: None, guard)
        for r in range(rounds):
            for n in names[r % len(names):] + names[: r % len(names)]:  # rotate: no method always first
                c0, w0 = time.process_time(), time.perf_counter()
                _epoch(runs[n], r)
                cpu[n].append(time.process_time() - c0)
                wall[n].append(time.perf_counter() - w0)
            log(f"cost round {r + 1}/{rounds}: " + ", ".join(f"{n} {cpu[n][-1]:.2f}s" for n in names))
    ratio = {}
    for n in names:
        vals = [c / b for c, b in zip(cpu[n], cpu[baseline], strict=True) if b > 0]
        lo, hi = t_interval(vals) if len(vals) >= 2 else (math.nan, math.nan)
        ratio[n] = {"mean": sum(vals) / len(vals), "lo": lo, "hi": hi, "per_round": vals}
    return {"rounds": rounds, "baseline": baseline, "threads": torch.get_num_threads(), "cpu_s": cpu,
            "wall_s": wall, "ratio": ratio}
