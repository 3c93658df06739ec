"""``make gpu-check``: every GPU measurement ltadv needs, in one go, into one folder.

    python -m ltadv_bench.gpu_check [--device cuda|cpu] [--out DIR] [--budget-s SECONDS]

Steps, in order of importance (each a subprocess with its own log; a step that fails is recorded and
the next one runs; steps that no longer fit the time budget are recorded as skipped):

1. ``tests``: ``pytest -m gpu`` (junit XML + log): the CUDA branches (autocast, GradScaler,
   channels_last, folded view, resume, peak memory, compile, AutoAttack, nccl).
2. ``bench-resnet18``: ``ltadv bench`` at the protocol's batch 128: reference-style fp32 loop vs
   ltadv (bf16 autocast, channels_last, folded attack view): img/s, GPU memory, fraction of peak.
3. ``protocol``: 2 epochs of ``--protocol at-bsl-cifar10`` on synthetic CIFAR-10-shaped data
   (50,000 + 10,000 random images written to a temporary folder; no download): s/epoch and the
   projected time of the full 100-epoch run (100 training epochs + 26 PGD-20 test evaluations,
   epochs 75 to 100).
4. ``autoattack``: official AutoAttack (pyautoattack, ``run_standard_evaluation``) vs ltadv's
   cascade on 1,000 test images of that run (``ltadv bench --aa-run``).
5. ``bench-resnet18-fast``: ltadv compiled at batch 512 (a throughput figure; the protocol's batch is 128).
6. ``bench-wrn34_10`` and ``bench-wrn34_10-fast``: the same two benches for WRN-34-10.
7. ``protocol-fast``: the same 2 epochs with ``--train.amp bf16 --train.compile true``.

``--device cpu`` runs the same steps at tiny sizes (small_cnn, a few batches, synthetic data of 50
images per class, no AutoAttack, no compile) so the script itself is tested without a GPU.
Without CUDA, ``--device cuda`` prints one line and exits with status 2.

Everything lands in ``--out`` (default ``runs/gpu-check``): ``summary.md`` and ``summary.json``
(the tables), ``env.json`` (torch, CUDA, GPU), one ``<step>.log`` per step, the benches' JSON,
``gpu-tests.xml`` and the protocol runs' folders.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]  # benchmarks/ltadv_bench/gpu_check.py -> the source tree
FULL_EPOCHS, SELECT_FROM = 100, 75  # at-bsl-cifar10: range(1, 101), `if epoch >= 75` evaluates PGD-20 on test


def sizes(device: str) -> dict:
    """What each step runs on ``device``: the real sizes on CUDA, tiny ones on CPU."""
    if device == "cuda":
        return {"models": ["resnet18", "wrn34_10"], "batch": 128, "fast_batch": 512, "rounds": 3, "steps": 10,
                "workers": 4, "compile": True, "train_per_class": 5000, "test_per_class": 1000,
                "run_overrides": [], "aa_n": 1000, "tests": ["-m", "gpu"], "cap_s": 240}
    return {"models": ["small_cnn"], "batch": 16, "fast_batch": 32, "rounds": 1, "steps": 2, "workers": 0,
            "compile": False, "train_per_class": 50, "test_per_class": 2,
            "run_overrides": ["--model", "small_cnn", "--attack.steps", "2", "--optim.batch_size", "16",
                              "--train.max_batches", "2", "--eval.batch_size", "20"],
            # no AutoAttack: at its full budget (the only one ltadv offers) a point the tiny 2-epoch model
            # keeps robust costs ~9,000 forward/backward passes per side, minutes on a shared CPU
            "aa_n": 0, "tests": ["-m", "gpu", str(REPO / "tests" / "test_gpu.py")], "cap_s": 900}


def write_cifar10(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """Random uint8 images in CIFAR-10's python-pickle layout (``cifar-10-batches-py``); returns ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    y = np.repeat(np.arange(10), train_per_class)
    rng.shuffle(y)
    for i, idx in enumerate(np.array_split(np.arange(len(y)), 5), 1):
        x = rng.integers(0, 256, size=(len(idx), 3 * 32 * 32), dtype=np.uint8)
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": x, b"labels": y[idx].tolist(), b"batch_label": b"synthetic"}, f, protocol=4)
    yt = np.repeat(np.arange(10), test_per_class)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, size=(len(yt), 3 * 32 * 32), dtype=np.uint8),
                     b"labels": yt.tolist()}, f, protocol=4)
    return root


def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": device, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   gpu_count=torch.cuda.device_count())
        if shutil.which("nvidia-smi"):
            env["nvidia_smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
    return env


class Steps:
    """Runs each step as a subprocess within the time budget; records status, seconds and log."""

    def __init__(self, out: Path, budget_s: float, child_env: dict):
        self.out, self.deadline, self.env = out, time.monotonic() + budget_s, child_env
        self.status: dict[str, dict] = {}

    def run(self, name: str, cmd: list[str], cap_s: float, cwd: Path | None = None) -> bool:
        left = self.deadline - time.monotonic()
        if left < 20:
            self.status[name] = {"status": "skipped", "reason": "time budget spent"}
            print(f"gpu-check: {name}: skipped (time budget spent)", flush=True)
            return False
        print(f"gpu-check: {name} ...", flush=True)
        t0 = time.monotonic()
        with open(self.out / f"{name}.log", "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=cwd,
                                    timeout=min(cap_s, left)).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        seconds = time.monotonic() - t0
        self.status[name] = {"status": "ok" if rc == 0 else "failed", "rc": rc, "seconds": round(seconds, 1)}
        print(f"gpu-check: {name}: {self.status[name]['status']} in {seconds:.0f}s", flush=True)
        return rc == 0


def ltadv(*args: str) -> list[str]:
    return [sys.executable, "-m", "ltadv", *args]


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def junit_counts(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    return {k: int(suite.get(k, 0)) for k in keys} if suite is not None else None


def projection(record: dict | None) -> dict | None:
    """Seconds per training epoch (the last one: the first holds warm-up / compilation), PGD-20 test
    evaluation seconds, and the projected full run: 100 training epochs + 26 evaluations (75..100)."""
    if not record or not record.get("epochs"):
        return None
    last = record["epochs"][-1]
    evaluated = [e["eval_seconds"] for e in record["epochs"] if e.get("val_robust") is not None]
    eval_s = evaluated[-1] if evaluated else 0.0
    n_eval = FULL_EPOCHS - SELECT_FROM + 1
    return {"epochs": len(record["epochs"]), "train_s_per_epoch": last["train_seconds"],
            "first_epoch_train_s": record["epochs"][0]["train_seconds"], "img_s": last["images_per_second"],
            "eval_s": eval_s, "peak_mem_mb": last["peak_mem_mb"],
            "projected_100_epochs_s": FULL_EPOCHS * last["train_seconds"] + n_eval * eval_s,
            "projected_100_epochs_train_only_s": FULL_EPOCHS * last["train_seconds"]}


def summarize(out: Path, env: dict, steps: Steps, benches: list[str], runs: list[str]) -> dict:
    s = {"environment": {k: v for k, v in env.items() if k != "nvidia_smi"}, "steps": steps.status,
         "tests": junit_counts(out / "gpu-tests.xml"), "bench": {}, "protocol": {}, "autoattack": None}
    for name in benches:
        r = read_json(out / f"{name}.json")
        if r:
            s["bench"][name] = {
                "model": r["model"], "batch": r["batch_size"], "ltadv_batch": r.get("ltadv_batch_size"),
                "compile": r.get("compile"), "amp": r.get("amp"),
                "reference_img_s": r["train"]["reference_img_s"], "ltadv_img_s": r["train"]["ltadv_img_s"],
                "speedup": r["train"]["speedup"], "fraction_of_peak": r["train_flops_fraction_of_peak"],
                "peak_flops": r["peak"]["used"], "peak_source": r["peak"]["source"],
                "gpu_peak_mem_mb": r.get("gpu_peak_mem_mb"), "pgd20_eval": r["pgd20_eval"]}
    for name in runs:
        p = projection(read_json(out / name / "result.json"))
        if p:
            s["protocol"][name] = p
    s["autoattack"] = read_json(out / "autoattack.json")
    (out / "summary.json").write_text(json.dumps(s, indent=1))
    (out / "summary.md").write_text(summary_markdown(s))
    return s


def summary_markdown(s: dict) -> str:
    env = s["environment"]
    lines = [f"# ltadv gpu-check: {env.get('gpu') or env.get('cpu')} ({env['device']}), torch {env['torch']}", ""]
    lines += ["| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v['status']} | {v.get('seconds', '')} |" for k, v in s["steps"].items()]
    if s["tests"]:
        t = s["tests"]
        lines += ["", f"GPU tests: {t['tests']} collected, {t['failures']} failed, {t['errors']} errors, "
                      f"{t['skipped']} skipped"]
    if s["bench"]:
        lines += ["", "| bench | batch (ltadv) | ltadv | reference img/s | ltadv img/s | speedup | fraction of peak "
                      "(ref / ltadv) | GPU MiB (ref / ltadv) |", "|---|---|---|---|---|---|---|---|"]
        for name, b in s["bench"].items():
            mem = b["gpu_peak_mem_mb"]
            lines.append(f"| {name} | {b['batch']} ({b['ltadv_batch']}) | {b['amp']}"
                         f"{' compiled' if b['compile'] else ''} | {b['reference_img_s']:.1f} | {b['ltadv_img_s']:.1f}"
                         f" | {b['speedup']:.2f}x | {b['fraction_of_peak']['reference']:.1%} / "
                         f"{b['fraction_of_peak']['ltadv']:.1%} of {b['peak_flops'] / 1e12:.3g} TFLOP/s "
                         f"({b['peak_source']}) | "
                         + (f"{mem['reference']:.0f} / {mem['ltadv']:.0f}" if mem else "-") + " |")
    if s["protocol"]:
        lines += ["", "| at-bsl-cifar10, 2 epochs | s/epoch (train) | img/s | PGD-20 test eval s | projected 100 "
                      "epochs | peak MiB |", "|---|---|---|---|---|---|"]
        for name, p in s["protocol"].items():
            lines.append(f"| {name} | {p['train_s_per_epoch']:.1f} (first {p['first_epoch_train_s']:.1f}) | "
                         f"{p['img_s']:.0f} | {p['eval_s']:.1f} | {p['projected_100_epochs_s'] / 60:.1f} min | "
                         f"{p['peak_mem_mb']:.0f} |")
    a = s["autoattack"]
    if a:
        lines += ["", f"AutoAttack standard on {a['n']} test images: stock {a['stock_seconds']:.1f}s (robust "
                      f"{a['stock_robust_acc']:.3f}), ltadv cascade {a['ltadv_seconds']:.1f}s (robust "
                      f"{a['ltadv_robust_acc']:.3f}), {a['speedup']:.2f}x"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", default="runs/gpu-check", metavar="DIR")
    p.add_argument("--budget-s", type=float, default=None,
                   help="no step starts after this many seconds (default 450 on CUDA; 1800 on CPU, whose tiny "
                        "steps are slow only on a shared machine)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); "
              "`make gpu-check DEVICE=cpu` runs the tiny CPU version", file=sys.stderr)
        return 2
    dev, z = args.device, sizes(args.device)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = environment(dev)
    (out / "env.json").write_text(json.dumps(env, indent=1))
    child_env = dict(os.environ, PYTHONUNBUFFERED="1")
    steps = Steps(out, args.budget_s or (450 if dev == "cuda" else 1800), child_env)
    benches, runs = [], []

    if (REPO / "tests").is_dir():
        steps.run("tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *z["tests"],
                            f"--junitxml={out / 'gpu-tests.xml'}"], z["cap_s"], cwd=REPO)
    else:
        steps.status["tests"] = {"status": "skipped", "reason": f"no tests folder at {REPO / 'tests'}"}

    def bench(model: str, fast: bool) -> None:
        name = f"bench-{model}" + ("-fast" if fast else "")
        extra = ["--ltadv-batch-size", str(z["fast_batch"])] + (["--compile"] if fast and z["compile"] else [])
        steps.run(name, ltadv("bench", "--device", dev, "--model", model, "--batch-size", str(z["batch"]),
                              "--rounds", str(z["rounds"]), "--steps", str(z["steps"]), "--workers", str(z["workers"]),
                              "--out", str(out / f"{name}.json"), *(extra if fast else [])), z["cap_s"])
        benches.append(name)

    def protocol(name: str, extra: list[str]) -> bool:
        runs.append(name)
        return steps.run(name, ltadv("train", "--protocol", "at-bsl-cifar10", "--data-root", str(data_root),
                                     "--epochs", "2", "--eval.attacks", "clean,pgd20", "--quiet", "--force",
                                     "--out", str(out / name), *z["run_overrides"], *extra), z["cap_s"])

    tmp = Path(tempfile.mkdtemp(prefix="ltadv-gpu-check-"))
    try:
        bench(z["models"][0], fast=False)
        data_root = write_cifar10(tmp / "data", z["train_per_class"], z["test_per_class"])
        if protocol("protocol", []) and z["aa_n"]:
            steps.run("autoattack", ltadv("bench", "--aa-run", str(out / "protocol"), "--aa-n", str(z["aa_n"]),
                                          "--device", dev, "--out", str(out / "autoattack.json")), z["cap_s"])
        elif not z["aa_n"]:
            steps.status["autoattack"] = {"status": "n/a", "reason": "not run on CPU (see sizes())"}
        bench(z["models"][0], fast=True)
        for model in z["models"][1:]:
            bench(model, fast=False)
            bench(model, fast=True)
        if z["compile"]:
            protocol("protocol-fast", ["--train.amp", "bf16", "--train.compile", "true"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s = summarize(out, env, steps, benches, runs)
    print(summary_markdown(s))
    print(f"gpu-check: everything is in {out}")
    return 0 if all(v["status"] in ("ok", "n/a") for v in steps.status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
