"""bf16 autocast against fp32 on CPU: the attack and the training step, timed in one run, and robust
accuracy on a trained digits model (issue 21, item 5).

    python -m ltadv_bench.bf16_cpu [--epochs 8] [--rounds 5] [--json PATH]

CPUs with native bf16 (``avx512_bf16``: VDPBF16PS; ``amx_bf16``: AMX tiles) can run oneDNN's bf16
convolutions at 2x (AVX-512 BF16) to ~16x (AMX) the fp32 rate; without them oneDNN converts bf16 to
fp32 and back, which can only cost time. ltadv's ``train.amp auto`` is off on CPU; this measures
whether that should change here:

1. trains an AT model on digits-lt in fp32 (``--epochs``);
2. times, rounds alternating, a PGD-10 attack (batch 128, on the BN-folded channels_last view) and
   a full training step (PGD-10 + SGD), fp32 vs ``torch.autocast("cpu", torch.bfloat16)``, for the
   digits model and for a CIFAR-shaped ResNet-18 (``--resnet-batch``, default 32);
3. PGD-20 robust accuracy of the trained model on the digits test set, attack run in fp32 vs bf16.

Prints a table and writes JSON (what the CPU has: flags, ``torch.backends.mkldnn``, oneDNN's ISA).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from ltadv.attacks import pgd
from ltadv.build import load_run_model
from ltadv.config import load_config
from ltadv.data import build_data
from ltadv.evaluate import robust_flags, to_float
from ltadv.fast import eval_view, keep_freed_memory
from ltadv.methods import METHODS
from ltadv.models import build_model
from ltadv.timing import timed
from ltadv.train import train, train_step

from .peak import cpu_description


def autocast_of(dtype: str):
    if dtype == "fp32":
        import contextlib

        return contextlib.nullcontext
    return lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def time_pair(fn_of, rounds: int) -> dict:
    """Median seconds of ``fn_of(dtype)()`` for fp32 and bf16, rounds alternating (after a warm-up each)."""
    fns = {d: fn_of(d) for d in ("fp32", "bf16")}
    for fn in fns.values():
        fn()
    times = {d: [] for d in fns}
    for _ in range(rounds):
        for d, fn in fns.items():
            times[d].append(timed(fn))
    med = {d: statistics.median(t) for d, t in times.items()}
    return {"fp32_s": med["fp32"], "bf16_s": med["bf16"], "bf16_speedup": med["fp32"] / med["bf16"], "rounds": times}


def step_timings(model, x, y, counts, rounds: int, steps: int = 10) -> dict:
    cfg = load_config(overrides={"data.name": "cifar10-lt", "method.name": "at_bsl", "attack.steps": steps})
    eps, alpha = 8 / 255, 2 / 255

    def attack_of(dtype):
        view = eval_view(copy.deepcopy(model).eval(), fold_bn=True, channels_last=True)
        ac = autocast_of(dtype)

        def run():
            with ac():
                pgd(view, x, y, eps=eps, alpha=alpha, steps=steps)
        return run

    def step_of(dtype):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        view = eval_view(m, fold_bn=True, channels_last=True)
        method, ac = METHODS["at_bsl"](cfg, counts), autocast_of(dtype)
        return lambda: train_step(m, m, view, method, opt, x, y, ac, None)

    return {"attack_pgd10": time_pair(attack_of, rounds), "train_step": time_pair(step_of, rounds)}


def robust_acc(model, data, eps: float, dtype: str, n: int) -> float:
    x, y = data.x_test[:n], data.y_test[:n]
    torch.manual_seed(0)
    with autocast_of(dtype)():
        flags = robust_flags(model, x, y, ["pgd20"], eps, batch_size=256)
    return float(flags["pgd20"].float().mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bf16_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=8, help="digits-lt AT epochs of the model to evaluate")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n", type=int, default=500, help="digits test images for the robust accuracy")
    p.add_argument("--resnet-batch", type=int, default=32)
    p.add_argument("--json", default="runs/bench/bf16_cpu.json")
    args = p.parse_args(argv)
    keep_freed_memory(True)
    cpu = cpu_description()
    native = sorted(cpu["flags"] & {"avx512_bf16", "amx_bf16", "amx_tile"})
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "default")
    print(f"bf16_cpu: {cpu['model']}, {torch.get_num_threads()} threads, native bf16: {native or 'none'}, "
          f"mkldnn {torch.backends.mkldnn.is_available()}, ONEDNN_MAX_CPU_ISA {isa}")

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(overrides={"data.name": "digits-lt", "method.name": "at", "train.epochs": args.epochs,
                                     "train.progress": False, "eval.attacks": ["clean"],
                                     "eval.checkpoints": ["last"]})
        train(cfg, Path(tmp) / "digits", log=lambda *a, **k: None)
        model, record = load_run_model(Path(tmp) / "digits", "last", "cpu")
    data = build_data(cfg.data, cfg.seed)
    eps = cfg.attack.eps
    print(f"  trained {args.epochs} epochs; PGD-20 robust accuracy, fp32 and bf16 attacks ...", flush=True)
    acc = {d: robust_acc(model, data, eps, d, args.n) for d in ("fp32", "bf16")}
    print(f"  timing digits small_cnn (batch 128), then ResNet-18 (batch {args.resnet_batch}) ...", flush=True)

    torch.manual_seed(0)
    xd = to_float(data.x_train[:128], torch.device("cpu"))
    yd = data.y_train[:128]
    digits = step_timings(model.train(), xd, yd, record["class_counts"], args.rounds)
    resnet = build_model("resnet18", 10, 3, (0.5,) * 3, (0.25,) * 3)
    xc, yc = torch.rand(args.resnet_batch, 3, 32, 32), torch.arange(args.resnet_batch) % 10
    cifar = step_timings(resnet, xc, yc, [100 - 9 * i for i in range(10)], args.rounds)

    result = {"cpu": cpu["model"], "threads": torch.get_num_threads(), "native_bf16": native,
              "flags_avx512": sorted(f for f in cpu["flags"] if f.startswith(("avx512", "amx"))),
              "digits_small_cnn_batch128": digits, "cifar_resnet18": {**cifar, "batch": args.resnet_batch},
              "digits_pgd20_robust_acc": {**acc, "n": args.n, "epochs": args.epochs}}
    rows = [("digits small_cnn, batch 128", digits), (f"CIFAR-shaped ResNet-18, batch {args.resnet_batch}", cifar)]
    print("| workload | part | fp32 s | bf16 s | bf16 speed-up |\n|---|---|---|---|---|")
    for name, r in rows:
        for part in ("attack_pgd10", "train_step"):
            t = r[part]
            print(f"| {name} | {part} | {t['fp32_s']:.3f} | {t['bf16_s']:.3f} | {t['bf16_speedup']:.2f}x |")
    print(f"PGD-20 robust accuracy, digits test ({args.n} images): fp32 attack {acc['fp32']:.3f}, "
          f"bf16 attack {acc['bf16']:.3f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
