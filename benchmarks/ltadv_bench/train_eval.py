"""``ltadv bench``: ltadv's training step and evaluation against a reference-style baseline, in one process.

The baseline follows the AT-BSL / RoBal / TRADES scripts: a per-image PIL pipeline (RandomCrop(32, 4)
+ RandomHorizontalFlip + ToTensor) behind a torch DataLoader, fp32, NCHW, glibc's default
allocator; training: PGD via ``torch.autograd.grad`` with the model in eval mode, then BSL on x' in
train mode and an SGD step; PGD-20 evaluation in the scripts' ``_pgd_whitebox`` schedule
(:func:`ltadv_bench.reference.reference_pgd_eval`). ltadv's side is the real code path (:func:`ltadv.train.train_step`,
:func:`ltadv.evaluate.robust_flags`): uint8 data on the device with batch crop/flip, the attack on a
BN-folded channels_last eval view, autocast on CUDA, heap reuse on CPU
(:func:`ltadv.fast.keep_freed_memory`). Both run the same model (same initial weights), batch and
data; the figure is the median over rounds. Rounds alternate between the sides when both use the
same allocator; otherwise the reference runs first (the allocator switch is one-way).
Achieved FLOP/s (counted with torch.utils.flop_counter) is reported as a fraction of the hardware's
peak in ltadv's compute dtype (bf16 on CUDA, fp32 on CPU): the larger of the theoretical and the
measured peak (:mod:`ltadv_bench.peak`; the JSON's ``peak`` says which). The reference-style
baseline lives in :mod:`ltadv_bench.reference`.
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ltadv.build import autocast_for, memory_layouts, pick_device
from ltadv.config import load_config
from ltadv.data.augment import build_pipeline
from ltadv.evaluate import robust_flags, to_float
from ltadv.fast import eval_view, heap_reuse_available, keep_freed_memory
from ltadv.methods import METHODS
from ltadv.models import build_model
from ltadv.timing import Stopwatch, timed
from ltadv.train import train_step

from .peak import peak
from .reference import PILDataset, reference_pgd_eval, reference_train_step

CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))


def train_step_flops(model, batch_size: int, steps: int, device) -> int:
    """FLOPs of one PGD-k training step, counted with torch.utils.flop_counter.

    One attack step is a forward plus a backward to the input (the same FLOPs as the forward for
    convolutions and linear layers), the SGD step a forward plus a full backward. FlopCounterMode
    cannot watch ``autograd.grad`` on a leaf, so the two parts are counted separately.
    """
    model = copy.deepcopy(model).to(device)
    x = torch.rand(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    with FlopCounterMode(display=False) as fwd:
        model(x)
    with FlopCounterMode(display=False) as full:
        F.cross_entropy(model(x), y).backward()
    return steps * 2 * fwd.get_total_flops() + full.get_total_flops()


def run_bench(model_name: str = "resnet18", batch_size: int = 128, rounds: int = 3, steps: int = 10,
              num_workers: int = 2, device: str = "auto", out: str | Path | None = None,
              aa_n: int = 0, same_allocator: bool = False, log=print, compile: bool = False,
              ltadv_batch_size: int | None = None) -> dict:
    """Time both sides; see the module docstring. The reference runs with glibc's default allocator
    behaviour, as its scripts do, and ltadv with :func:`ltadv.fast.keep_freed_memory`, as its
    ``train``/``eval`` do on CPU (switched on once the reference is done); ``same_allocator`` gives
    the reference the same allocator setting, to isolate the code paths' own speed-up.

    ``compile``: ltadv's side as ``--train.compile true`` runs it (the loss model and the attack's
    view through ``torch.compile``). ``ltadv_batch_size``: ltadv's training batch (default
    ``batch_size``; a larger batch is a throughput figure, not the protocol's recipe).
    """
    dev = pick_device(device)
    eval_steps = 20  # ltadv's side is its registered pgd20 attack
    our_bs = ltadv_batch_size or batch_size
    # glibc's default for the reference unless same_allocator (then heap reuse from the start)
    heap = dev.type == "cpu" and heap_reuse_available()
    if heap and same_allocator:
        keep_freed_memory(True)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = max(batch_size, our_bs) * (rounds + 1)
    x_hwc = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y_np = rng.integers(0, 10, size=n).astype(np.int64)
    counts = [int(c) for c in np.maximum(np.bincount(y_np, minlength=10), 1)]
    eps, alpha = 8 / 255, 2 / 255

    cfg = load_config(overrides={"data.name": "cifar10-lt", "model.name": model_name, "method.name": "at_bsl",
                                 "attack.steps": steps, "train.device": str(dev), "train.compile": compile})
    base = build_model(model_name, 10, 3, *CIFAR_STATS).to(dev)
    ref_model = copy.deepcopy(base)
    our_model = copy.deepcopy(base)
    channels_last, view_channels_last = memory_layouts(cfg, dev)
    if channels_last:
        our_model = our_model.to(memory_format=torch.channels_last)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    our_opt = torch.optim.SGD(our_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    method = METHODS["at_bsl"](cfg, counts)
    autocast, scaler = autocast_for(cfg, dev)
    amp_dtype = "bf16" if dev.type == "cuda" and cfg.train.amp in ("auto", "bf16") else "fp32"
    view = eval_view(our_model, fold_bn=cfg.train.fold_bn, channels_last=view_channels_last)
    our_fwd = torch.compile(our_model) if compile else our_model
    if compile:
        view = our_fwd if view is our_model else torch.compile(view)
    augment = build_pipeline((), True, 10, 32)
    x_u8 = torch.from_numpy(x_hwc).permute(0, 3, 1, 2).contiguous().to(dev)
    y_all = torch.from_numpy(y_np).to(dev)

    loader = torch.utils.data.DataLoader(PILDataset(x_hwc, y_np), batch_size=batch_size, shuffle=True,
                                         num_workers=num_workers, persistent_workers=num_workers > 0,
                                         drop_last=True)

    def ref_batches():
        while True:
            yield from loader

    ref_iter = ref_batches()

    def ref_step():
        xb, yb = next(ref_iter)
        reference_train_step(ref_model, ref_opt, xb.to(dev), yb.to(dev), counts, eps, alpha, steps)

    order = torch.randperm(n, device=dev)
    pos = [0]

    def our_step():
        start = pos[0] % (n - our_bs + 1)
        idx = order[start:start + our_bs]
        pos[0] += our_bs
        x, target = augment(to_float(x_u8[idx], dev), y_all[idx])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        train_step(our_model, our_fwd, view, method, our_opt, x, target, autocast, scaler)

    mem = {"reference": 0.0, "ltadv": 0.0}  # CUDA: peak allocated MiB over each side's calls

    def timed_side(fn, side):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        seconds = timed(fn, dev)
        if dev.type == "cuda":
            mem[side] = max(mem[side], torch.cuda.max_memory_allocated(dev) / 2**20)
        return seconds

    log(f"bench: {model_name}, batch {batch_size}" + (f" (ltadv {our_bs})" if our_bs != batch_size else "")
        + f", PGD-{steps} training, PGD-{eval_steps} eval, device {dev}, {torch.get_num_threads()} threads, "
        f"{rounds} rounds" + (", ltadv compiled" if compile else ""))
    # PGD-20 evaluation runs on points the model classifies correctly (labels = its own clean
    # predictions after the reference's training rounds), so both sides attack every point and do
    # the same work; ltadv evaluates a copy of those weights.
    xe = to_float(x_u8[:batch_size], dev)
    acc = {}

    def ref_eval():
        torch.manual_seed(1)
        acc["reference"] = reference_pgd_eval(ref_model, xe, ye, eps, alpha, eval_steps)

    def our_eval():
        torch.manual_seed(1)
        flags = robust_flags(our_eval_model, x_u8[:batch_size], ye, ["pgd20"], eps, batch_size=batch_size)
        acc["ltadv"] = float(flags["pgd20"].float().mean())

    def rounds_of(fns, n_rounds):
        """Timed rounds of each (function, side), alternating between them round by round (machine
        noise hits all alike); one list of seconds per function."""
        times = [[] for _ in fns]
        for _ in range(n_rounds):
            for (fn, side), t in zip(fns, times):
                t.append(timed_side(fn, side))
        return times

    def warm_up_our_eval():  # primitive caches of the view at this batch shape
        robust_flags(our_eval_model, x_u8[:batch_size], ye, ["fgsm"], eps, batch_size=batch_size)

    def log_rounds(what, side, times):
        log(f"  {what} {side}: " + "  ".join(f"{t:.2f}s" for t in times))

    # With glibc's default allocator for the reference the two sides run one after the other:
    # ltadv's heap reuse is process-wide and glibc cannot be put back into its adaptive default
    # once it is changed. With the same allocator for both, rounds alternate.
    interleave = same_allocator or not heap
    ref, ours = "reference", "ltadv"
    ref_step()  # warm-up (allocator, oneDNN primitive caches, DataLoader workers)
    if interleave:
        our_step()  # warm-up (with compile: the compilation)
        t_ref, t_our = rounds_of([(ref_step, ref), (our_step, ours)], rounds)
    else:
        (t_ref,) = rounds_of([(ref_step, ref)], rounds)
    ref_model.eval()
    with torch.no_grad():
        ye = ref_model(xe).argmax(1)
    our_eval_model = copy.deepcopy(ref_model)
    reference_pgd_eval(ref_model, xe, ye, eps, alpha, 1)  # warm-up
    eval_rounds = max(1, rounds - 1)
    if interleave:
        warm_up_our_eval()
        e_ref, e_our = rounds_of([(ref_eval, ref), (our_eval, ours)], eval_rounds)
    else:
        (e_ref,) = rounds_of([(ref_eval, ref)], eval_rounds)
    stock = stock_autoattack(ref_model, to_float(x_u8[:aa_n], dev), None, eps) if aa_n > 0 else None

    if not interleave:
        keep_freed_memory(True)
        our_step()  # warm-up
        (t_our,) = rounds_of([(our_step, ours)], rounds)
        warm_up_our_eval()
        (e_our,) = rounds_of([(our_eval, ours)], eval_rounds)
    for what, ref_t, our_t in (("train", t_ref, t_our), ("PGD-20 eval", e_ref, e_our)):
        log_rounds(what, "reference", ref_t)
        log_rounds(what, "ltadv", our_t)
    aa = None if stock is None else compare_autoattack(stock, our_eval_model, x_u8[:aa_n], eps, dev, log)
    if aa_n > 0 and stock is None:
        log("  autoattack: no 'aa' attack registered; skipped")

    step_flops = train_step_flops(base, batch_size, steps, dev)
    our_step_flops = step_flops * our_bs / batch_size  # every counted op scales with the batch
    hw = peak(dev, amp_dtype)
    tr, to, er, eo = (statistics.median(v) for v in (t_ref, t_our, e_ref, e_our))
    result = {
        "model": model_name, "batch_size": batch_size, "device": str(dev), "threads": torch.get_num_threads(),
        "cpu_heap_reuse": {"ltadv": heap, "reference": heap and same_allocator}, "interleaved": interleave,
        "train_seconds": {"reference": t_ref, "ltadv": t_our},
        "pgd20_eval_seconds": {"reference": e_ref, "ltadv": e_our},
        "train_pgd_steps": steps, "eval_pgd_steps": eval_steps, "rounds": rounds, "num_workers": num_workers,
        "train": {"reference_img_s": batch_size / tr, "ltadv_img_s": our_bs / to,
                  "speedup": (our_bs / to) / (batch_size / tr)},
        "pgd20_eval": {"reference_img_s": batch_size / er, "ltadv_img_s": batch_size / eo, "speedup": er / eo,
                       "reference_robust_acc": acc["reference"], "ltadv_robust_acc": acc["ltadv"]},
        "autoattack": aa,
        "flops_per_train_step": step_flops,
        "matmul_peak_flops": hw["measured"],
        "train_flops_fraction_of_peak": {"reference": step_flops / tr / hw["used"],
                                         "ltadv": our_step_flops / to / hw["used"]},
        "peak": hw,
        "ltadv_batch_size": our_bs, "compile": compile, "amp": amp_dtype,
        "gpu_peak_mem_mb": mem if dev.type == "cuda" else None,
    }
    log(format_bench(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
        log(f"written to {out}")
    return result


def stock_autoattack(model, x: torch.Tensor, y: torch.Tensor | None, eps: float) -> dict | None:
    """Stock pyautoattack (standard version, ``run_standard_evaluation``) on the plain model:
    {"seconds", "robust_acc", "y"}; None when ltadv's ``aa`` (and so pyautoattack) is unavailable.

    Without ``y`` the labels are the model's own clean predictions, so every point starts robust and
    the whole cascade runs.
    """
    from ltadv.attacks import ATTACKS, frozen_params

    if "aa" not in ATTACKS:
        return None
    from pyautoattack import AutoAttack

    model = model.eval()
    if y is None:
        with torch.no_grad():
            y = model(x).argmax(1)
    y = y.to(x.device)
    with frozen_params(model), Stopwatch(x.device) as sw:
        stock = AutoAttack(model, eps=eps, seed=0, device=x.device, version="standard")
        stock.verbose = False
        x_adv, _ = stock.run_standard_evaluation(x, y, batch_size=len(x))  # returns (x_adv, y_adv)
        with torch.no_grad():
            acc = float((model(x_adv).argmax(1) == y).float().mean())
    return {"seconds": sw.seconds, "robust_acc": acc, "y": y}


def compare_autoattack(stock: dict, model, x_u8: torch.Tensor, eps: float, dev, log=print) -> dict:
    """ltadv's ``aa`` cascade on the points and labels of a :func:`stock_autoattack` result."""
    n = len(x_u8)
    with Stopwatch(dev) as sw:
        flags = robust_flags(model.eval(), x_u8, stock["y"], ["aa"], eps, batch_size=n)
    t_ours = sw.seconds
    ours_acc = float(flags["aa"].float().mean())
    log(f"  autoattack on {n} points: stock {stock['seconds']:.1f}s (robust {stock['robust_acc']:.3f})  "
        f"ltadv {t_ours:.1f}s (robust {ours_acc:.3f})")
    return {"n": n, "stock_seconds": stock["seconds"], "ltadv_seconds": t_ours, "speedup": stock["seconds"] / t_ours,
            "stock_robust_acc": stock["robust_acc"], "ltadv_robust_acc": ours_acc}


def bench_autoattack(model, x_u8, dev, eps, n, log=print, y=None) -> dict | None:
    """Stock pyautoattack on the plain model (glibc's default allocator, as a plain script runs),
    then ltadv's ``aa`` cascade (with :func:`ltadv.fast.keep_freed_memory` on CPU), same points and
    labels; the robust accuracies must agree (same attacks, same seed)."""
    stock = stock_autoattack(model, to_float(x_u8[:n], dev), None if y is None else y[:n], eps)
    if stock is None:
        log("  autoattack: no 'aa' attack registered; skipped")
        return None
    if dev.type == "cpu":
        keep_freed_memory(True)
    return compare_autoattack(stock, model, x_u8[:n], eps, dev, log)


def bench_autoattack_run(run_dir: str | Path, n: int = 100, which: str = "best", device: str = "auto",
                         out: str | Path | None = None, log=print) -> dict | None:
    """Stock AutoAttack vs ltadv's cascade on the first ``n`` test images of a trained run."""
    from ltadv.build import load_run_model
    from ltadv.config import from_dict
    from ltadv.data import build_data

    dev = pick_device(device)
    model, record = load_run_model(run_dir, which, dev)
    cfg = from_dict(record["config"])
    data = build_data(cfg.data, cfg.seed)
    eps = cfg.attack.eps if cfg.eval.eps is None else cfg.eval.eps
    log(f"autoattack bench: {run_dir} ({which}), {n} test images, eps {eps:.4g}, device {dev}")
    res = bench_autoattack(model, data.x_test[:n].to(dev), dev, eps, n, log, y=data.y_test[:n])
    if res is not None:
        res.update(run_dir=str(run_dir), checkpoint=which, eps=eps)
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(res, indent=1))
    return res


def format_bench(r: dict) -> str:
    from ltadv.report import markdown_table

    frac = r["train_flops_fraction_of_peak"]
    rows = [
        [f"training step (PGD-{r['train_pgd_steps']} + SGD)", f"{r['train']['reference_img_s']:.1f}",
         f"{r['train']['ltadv_img_s']:.1f}", f"{r['train']['speedup']:.2f}x",
         f"{frac['reference']:.1%} / {frac['ltadv']:.1%}"],
        [f"PGD-{r['eval_pgd_steps']} evaluation", f"{r['pgd20_eval']['reference_img_s']:.1f}",
         f"{r['pgd20_eval']['ltadv_img_s']:.1f}", f"{r['pgd20_eval']['speedup']:.2f}x",
         f"robust acc {r['pgd20_eval']['reference_robust_acc']:.3f} / {r['pgd20_eval']['ltadv_robust_acc']:.3f}"],
    ]
    if r.get("autoattack"):
        a = r["autoattack"]
        rows.append([f"AutoAttack standard ({a['n']} points; stock pyautoattack)", f"{a['n'] / a['stock_seconds']:.2f}",
                     f"{a['n'] / a['ltadv_seconds']:.2f}", f"{a['speedup']:.2f}x",
                     f"robust acc {a['stock_robust_acc']:.3f} / {a['ltadv_robust_acc']:.3f}"])
    head = ["", "reference img/s", "ltadv img/s", "ratio", "note (reference / ltadv)"]
    p = r["peak"]
    theo = "n/a" if p["theoretical"] is None else f"{p['theoretical'] / 1e9:.1f}"
    mem = r.get("gpu_peak_mem_mb")
    return (f"{r['model']}, batch {r['batch_size']}"
            + (f" (ltadv {r['ltadv_batch_size']})" if r["ltadv_batch_size"] != r["batch_size"] else "")
            + f", {r['device']}, {r['threads']} threads, ltadv {r['amp']}" + (" compiled" if r["compile"] else "")
            + f"; {p['dtype']} peak {p['used'] / 1e9:.1f} GFLOP/s ({p['source']}; theoretical {theo}, measured "
            f"{p['measured'] / 1e9:.1f}); train FLOPs/step {r['flops_per_train_step'] / 1e9:.1f} G "
            f"(fraction of peak in the train row's note)"
            + (f"; GPU memory reference {mem['reference']:.0f} MiB, ltadv {mem['ltadv']:.0f} MiB" if mem else "")
            + "\n" + markdown_table(head, rows))
