"""AWP (ltadv/awp.py) and the weight average (ltadv/ema.py): hand numbers, properties, CLI end to end."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import ltadv
from ltadv.awp import AWP, perturbed_names
from ltadv.cli import main
from ltadv.config import ConfigError, load_config
from ltadv.ema import WeightEMA, ema_decay_at
from ltadv.methods import METHODS
from ltadv.train import train, train_step

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = [5, 3]


def method_for(name: str, **over):
    cfg = load_config(overrides={"data.name": "digits-lt", "method.name": name, "method.awp": True, **over})
    return METHODS[name](cfg, COUNTS)


def linear(weight, bias) -> torch.nn.Linear:
    m = torch.nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(weight))
        m.bias.copy_(torch.tensor(bias))
    return m


# The AT-AWP case by hand. W = [[1, 2], [0, -1]], equal biases (they cancel in the softmax), x' = e1 (label 1)
# and e2 (label 0). z1 = (1, 0): p1 = (e/(e+1), 1/(e+1)), p1 - y1 = (a, -a), a = 0.7310586;
# z2 = (2, -1): p2 - y2 = (-b, b), b = 1/(e^3+1) = 0.0474259. Mean CE gradient g = [[a, -b], [-a, b]] / 2,
# ||W|| = sqrt(6), so v = gamma sqrt(6) g / ||g|| = 0.01 sqrt(3) / sqrt(a^2 + b^2) [[a, -b], [-a, b]].
W0 = [[1.0, 2.0], [0.0, -1.0]]
X_ADV = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
Y = torch.tensor([1, 0])
V_HAND = [[0.0172841761, -0.0011212742], [-0.0172841761, 0.0011212742]]


def test_at_awp_perturbation_matches_hand_numbers():
    """gamma 0.01: AT_AWP/train_cifar10.py --awp-gamma (its logs: awp_size=0.01)."""
    model = linear(W0, [0.5, 0.5])
    method = method_for("at", **{"method.awp_gamma": 0.01})
    awp = AWP(model, gamma=0.01)
    diff = awp.perturb(model, method, torch.zeros(2, 2), X_ADV, Y)  # x is unused by AT: the loss is at x'
    assert set(diff) == {"weight"}  # the bias (1-D) is never perturbed (diff_in_weights: len(size) <= 1)
    assert torch.allclose(diff["weight"], torch.tensor(V_HAND), atol=1e-8)
    assert torch.allclose(model.weight, torch.tensor(W0) + torch.tensor(V_HAND), atol=1e-7)
    assert torch.equal(model.bias, torch.tensor([0.5, 0.5]))
    AWP.restore(model, diff)
    assert torch.allclose(model.weight, torch.tensor(W0), atol=1e-7)


def test_train_step_keeps_the_update_and_removes_the_perturbation():
    """W_final = (W + v) - lr * grad CE at (W + v) - v (AT_AWP/train_cifar10.py: perturb, step, restore)."""
    model = linear(W0, [0.5, 0.5])
    method = method_for("at", **{"method.awp_gamma": 0.01})
    method.perturb = lambda _model, x, _target: x.clone()  # x' = x, so the step is hand-checkable
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, model, model, method, opt, X_ADV, Y, contextlib.nullcontext, None, AWP(model, gamma=0.01))
    wp = torch.tensor(W0) + torch.tensor(V_HAND)
    p = torch.softmax(X_ADV @ wp.T + 0.5, dim=1)
    g = (p - F.one_hot(Y, 2).float()).T @ X_ADV / 2  # mean CE gradient of a linear layer: (p - y) x^T / N
    assert torch.allclose(model.weight, torch.tensor(W0) - 0.1 * g, atol=1e-6)
    assert torch.allclose(model.bias, torch.tensor([0.5, 0.5]) - 0.1 * (p - F.one_hot(Y, 2)).mean(0), atol=1e-6)


def test_trades_awp_ascends_the_trades_loss_through_both_branches():
    """TRADES-AWP's proxy loss: CE(z(x), y) + beta KL(p(x) || p(x')), batchmean, gradient through p(x) too
    (trades_AWP/utils_awp.py TradesAWP.calc_awp), here in F.kl_div's form."""
    w = [[0.3, -1.2], [0.8, 0.5]]
    x, x_adv = torch.tensor([[0.2, 0.9], [1.0, 0.1]]), torch.tensor([[0.4, 0.7], [0.9, 0.3]])
    y = torch.tensor([0, 0])
    ref = linear(w, [0.1, -0.2])
    loss = F.cross_entropy(ref(x), y) + 6.0 * F.kl_div(F.log_softmax(ref(x_adv), 1), F.softmax(ref(x), 1),
                                                      reduction="batchmean")
    (g,) = torch.autograd.grad(loss, [ref.weight])
    expected = 0.005 * torch.tensor(w).norm() / g.norm() * g
    model = linear(w, [0.1, -0.2])
    diff = AWP(model, gamma=0.005).perturb(model, method_for("trades"), x, x_adv, y)
    assert torch.allclose(diff["weight"], expected, atol=1e-8)
    # the clean branch matters: with p(x) detached the direction would differ
    loss_detached = F.cross_entropy(ref(x), y) + 6.0 * F.kl_div(F.log_softmax(ref(x_adv), 1),
                                                               F.softmax(ref(x), 1).detach(), reduction="batchmean")
    (gd,) = torch.autograd.grad(loss_detached, [ref.weight])
    assert not torch.allclose(diff["weight"], 0.005 * torch.tensor(w).norm() / gd.norm() * gd, atol=1e-6)


def test_per_layer_relative_size_and_bn_untouched():
    """||v_l|| = gamma ||W_l|| for every weight matrix; BN's affine vectors, biases and running statistics
    stay (the proxy runs in train mode, the model's statistics are not updated)."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    with torch.no_grad():
        model[1].running_mean.fill_(0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert perturbed_names(model) == ["0.weight", "3.weight"]
    method = METHODS["at"](load_config(overrides={"data.name": "digits-lt", "method.name": "at"}), [4, 3, 2])
    x = torch.rand(6, 4)
    diff = AWP(model, gamma=0.02).perturb(model, method, x, x + 0.1, torch.tensor([0, 1, 2, 0, 1, 2]))
    for name in ("0.weight", "3.weight"):
        assert diff[name].norm().item() == pytest.approx(0.02 * before[name].norm().item(), rel=1e-5)
        assert not torch.equal(model.state_dict()[name], before[name])
    for name in ("0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
                 "3.bias"):
        assert torch.equal(model.state_dict()[name], before[name]), name


def test_awp_waits_for_its_warmup_epoch():
    """method.awp_warmup is the first 1-based epoch with AWP (TRADES-AWP: ``epoch >= 10``, 1-based)."""
    model = linear(W0, [0.5, 0.5])
    method = method_for("at")
    awp = AWP(model, gamma=0.01, warmup=10)
    method.set_epoch(8)  # 1-based epoch 9
    assert awp.perturb(model, method, X_ADV, X_ADV, Y) is None
    assert torch.equal(model.weight, torch.tensor(W0))
    method.set_epoch(9)  # 1-based epoch 10
    assert awp.perturb(model, method, X_ADV, X_ADV, Y) is not None


# EMA by hand, decay 0.5 (never reached in 3 steps), warmup 0: d_n = (1 + n) / (10 + n) = 2/11, 3/12, 4/13.
# Weights 1, 2, 4 after the steps, average from 0: 9/11 = 0.8181818; 0.25 * 0.8181818 + 0.75 * 2 = 1.7045455;
# 4/13 * 1.7045455 + 9/13 * 4 = 3.2937063. Decay 0.2 caps d from step 2: 0.1818182 * 0 + ... = 0.8181818,
# 0.2 * 0.8181818 + 0.8 * 2 = 1.7636364, 0.2 * 1.7636364 + 0.8 * 4 = 3.5527273. Warmup 2: step 1 copies (1),
# step 2 d = 1/10: 0.1 + 1.8 = 1.9, step 3 d = 2/11: 2/11 * 1.9 + 9/11 * 4 = 3.6181818.
@pytest.mark.parametrize("decay,warmup,expected", [
    (0.5, 0, [0.8181818, 1.7045455, 3.2937063]),
    (0.2, 0, [0.8181818, 1.7636364, 3.5527273]),
    (0.5, 2, [1.0, 1.9, 3.6181818]),
])
def test_ema_values_after_k_steps(decay, warmup, expected):
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.zero_()
        model[1].running_mean.zero_()
    ema = WeightEMA(model, decay, warmup, bn="ema")
    for k, (w, want) in enumerate(zip([1.0, 2.0, 4.0], expected), 1):
        with torch.no_grad():
            model[0].weight.fill_(w)
            model[1].running_mean.fill_(w)  # a float buffer: averaged like the weights
            model[1].num_batches_tracked.fill_(10 * k)
        ema.update(model)
        assert ema.model[0].weight.item() == pytest.approx(want, abs=1e-6)
        assert ema.model[1].running_mean.item() == pytest.approx(want, abs=1e-6)
        assert ema.model[1].num_batches_tracked.item() == 10 * k  # integer buffer: copied
    rule = [ema_decay_at(n, 0.995, 0) for n in (1, 2, 1000, 2000)]
    assert rule == pytest.approx([2 / 11, 3 / 12, 1001 / 1010, 0.995])


def test_ema_bn_copy_uses_the_raw_statistics():
    """``train.ema_bn copy``: RobustLT's / HAT's update_bn, the raw model's running statistics in the average."""
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.zero_()
    ema = WeightEMA(model, 0.5, 0, bn="copy")
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_var.fill_(3.0)
    ema.update(model)
    with torch.no_grad():
        model[1].running_var.fill_(7.0)  # changes after the last update are picked up before use
    avg = ema.averaged(model)
    assert avg[1].running_var.item() == 7.0
    assert avg[0].weight.item() == pytest.approx(9 / 11)  # the weights are still averaged
    assert not avg.training


# ---- end to end ------------------------------------------------------------------------------------------

CLI = ["--data", "digits-lt", "--epochs", "1", "--quiet", "--attack.steps", "2", "--train.max_batches", "3",
       "--eval.attacks", "clean", "--eval.val_n", "40", "--eval.n", "40"]


@pytest.mark.parametrize("method", ["at", "at_bsl", "trades"])
def test_one_epoch_with_awp_from_the_cli(method, tmp_path):
    for name, extra in (("awp", ["--method.awp", "true", "--method.awp_gamma", "0.01"]), ("plain", [])):
        assert main(["train", *CLI, "--method", method, "--out", str(tmp_path / name), *extra]) == 0
    rec = json.loads((tmp_path / "awp" / "result.json").read_text())
    assert rec["config"]["method"]["awp"] is True and rec["status"] == "complete"
    plain = json.loads((tmp_path / "plain" / "result.json").read_text())["epochs"][0]["forward_passes"]
    # the proxy's passes on top: AT-AWP one (x'), TRADES-AWP two (x and x'), per batch
    assert rec["epochs"][0]["forward_passes"] == plain + 3 * (2 if method == "trades" else 1)
    assert math.isfinite(rec["epochs"][0]["train_loss"])
    a = load_file(str(tmp_path / "awp" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "plain" / "checkpoints" / "last.safetensors"))
    # same seed and data order: only AWP differs, and it changed the trained weights
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))


@pytest.mark.parametrize("argv,message", [
    (["--method.awp_gamma", "nan"], "method.awp_gamma must be a finite number"),
    (["--method.awp_gamma", "inf"], "method.awp_gamma must be a finite number"),
    (["--method.awp_gamma", "0"], "method.awp_gamma must be > 0"),
    (["--method.awp_warmup", "-1"], "method.awp_warmup must be >= 0"),
    (["--method", "reat", "--method.awp", "true"], "does not compose with 'reat'"),
    (["--train.ema_decay", "1"], "train.ema_decay must be in [0, 1)"),
    (["--train.ema_decay", "nan"], "train.ema_decay must be a finite number"),
    (["--train.ema_warmup", "-3"], "train.ema_warmup must be >= 0"),
    (["--train.ema_bn", "recompute"], "train.ema_bn must be ema or copy"),
])
def test_bad_settings_are_one_line_exit_2(argv, message, tmp_path, capsys):
    assert main(["train", *CLI, *argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError):
        load_config(overrides={{"method": "method.name"}.get(k, k): v
                               for k, v in zip((a.lstrip("-") for a in argv[::2]), argv[1::2])})


EMA_RUN = {"data.name": "digits-lt", "method.name": "at_bsl", "train.epochs": 2, "train.progress": False,
           "attack.steps": 2, "train.max_batches": 4, "eval.attacks": ["clean", "fgsm"], "eval.val_n": 60,
           "eval.n": 60, "train.ema_decay": 0.9, "train.ema_warmup": 2}


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ema") / "run"
    train(load_config(overrides=EMA_RUN), out, log=quiet)
    return out


def test_ema_record_selection_and_final_metrics(ema_run):
    rec = json.loads((ema_run / "result.json").read_text())
    e = rec["ema"]
    assert (e["decay"], e["warmup"], e["bn"], e["steps"]) == (0.9, 2, "ema", 8)  # 2 epochs x 4 batches
    assert [r["epoch"] for r in e["epochs"]] == [1, 2]
    scores = [r["val_robust"] for r in e["epochs"]]
    assert e["best_epoch"] == 1 + max(range(2), key=lambda i: (scores[i], -i))
    assert set(rec["metrics_by_checkpoint"]) == {"best", "last", "ema_best", "ema_last"}
    assert rec["metrics"] == rec["metrics_by_checkpoint"]["best"]  # the headline stays the raw weights'
    for k in ("clean", "fgsm"):
        assert 0 <= rec["metrics_by_checkpoint"]["ema_last"][k]["overall"] <= 1
    raw = load_file(str(ema_run / "checkpoints" / "last.safetensors"))
    avg = load_file(str(ema_run / "checkpoints" / "ema_last.safetensors"))
    assert raw.keys() == avg.keys() and any(not torch.equal(raw[k], avg[k]) for k in raw)


def test_the_average_leaves_the_raw_run_unchanged(ema_run, tmp_path):
    """Same seed without the average: the raw weights and every raw per-epoch number are identical (the
    average's evaluation draws its attack starts without moving the run's random streams)."""
    plain = tmp_path / "plain"
    train(load_config(overrides={**EMA_RUN, "train.ema_decay": 0.0}), plain, log=quiet)
    for name in ("best", "last"):
        a = load_file(str(plain / "checkpoints" / f"{name}.safetensors"))
        b = load_file(str(ema_run / "checkpoints" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (plain, ema_run))
    keys = ("train_loss", "val_clean", "val_robust")
    assert [[e[k] for k in keys] for e in ra["epochs"]] == [[e[k] for k in keys] for e in rb["epochs"]]
    assert ra["metrics"] == rb["metrics"] and "ema" not in ra


def test_ema_export_eval_and_load(ema_run, tmp_path, capsys):
    out = tmp_path / "avg.safetensors"
    assert main(["export", str(ema_run), "--which", "ema_best", "--out", str(out)]) == 0
    model, meta = ltadv.export.load_exported(out)
    rec = json.loads((ema_run / "result.json").read_text())
    assert meta["which"] == "ema_best" and meta["epoch"] == rec["ema"]["best_epoch"]
    saved = load_file(str(ema_run / "checkpoints" / "ema_best.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert ltadv.load_model(ema_run, "ema_last")(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert main(["eval", str(ema_run), "--which", "ema_last", "--attacks", "clean", "--n", "20"]) == 0
    assert main(["eval", str(ema_run), "--which", "average"]) == 2


def test_ema_checkpoints_of_a_run_without_average(tmp_path, capsys):
    assert main(["train", *CLI, "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "r"), "--which", "ema_best"]) == 2
    err = capsys.readouterr().err
    assert "ema_decay 0" in err and len(err.strip().splitlines()) == 1


def test_ema_resume_equals_uninterrupted(ema_run, tmp_path):
    """Stopped after epoch 1 and resumed: the average, its step count and its record are the same."""
    out = tmp_path / "resumed"

    def stop_after_first(msg, *a, **k):
        if str(msg).startswith("epoch   1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_config(overrides=EMA_RUN), out, log=stop_after_first)
    train(load_config(overrides=EMA_RUN), out, resume=True, log=quiet)
    for name in ("ema_last", "ema_best", "last"):
        a = load_file(str(out / "checkpoints" / f"{name}.safetensors"))
        b = load_file(str(ema_run / "checkpoints" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ra, rb = (json.loads((d / "result.json").read_text())["ema"] for d in (out, ema_run))
    assert (ra["steps"], ra["best_epoch"]) == (rb["steps"], rb["best_epoch"])
    assert [r["val_robust"] for r in ra["epochs"]] == [r["val_robust"] for r in rb["epochs"]]


def test_the_docs_page_commands_run(tmp_path):
    """docs/awp-ema.md's ``ltadv`` lines, on a shortened run (one epoch, few batches, no AutoAttack)."""
    import re
    import shlex
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "awp-ema.md").read_text()
    lines = [ln for block in re.findall(r"```sh\n(.*?)```", page, re.S) for ln in block.splitlines()
             if ln.startswith("ltadv ")]
    assert lines[0].startswith("ltadv train") and len(lines) == 3
    for line in lines:
        line = line.replace("runs/at_bsl-awp-ema", str(tmp_path / "run")).replace(",aa", "")
        line = line.replace("at_bsl-awp-ema.safetensors", str(tmp_path / "avg.safetensors"))
        argv = shlex.split(line)[1:]
        if argv[0] == "train":
            argv += [*CLI[2:], "--epochs", "2"]
        elif argv[0] == "eval":
            argv += ["--n", "20"]
        assert main(argv) == 0, line
    assert (tmp_path / "avg.safetensors").is_file()


def test_defaults_are_the_authors_values():
    m = load_config(overrides={"data.name": "digits-lt"}).method
    # trades_AWP/train_trades_cifar.py --awp-gamma; RobustLT configs/cifar10lf/awp_cifar10.yaml awp_gamma
    assert m.awp_gamma == 0.005
    assert m.awp_warmup == 0  # AT_AWP/train_cifar10.py --awp-warmup 0 (0-based `epoch >= 0`: from the start)
    assert m.taet_ce_epochs == 40  # TAET code/TAET/TAET.ipynb: `if epoch < 40` (0-based)
    assert (m.taet_alpha, m.taet_beta, m.taet_gamma) == (0.1, 0.1, 0.1)  # TAET code/HARL.py defaults
    assert (m.robustlt_alpha, m.robustlt_beta) == (0.3, 0.8)  # RobustLT configs/cifar10lf/robustlt_atbsl_cifar10.yaml
