"""The CUDA branches of ltadv (issue 21): run by ``pytest -m gpu`` (``make gpu-check`` runs them);
deselected by default. Where a branch also exists on CPU the same test runs there unmarked, so the
test's own logic and tolerances are exercised on every machine.

Branches covered: bf16 / fp16 autocast with the GradScaler and channels_last in the training step;
the BN-folded eval view (ltadv.fast); resume with CUDA RNG state and ``train.deterministic``; CUDA
peak memory in the run record; torch.compile of the loss model and the attack view; the AutoAttack
cascade on CUDA; DDP over nccl (two GPUs).
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ltadv
from ltadv.build import autocast_for, memory_layouts
from ltadv.config import load_config
from ltadv.evaluate import robust_flags
from ltadv.fast import EvalView, eval_view
from ltadv.methods import METHODS
from ltadv.models import build_model
from ltadv.train import train, train_step

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu,
                                   pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])
needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
COUNTS = [50, 30, 20, 12, 8, 6, 4, 3, 2, 1]  # unequal classes: BSL's log-prior matters


def quiet(*a, **k):
    pass


@pytest.fixture
def no_tf32():
    """Exact fp32 convolutions and matmuls on Ampere+ (cuDNN uses TF32 for fp32 convs by default)."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def batch(device, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.tensor([i % 10 for i in range(n - 3)] + [0, 0, 1])  # every class, then more of the head
    return x.to(device), y.to(device)


def one_step(model, device, amp, channels_last, compile=False):
    """One ltadv training step (AT-BSL, PGD-3) as the training loop wires it: layouts, autocast and
    scaler, compiled loss model and attack view. Returns (step output, parameter change)."""
    cfg = load_config(overrides={"data.name": "cifar10-lt", "method.name": "at_bsl", "attack.steps": 3,
                                 "train.amp": amp, "model.channels_last": channels_last, "train.compile": compile})
    dev = torch.device(device)
    cl, view_cl = memory_layouts(cfg, dev)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.0)  # the change is the gradient
    autocast, scaler = autocast_for(cfg, dev)
    fwd = torch.compile(model) if compile else model
    view = eval_view(model, fold_bn=cfg.train.fold_bn, channels_last=view_cl)
    view = fwd if view is model else (torch.compile(view) if compile else view)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = batch(device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)  # the same PGD start on every side
    out = train_step(model, fwd, view, METHODS["at_bsl"](cfg, COUNTS), opt, x, y, autocast, scaler)
    change = torch.cat([(p.detach() - b).flatten().float() for p, b in zip(model.parameters(), before)])
    return out, change, scaler


def cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


# ---------------------------------------------------------------- autocast, GradScaler, channels_last


@pytest.mark.parametrize("device,amp", [("cpu", "bf16"), pytest.param("cuda", "bf16", marks=needs_cuda),
                                        pytest.param("cuda", "fp16", marks=needs_cuda)])
def test_autocast_train_step_matches_fp32(device, amp, no_tf32):
    """Tolerance: loss within 5% and parameter change at cosine >= 0.95 of the fp32 NCHW step on the same
    batch and PGD start (bf16 keeps 8 mantissa bits; a PGD sign step may flip where a gradient is ~0)."""
    name = "resnet18" if device == "cuda" else "small_cnn"
    torch.manual_seed(0)
    base = build_model(name, 10, 3, *CIFAR_STATS).to(device)
    ref, ref_change, _ = one_step(copy.deepcopy(base), device, "off", "off")
    out, change, scaler = one_step(copy.deepcopy(base), device, amp, "auto")
    assert ref["logits"].dtype == torch.float32
    assert out["logits"].dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)  # autocast was on
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    assert abs(out["loss"].item() - ref["loss"].item()) <= 0.05 * abs(ref["loss"].item())
    assert (scaler is not None) == (amp == "fp16")
    if scaler is not None and scaler.get_scale() < 2.0**16:
        # fp16: the scaled gradients overflowed at the initial scale 2^16, so GradScaler skipped this
        # step and halved its scale, as it must; the weights are untouched
        assert scaler.get_scale() == 2.0**15 and float(change.abs().max()) == 0.0
        return
    assert cosine(change, ref_change) >= 0.95
    assert float(change.norm()) == pytest.approx(float(ref_change.norm()), rel=0.1)


# ---------------------------------------------------------------- the BN-folded eval view


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_folded_view_equals_model(device, no_tf32):
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, *CIFAR_STATS).to(device)
    model.train()
    with torch.no_grad():  # running statistics away from (0, 1), so folding is not a no-op
        for k in range(3):
            model(torch.rand(8, 3, 32, 32, device=device) * 0.5 + 0.1 * k)
    model.eval()
    view = EvalView(model, fold_bn=True, channels_last=True)
    assert view.pairs and all(p.device.type == device for p in view.parameters())
    x, y = batch(device, 8)

    def outputs_and_input_grads(m):
        xi = x.clone().requires_grad_(True)
        z = m(xi)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(z, y), xi)
        return z.detach(), g

    def assert_close(a, b, rel):
        assert float((a - b).abs().max()) <= rel * float(b.abs().max())

    z_ref, g_ref = outputs_and_input_grads(model)
    z, g = outputs_and_input_grads(view)
    assert_close(z, z_ref, 1e-4)
    assert_close(g, g_ref, 1e-3)
    with torch.no_grad():  # a training step changes the weights; refresh() follows them
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    z_new, _ = outputs_and_input_grads(model)
    assert float((view(x) - z_new).abs().max()) > 1e-2 * float(z_new.abs().max())  # stale before refresh
    view.refresh()
    z, g = outputs_and_input_grads(view)
    assert_close(z, z_new, 1e-4)


# ---------------------------------------------------------------- whole runs on CUDA

FAST = {"data.name": "digits-lt", "train.epochs": 2, "train.progress": False, "attack.steps": 2,
        "train.device": "cuda", "eval.attacks": ["clean", "pgd20"]}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_on_cuda_is_bit_identical(tmp_path):
    """bf16 autocast (train.amp auto), channels_last, CUDA RNG state in the checkpoint, deterministic kernels."""
    cfg = load_config(overrides={**FAST, "method.name": "at_bsl", "train.epochs": 3, "train.deterministic": True})
    train(cfg, tmp_path / "full", log=quiet)

    class Stop(Exception):
        pass

    def stop_after_two(msg):
        if msg.startswith("epoch   2/"):
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "cut", log=stop_after_two)
    torch.cuda.manual_seed_all(12345)  # the resumed run must restore the CUDA generators, not reuse these
    train(cfg, tmp_path / "cut", resume=True, log=quiet)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((tmp_path / "full" / "result.json").read_text())
    rb = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert [e["train_loss"] for e in ra["epochs"]] == [e["train_loss"] for e in rb["epochs"]]
    assert ra["metrics"] == rb["metrics"] and ra["device"].startswith("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory_is_recorded(tmp_path):
    """peak_mem_mb on CUDA is the allocator's peak of the epoch: at least weights + gradients + momentum,
    far below a process's resident set (a CUDA process's RSS is several hundred MiB)."""
    rec = train(load_config(overrides={**FAST, "method.name": "at", "train.epochs": 1}), tmp_path / "r", log=quiet)
    model = ltadv.load_model(tmp_path / "r", "last")
    state_mib = 3 * sum(p.numel() * 4 for p in model.parameters()) / 2**20
    e = rec["epochs"][0]
    assert state_mib <= e["peak_mem_mb"] < 256
    assert 0 < e["eval_peak_mem_mb"] < 256


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_step_matches_eager(no_tf32):
    """torch.compile of the loss model and the attack view: loss within 1% and parameter change at cosine
    >= 0.99 of the eager step (inductor reorders fp32 reductions; a PGD sign may flip at a ~0 gradient)."""
    torch.manual_seed(0)
    base = build_model("small_cnn", 10, 3, *CIFAR_STATS).cuda()
    ref, ref_change, _ = one_step(copy.deepcopy(base), "cuda", "off", "auto")
    torch._dynamo.reset()
    out, change, _ = one_step(copy.deepcopy(base), "cuda", "off", "auto", compile=True)
    assert abs(out["loss"].item() - ref["loss"].item()) <= 0.01 * abs(ref["loss"].item())
    assert cosine(change, ref_change) >= 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_run_trains_like_eager(tmp_path):
    cfg = {**FAST, "method.name": "at", "train.epochs": 1, "train.amp": "off", "eval.attacks": ["clean"]}
    eager = train(load_config(overrides=cfg), tmp_path / "eager", log=quiet)
    torch._dynamo.reset()
    compiled = train(load_config(overrides={**cfg, "train.compile": True}), tmp_path / "compiled", log=quiet)
    a, b = eager["epochs"][0], compiled["epochs"][0]
    assert b["forward_passes"] is None  # hooks are off under compile
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)


# ---------------------------------------------------------------- AutoAttack cascade


def linear_case(n=64, d=(1, 4, 4), classes=4, eps=0.1, margin=0.05):
    """A linear classifier and points whose exact L-inf robustness (box [0, 1]) is known: for z = Wx + b
    the worst x' in the eps-ball and the box against class j sets each pixel to its bound against
    w_y - w_j, so each flag is computed here in closed form; points within ``margin`` of the
    boundary are dropped (any attack's rounding could decide them)."""
    g = torch.Generator().manual_seed(3)
    dim = d[0] * d[1] * d[2]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(dim, classes))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, dim, generator=g) * 0.5)
        model[1].bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0][:classes]))
    x = torch.rand(n, *d, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::7] = (y[::7] + 1) % classes  # some points misclassified from the start
    w, b = model[1].weight.double(), model[1].bias.double()
    xf = x.flatten(1).double()
    lo, hi = (xf - eps).clamp(0, 1), (xf + eps).clamp(0, 1)
    worst = torch.full((n,), float("inf"), dtype=torch.float64)
    for j in range(classes):
        dw = w[y] - w[j]  # (n, dim)
        x_worst = torch.where(dw > 0, lo, hi)
        m = (dw * x_worst).sum(1) + b[y] - b[j]
        worst = torch.where(y == j, worst, torch.minimum(worst, m))
    keep = worst.abs() > margin
    return model, x[keep], y[keep], (worst > 0)[keep], eps


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_autoattack_cascade_gives_the_exact_flags_of_a_linear_model(device, monkeypatch):
    """On CUDA the cascade's flags equal its CPU flags and both equal the closed-form ones (FAB is exact on
    a linear model; a point with no adversarial example in the ball cannot be broken by any RNG draw)."""
    pytest.importorskip("pyautoattack")
    from ltadv.attacks import autoattack

    monkeypatch.setattr(autoattack, "AA_BUDGET", {"n_iter": 20, "n_queries": 100})
    model, x, y, exact, eps = linear_case()
    assert 0 < int(exact.sum()) < len(exact) - 4  # robust and non-robust points, and clean errors
    flags = {}
    for dev in {"cpu", device}:
        flags[dev] = robust_flags(copy.deepcopy(model).to(dev), x, y, ["aa"], eps, batch_size=32)["aa"].cpu()
    assert torch.equal(flags["cpu"], exact)
    assert torch.equal(flags[device], flags["cpu"])


# ---------------------------------------------------------------- DDP over nccl


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_ddp_nccl_two_gpus(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(ltadv.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "ltadv", "train", "--data", "digits-lt", "--method", "at", "--epochs", "2", "--quiet",
                        "--attack.steps", "2", "--device", "cuda", "--eval.n", "50", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((out / "result.json").read_text())
    assert rec["world_size"] == 2 and rec["status"] == "complete" and rec["device"].startswith("cuda")
    assert all(e["peak_mem_mb"] > 0 for e in rec["epochs"])
