"""The optimised paths compute the same thing as the plain ones (within float tolerance)."""

import copy
import os

import pytest
import torch

from ltadv.attacks import pgd
from ltadv.build import autocast_for
from ltadv.config import load_config
from ltadv.fast import EvalView, _glibc, eval_view, keep_freed_memory
from ltadv.methods import METHODS
from ltadv.models import MODELS, build_model
from ltadv.train import train_step


def _model(name, head="linear", c=3):
    torch.manual_seed(0)
    m = build_model(name, 10, c, [0.5] * c, [0.25] * c, head=head)
    m.train()
    with torch.no_grad():  # non-trivial BN running statistics
        for _ in range(3):
            m(torch.rand(8, c, 16, 16))
    return m.eval()


def _close(a, b, tol=1e-4):
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


CASES = [(n, "linear", False) for n in sorted(MODELS)] + [("resnet18", "cosine", True), ("small_cnn", "cosine", True)]


@pytest.mark.parametrize("name,head,channels_last", CASES)
def test_view_equals_model(name, head, channels_last):
    c = 1 if name == "small_cnn" else 3
    m = _model(name, head, c)
    view = EvalView(m, channels_last=channels_last)
    assert len(view.pairs) > 0  # something was folded
    x = torch.rand(4, c, 16, 16)
    with torch.no_grad():
        assert _close(view(x), m(x))
        for p in m.parameters():  # the live model changes; the view follows after refresh
            p.add_(0.01 * torch.randn_like(p))
        for b in m.buffers():
            if b.dtype.is_floating_point:
                b.mul_(1.05)
        assert not _close(view(x), m(x))
        view.refresh()
        assert _close(view(x), m(x))
    assert all(not p.requires_grad for p in view.parameters())
    assert all(p.requires_grad for p in m.parameters())


def test_view_stays_in_eval_mode_and_gives_input_gradients():
    m = _model("resnet18")
    view = EvalView(m)
    view.train()
    assert not view.net.training
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    (g_view,) = torch.autograd.grad(view(x).sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (g_model,) = torch.autograd.grad(m(x2).sum(), x2)
    assert torch.allclose(g_view, g_model, atol=1e-5, rtol=1e-3)


def test_pgd_on_view_matches_pgd_on_model():
    m = _model("resnet18")
    view = EvalView(m, channels_last=True)
    x = torch.rand(16, 3, 16, 16)
    y = torch.randint(0, 10, (16,))
    torch.manual_seed(3)
    a = pgd(m, x, y, eps=8 / 255, alpha=2 / 255, steps=5)
    torch.manual_seed(3)
    b = pgd(view, x, y, eps=8 / 255, alpha=2 / 255, steps=5)
    # sign(grad) may flip where the gradient is ~0; everything else is identical
    assert (a == b).float().mean() > 0.99
    assert (a - b).abs().max() <= 2 * 8 / 255 + 1e-6


def test_train_step_with_view_equals_plain_step():
    cfg = load_config(overrides={"data.name": "digits-lt", "attack.steps": 3})
    base = build_model("small_cnn", 10, 1, [0.3], [0.4])
    x = torch.rand(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    counts = [50, 40, 30, 20, 15, 10, 8, 6, 4, 2]
    autocast, scaler = autocast_for(cfg, torch.device("cpu"))
    results = []
    for use_view in (False, True):
        m = copy.deepcopy(base)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        method = METHODS["at_bsl"](cfg, counts)
        attack_model = eval_view(m) if use_view else m
        torch.manual_seed(0)
        out = train_step(m, m, attack_model, method, opt, x, y, autocast, scaler)
        torch.manual_seed(1)
        out2 = train_step(m, m, attack_model, method, opt, x, y, autocast, scaler)  # view refreshed in between
        results.append((float(out["loss"]), float(out2["loss"]), m.state_dict()))
    (l1, l2, s1), (v1, v2, s2) = results
    assert v1 == pytest.approx(l1, rel=1e-4) and v2 == pytest.approx(l2, rel=1e-3)
    for k in s1:
        assert torch.allclose(s1[k].float(), s2[k].float(), atol=1e-4, rtol=1e-3), k


_FAULTS_SCRIPT = """
import resource, torch
from ltadv.fast import keep_freed_memory

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1),
                          torch.nn.ReLU(), torch.nn.Conv2d(64, 10, 3, padding=1))
x = torch.rand(128, 3, 32, 32)  # 64-channel activations of 32 MiB, as ResNet-18's first stage at batch 128

def faults_per_step(reps=3):  # an attack step: forward, gradient to the input
    def step():
        xa = x.clone().requires_grad_(True)
        torch.autograd.grad(net(xa).square().sum(), xa)
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(reps):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / reps

default = faults_per_step()
applied = keep_freed_memory(True)
print(default, applied, faults_per_step(), 32 * 2**20 / resource.getpagesize())
"""


@pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt only")
def test_keep_freed_memory_reuses_large_blocks_without_page_faults():
    import subprocess
    import sys

    # a fresh process: glibc's allocator state is process-wide and cannot be put back
    r = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True,
                       env={**os.environ, "LTADV_CPU_HEAP": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    default, applied, reuse, pages = r.stdout.split()
    assert applied == "True"
    assert float(default) > 4 * float(pages)  # by default every 32 MiB activation is a fresh mmap: all pages fault
    assert float(reuse) < 0.1 * float(default)  # with heap reuse the freed blocks are reused as they are


def test_keep_freed_memory_can_be_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("LTADV_CPU_HEAP", "0")
    assert keep_freed_memory(True) is False
