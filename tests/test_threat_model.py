"""The L2 threat model, per-sample / per-class eps, and CFA (Wei et al., CVPR 2023; PKU-ML/CFA)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from conftest import clean_digits_model
from ltadv.attacks import (
    ATTACKS,
    AttackSettings,
    ascent_direction,
    autoattack,
    pgd,
    project_l2,
    random_init,
)
from ltadv.cli import main
from ltadv.config import ConfigError, load_config
from ltadv.evaluate import predict
from ltadv.methods import METHODS
from ltadv.methods.cfa import cfa_class_beta, cfa_class_eps, class_accuracy

pytestmark = pytest.mark.usefixtures("one_thread")


def l2(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1)


@pytest.fixture(scope="module")
def digits_model():
    """A small CNN trained cleanly on digits-lt (seconds on CPU)."""
    model, d = clean_digits_model(30)
    return model, d.x_test[:96].float() / 255, d.y_test[:96]


# ---- L2 projection and step, by hand ----

def test_l2_projection_hand_numbers():
    x = torch.full((3, 1, 2, 2), 0.5)
    x_adv = x.clone()
    x_adv[0] += torch.tensor([[0.3, 0.4], [0.0, 0.0]])  # ||delta|| = 0.5 > 0.25: halved
    x_adv[1] += torch.tensor([[0.1, 0.0], [0.0, -0.1]])  # ||delta|| = 0.1414 < 0.25: unchanged
    x_adv[2] += torch.tensor([[0.6, 0.0], [0.0, 0.0]])  # inside the ball of 1.0 but over the box: clamped to 1
    p = project_l2(x_adv, x, torch.tensor([0.25, 0.25, 1.0]))
    assert torch.allclose(p[0].flatten(), torch.tensor([0.65, 0.70, 0.5, 0.5]), atol=1e-6)
    assert torch.allclose(p[1].flatten(), torch.tensor([0.6, 0.5, 0.5, 0.4]), atol=1e-6)
    assert torch.allclose(p[2].flatten(), torch.tensor([1.0, 0.5, 0.5, 0.5]), atol=1e-6)
    # a scalar eps of 0.1 scales sample 1's delta (0.1, 0, 0, -0.1) by 0.1 / 0.141421 = 0.707107
    q = project_l2(x_adv, x, 0.1)
    assert torch.allclose(q[1].flatten(), torch.tensor([0.570711, 0.5, 0.5, 0.429289]), atol=1e-6)


def test_l2_ascent_direction_is_unit_gradient_per_sample():
    g = torch.tensor([[[[3.0, 4.0]]], [[[0.0, -2.0]]]])
    d = ascent_direction(g, "l2")
    assert torch.allclose(d.flatten(), torch.tensor([0.6, 0.8, 0.0, -1.0]), atol=1e-6)
    assert torch.equal(ascent_direction(g, "linf").flatten(), torch.tensor([1.0, 1.0, 0.0, -1.0]))


def test_one_l2_pgd_step_moves_along_the_unit_gradient():
    class Linear(nn.Module):  # logits [w . x, 0], w = (3, 4): CE of class 0 grows along -w
        def forward(self, x):
            z = x.flatten(1) @ torch.tensor([3.0, 4.0])
            return torch.stack([z, torch.zeros_like(z)], 1)

    x = torch.full((2, 1, 1, 2), 0.5)
    y = torch.tensor([0, 1])
    x_adv = pgd(Linear(), x, y, eps=1.0, alpha=0.1, steps=1, random_start=False, norm="l2")
    # class 0: 0.5 - 0.1 * (3, 4) / 5 = (0.44, 0.42); class 1 is pushed the other way: (0.56, 0.58)
    assert torch.allclose(x_adv.flatten(1), torch.tensor([[0.44, 0.42], [0.56, 0.58]]), atol=1e-6)
    # a second step of 0.3 would leave the L2 ball of 0.15: rescaled onto it, (0.5, 0.5) - 0.15 * (0.6, 0.8)
    x_adv = pgd(Linear(), x, y, eps=0.15, alpha=0.3, steps=1, random_start=False, norm="l2")
    assert torch.allclose(x_adv[0].flatten(), torch.tensor([0.41, 0.38]), atol=1e-6)


def test_l2_random_start_lies_inside_the_ball_at_varied_radii():
    x = torch.rand(64, 1, 8, 8)
    start = random_init(x, 0.5, "uniform", clamp=False, norm="l2")
    r = l2(start - x)
    assert r.max() <= 0.5 + 1e-5
    assert r.min() < 0.25 < r.max()  # r * eps with r ~ U(0, 1), not all on the sphere
    with pytest.raises(ValueError, match="L-inf only"):
        random_init(x, 0.5, "uniform_plus", norm="l2")


@pytest.mark.parametrize("start", ["uniform", "normal", "zero"])
def test_pgd_l2_stays_in_ball_and_box_and_reaches_the_boundary(digits_model, start):
    model, x, y = digits_model
    eps = 1.0
    x_adv = pgd(model, x, y, eps=eps, alpha=eps / 4, steps=10, random_start=start, norm="l2")
    r = l2(x_adv - x)
    assert r.max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (r > 0.9 * eps).float().mean() > 0.5  # the ascent walks out to the sphere for most points
    # an L2 ball of radius 1 on 64 pixels is not an L-inf ball of 1: few pixels move far
    assert (x_adv - x).abs().max() > 0.2
    clean = (predict(model, x) == y).float().mean()
    robust = (predict(model, x_adv) == y).float().mean()
    assert robust < clean - 0.2


L2_ATTACKS = sorted(set(ATTACKS) - {"aa", "aa_apgd", "aa_torchattacks"})


@pytest.mark.parametrize("name", L2_ATTACKS)
def test_registered_attacks_under_l2_stay_in_the_l2_ball(digits_model, name):
    model, x, y = digits_model
    x_adv = ATTACKS[name](model, x[:32], y[:32], 0.5, settings=AttackSettings(norm="l2"))
    assert l2(x_adv - x[:32]).max() <= 0.5 + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if name != "clean":
        assert l2(x_adv - x[:32]).max() > 0.4  # an L2 step, not an L-inf one of 0.5 per pixel (norm up to 4)


def test_official_autoattack_l2_through_pyautoattack(digits_model, monkeypatch):
    pytest.importorskip("pyautoattack")
    monkeypatch.setattr(autoattack, "AA_BUDGET", {"n_iter": 5, "n_queries": 20})
    model, x, y = digits_model
    stages = autoattack.autoattack_stages(model, 0.5, 10, n_iter=5, n_queries=20, norm="l2")
    for name, fn in stages:
        x_adv = fn(x[:16], y[:16])
        assert l2(x_adv - x[:16]).max() <= 0.5 + 1e-4, name
    x_adv = ATTACKS["aa"](model, x[:16], y[:16], 0.5, settings=AttackSettings(norm="l2"))
    assert l2(x_adv - x[:16]).max() <= 0.5 + 1e-4
    # the L-inf AA at 0.5 is a far larger set: it moves points more than 0.5 in L2
    x_inf = ATTACKS["aa"](model, x[:16], y[:16], 0.5)
    assert l2(x_inf - x[:16]).max() > 0.6


# ---- per-sample and per-class eps ----

def test_per_sample_eps_linf_keeps_each_point_in_its_own_ball(digits_model):
    model, x, y = digits_model
    eps = torch.where(y % 2 == 0, 0.02, 0.2)
    x_adv = pgd(model, x, y, eps=eps, alpha=0.05, steps=5)
    d = (x_adv - x).abs().flatten(1).max(1).values
    assert (d <= eps + 1e-6).all()
    assert d[y % 2 == 1].max() > 0.15  # the large budget is used, not the small one everywhere
    with pytest.raises(ValueError, match="shape"):
        pgd(model, x, y, eps=eps[:3], alpha=0.05, steps=1)


@pytest.mark.parametrize("method", ["at", "trades", "at_bsl"])
def test_class_eps_bounds_the_training_attack_per_class(digits_model, method):
    model, x, y = digits_model
    # asymmetric per-class radii: class k gets 0.01 * (k + 1)
    class_eps = [0.01 * (k + 1) for k in range(10)]
    cfg = load_config(overrides={"data.name": "digits-lt", "method.name": method, "attack.class_eps": class_eps,
                                 "attack.alpha": 0.05, "attack.steps": 3})
    m = METHODS[method](cfg, [100] * 10)
    x_adv = m.perturb(model, x, y)
    d = (x_adv - x).abs().flatten(1).max(1).values
    bound = torch.tensor(class_eps)[y]
    assert (d <= bound + 1e-6).all()
    assert d[y == 9].max() > 0.09 and d[y == 0].max() <= 0.01 + 1e-6


def test_class_eps_with_the_wrong_length_is_one_line_exit_2(tmp_path, capsys):
    rc = main(["train", "--data", "digits-lt", "--epochs", "1", "--quiet", "--attack.class_eps", "0.1,0.2",
               "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "10 classes" in err[0] and "2 values" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("override, message", [
    ({"attack.norm": "l3"}, "attack.norm must be linf or l2"),
    ({"eval.norm": "L2"}, "eval.norm must be linf or l2"),
    ({"attack.class_eps": [0.1, -0.1]}, "attack.class_eps must be finite"),
    ({"attack.class_eps": [0.1, float("nan")]}, "finite"),
    ({"attack.class_eps": [0.1, float("inf")]}, "finite"),
    ({"attack.norm": "l2", "attack.init": "uniform_plus"}, "L-inf only"),
    ({"method.name": "robal", "attack.norm": "l2"}, "L-inf only"),  # RoBal's preset start is x + U[0, eps)
    ({"method.cfa_lambda1": -0.5}, "cfa_lambda1"),
    ({"method.cfa_lambda2": float("nan")}, "finite"),
    ({"method.cfa_begin": -1}, "cfa_begin"),
    ({"method.cfa_acc": "mean"}, "cfa_acc"),
    ({"method.name": "trades_cfa", "method.outer_loss": "bsl"}, "trades_cfa"),
])
def test_bad_threat_model_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={"data.name": "digits-lt", **override})


@pytest.mark.parametrize("argv", [
    ["--attack.norm", "l3"], ["--attack.class_eps", "0.1,-1"], ["--method.cfa_lambda1", "nan"],
])
def test_bad_threat_model_flags_exit_2_with_one_line(tmp_path, capsys, argv):
    assert main(["train", "--data", "digits-lt", "--epochs", "1", *argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]


# ---- CFA: class-wise calibrated eps (CCM) and TRADES weight (CCR) ----

def test_cfa_class_eps_from_known_accuracies():
    base = torch.full((4,), 8 / 255)
    acc = torch.tensor([0.2, 0.5, 0.9, math.nan])  # class 3 had no training image
    eps = cfa_class_eps(base, acc, lambda1=0.5)
    # (0.5 + 0.2) * 8/255 = 0.0219608, (0.5 + 0.5) * 8/255 = 0.0313725, (0.5 + 0.9) * 8/255 = 0.0439216
    assert torch.allclose(eps, torch.tensor([0.0219608, 0.0313725, 0.0439216, 0.0313725]), atol=1e-6)
    # per-class base radii are calibrated each from its own: (0.3 + 0.5) * 0.1 = 0.08, (0.3 + 0.25) * 0.2 = 0.11
    eps = cfa_class_eps(torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.25]), lambda1=0.3)
    assert torch.allclose(eps, torch.tensor([0.08, 0.11]), atol=1e-7)


def test_cfa_class_beta_from_known_accuracies():
    # PKU-ML/CFA train.py: (lambda_2 + A) beta / (1 + (lambda_2 + A) beta); beta 6, lambda_2 0.5
    b = cfa_class_beta(6.0, torch.tensor([0.5, 0.0, 0.2]), 0.5)
    # 6 / 7 = 0.857143, 3 / 4 = 0.75, 4.2 / 5.2 = 0.807692
    assert torch.allclose(b, torch.tensor([0.857143, 0.75, 0.807692]), atol=1e-6)
    assert cfa_class_beta(6.0, None, 0.5) == pytest.approx(0.857143, abs=1e-6)  # before calibration: 6 / 7


def test_class_accuracy_class_and_authors_total_forms():
    correct, seen = torch.tensor([3.0, 1.0, 0.0]), torch.tensor([4.0, 2.0, 0.0])
    acc = class_accuracy(correct, seen, "class")
    assert acc[:2].tolist() == [0.75, 0.5] and math.isnan(acc[2])
    # CW_log.result(): C * correct_k / N = 3 * [3, 1, 0] / 6
    assert class_accuracy(correct, seen, "total").tolist() == [1.5, 0.5, 0.0]


def _cfa(method="at_cfa", **over):
    cfg = load_config(overrides={"data.name": "digits-lt", "method.name": method, "attack.eps": 0.1,
                                 "method.cfa_begin": 1, **over})
    return METHODS[method](cfg, [30, 20, 10])


def test_cfa_calibrates_from_the_previous_epoch_from_cfa_begin_on():
    m = _cfa()
    m.set_epoch(0)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    assert torch.allclose(m.batch_eps(y), torch.full((8,), 0.1))
    # adversarial logits predicting class 0 everywhere: class 0 robust 4 / 4, class 1 0 / 2, class 2 0 / 2
    logits = torch.tensor([[5.0, 0.0, 0.0]]).repeat(8, 1)
    m.count(logits, y)
    m.end_epoch()
    assert m.train_robust.tolist() == [1.0, 0.0, 0.0]
    m.set_epoch(1)
    # (0.5 + 1) * 0.1 = 0.15 for class 0, (0.5 + 0) * 0.1 = 0.05 for the others
    assert torch.allclose(m.class_eps(), torch.tensor([0.15, 0.05, 0.05]), atol=1e-7)
    assert torch.allclose(m.batch_eps(torch.tensor([2, 0])), torch.tensor([0.05, 0.15]), atol=1e-7)
    assert m.epoch_info()["cfa_class_eps"] == pytest.approx([0.15, 0.05, 0.05])
    # resume: the accuracies travel in the method state
    m2 = _cfa()
    m2.load_state_dict(m.state_dict())
    m2.set_epoch(1)
    assert torch.allclose(m2.class_eps(), m.class_eps())
    # CCM off: every class keeps eps
    m3 = _cfa(**{"method.cfa_ccm": False})
    m3.load_state_dict(m.state_dict())
    m3.set_epoch(5)
    assert torch.allclose(m3.class_eps(), torch.full((3,), 0.1))


def test_cfa_before_begin_keeps_eps():
    m = _cfa(**{"method.cfa_begin": 3})
    m.count(torch.tensor([[0.0, 9.0, 0.0], [0.0, 9.0, 0.0]]), torch.tensor([1, 0]))  # class 1 robust, class 0 not
    m.end_epoch()
    m.set_epoch(2)
    assert torch.allclose(m.class_eps(), torch.full((3,), 0.1))
    m.set_epoch(3)
    assert torch.allclose(m.class_eps(), torch.tensor([0.05, 0.15, 0.1]), atol=1e-7)  # class 2 unseen: eps


def test_trades_cfa_loss_hand_numbers():
    m = _cfa("trades_cfa", **{"method.beta": 6.0})

    class Fixed(nn.Module):  # returns given logits for "clean" (x == 0) and "adversarial" (x == 1) inputs
        def forward(self, x):
            clean = torch.tensor([[0.0, 0.0, -30.0], [0.0, 0.0, -30.0]])
            adv = torch.tensor([[math.log(3.0), 0.0, -30.0], [0.0, 0.0, -30.0]])
            return adv if bool((x > 0.5).all()) else clean

    x, x_adv, y = torch.zeros(2, 1, 1, 1), torch.ones(2, 1, 1, 1), torch.tensor([0, 1])
    m.set_epoch(0)
    out = m.loss(Fixed(), x, x_adv, y)
    # sample 0: CE = ln 2 = 0.693147, KL([.5, .5] || [.75, .25]) = 0.5 ln(4/3) = 0.143841; sample 1: CE ln 2, KL 0.
    # uncalibrated weight 6/7: ((1/7) 0.693147 + (6/7) 0.143841 + (1/7) 0.693147) / 2 = 0.160667
    assert float(out["loss"]) == pytest.approx(0.160667, abs=1e-5)
    m.end_epoch()  # A = [1 (class 0 kept its label), 0 (class 1: argmax of [0, 0] is class 0), nan]
    m.set_epoch(1)
    out = m.loss(Fixed(), x, x_adv, y)
    # beta_0 = 1.5 * 6 / (1 + 9) = 0.9, beta_1 = 0.5 * 6 / 4 = 0.75:
    # ((0.1) 0.693147 + 0.9 * 0.143841 + 0.25 * 0.693147) / 2 = 0.186029
    assert float(out["loss"]) == pytest.approx(0.186029, abs=1e-5)


# ---- from the command line ----

TINY = ["--data", "digits-lt", "--quiet", "--attack.steps", "2", "--eval.attacks", "clean,pgd20"]


@pytest.mark.parametrize("method", ["at_cfa", "trades_cfa"])
def test_cfa_trains_from_the_cli_and_records_its_class_eps(tmp_path, method):
    out = tmp_path / method
    assert main(["train", *TINY, "--method", method, "--epochs", "2", "--method.cfa_begin", "1",
                 "--out", str(out)]) == 0
    rec = json.loads((out / "result.json").read_text())
    e1, e2 = rec["epochs"]
    assert e1["cfa_class_eps"] == pytest.approx([0.1] * 10)  # digits-lt's eps, before the calibration
    acc = e1["cfa_train_robust"]
    assert len(acc) == 10 and len(set(acc)) > 1
    assert e2["cfa_class_eps"] == pytest.approx([(0.5 + a) * 0.1 for a in acc], abs=1e-6)
    assert rec["metrics"]["pgd20"]["overall"] >= 0


def test_l2_training_and_eval_from_the_cli(tmp_path, capsys):
    out = tmp_path / "l2"
    assert main(["train", *TINY, "--method", "at", "--epochs", "1", "--attack.norm", "l2", "--eps", "1.0",
                 "--attack.init", "uniform", "--out", str(out)]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["threat_model"] == {"train": {"norm": "l2", "eps": 1.0}, "eval": {"norm": "l2", "eps": 1.0}}
    assert rec["eval"]["norm"] == "l2" and rec["evaluations"]["best n=500 eps=1 norm=l2"]["headline"] is True
    headline = json.dumps(rec["metrics"], sort_keys=True)
    capsys.readouterr()
    assert main(["eval", str(out), "--which", "best", "--eps", "2.0", "--eps-sweep", "--attacks", "clean,pgd20,fgsm",
                 "--quiet"]) == 0
    assert "(l2)" in capsys.readouterr().out
    rec = json.loads((out / "result.json").read_text())
    entry = rec["evaluations"]["best n=500 eps=2 norm=l2"]
    assert entry["norm"] == "l2" and entry["headline"] is False
    sweep = entry["eps_sweep"]
    assert sweep["eps"] == [2.0, 4.0, 8.0, 16.0] and sweep["norm"] == "l2"
    assert sweep["robust"][0] >= sweep["robust"][-1]
    assert entry["metrics"]["pgd20"]["overall"] <= rec["metrics"]["pgd20"]["overall"]  # a larger L2 ball
    assert json.dumps(rec["metrics"], sort_keys=True) == headline


def test_linf_run_evaluated_in_l2_is_its_own_entry(tmp_path):
    out = tmp_path / "inf"
    assert main(["train", *TINY, "--method", "at", "--epochs", "1", "--out", str(out)]) == 0
    before = json.loads((out / "result.json").read_text())
    assert before["threat_model"]["eval"] == {"norm": "linf", "eps": 0.1}
    assert main(["eval", str(out), "--which", "last", "--norm", "l2", "--eps", "0.5", "--quiet"]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["evaluations"]["last n=500 eps=0.5 norm=l2"]["norm"] == "l2"
    assert rec["metrics"] == before["metrics"] and rec["eval"] == before["eval"]
    assert main(["eval", str(out), "--norm", "l1"]) == 2


@pytest.mark.parametrize("over, want", [({}, "l2"), ({"eval.norm": "linf"}, "linf")])
def test_selection_and_final_attacks_use_the_run_norm(monkeypatch, tmp_path, over, want):
    from ltadv.train import train

    real, seen = ATTACKS["pgd20"], []

    def spy(model, x, y, eps, settings=None):
        seen.append((settings.norm, eps))
        return real(model, x, y, eps, settings=settings)

    monkeypatch.setitem(ATTACKS, "pgd20", spy)
    cfg = load_config(overrides={"data.name": "digits-lt", "method.name": "at", "train.epochs": 1,
                                 "train.progress": False, "attack.steps": 1, "attack.norm": "l2", "attack.eps": 0.7,
                                 "attack.init": "uniform",
                                 "eval.val_n": 20, "eval.n": 20, "eval.checkpoints": ["last"], **over})
    train(cfg, tmp_path / "run", log=lambda *a, **k: None)
    assert seen == [(want, 0.7), (want, 0.7)]  # the selection pass, then the last checkpoint


def test_a_run_saved_before_the_threat_model_fields_still_resumes(tmp_path):
    from ltadv import checkpoint as ckpt
    from ltadv.train import train

    class Stop(Exception):
        pass

    def stop_after_one(msg):
        if msg.startswith("epoch   1/"):
            raise Stop

    cfg = load_config(overrides={"data.name": "digits-lt", "method.name": "at", "train.epochs": 2,
                                 "train.progress": False, "attack.steps": 1, "eval.val_n": 20, "eval.n": 20})
    out = tmp_path / "old"
    with pytest.raises(Stop):
        train(cfg, out, log=stop_after_one)

    def strip(c):  # the config as ltadv wrote it before attack.norm, attack.class_eps, eval.norm and CFA's fields
        for group, keys in (("attack", ("norm", "class_eps")), ("eval", ("norm",)),
                            ("method", [k for k in c["method"] if k.startswith("cfa_")])):
            for k in keys:
                del c[group][k]
        return c

    state = ckpt.load_state(out / "checkpoints" / "last.pt")
    state["config"] = strip(state["config"])
    ckpt.save_state(out / "checkpoints" / "last.pt", state)
    rec = json.loads((out / "result.json").read_text())
    rec["config"] = strip(rec["config"])
    (out / "result.json").write_text(json.dumps(rec))
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert len(json.loads((out / "result.json").read_text())["epochs"]) == 2


def test_an_l2_evaluation_refuses_linf_only_starts_up_front():
    from ltadv.threat import eval_settings

    cfg = load_config(overrides={"data.name": "digits-lt", "eval.mim_init": "uniform_plus"})
    assert eval_settings(cfg).norm == "linf" and eval_settings(cfg).mim_init == "uniform_plus"
    with pytest.raises(ConfigError, match="eval.mim_init uniform_plus"):
        eval_settings(cfg, "l2")


def test_the_docs_page_commands_resolve(capsys):
    import re
    import shlex
    from pathlib import Path

    import yaml

    from ltadv.cli import build_parser

    page = (Path(__file__).parents[1] / "docs" / "threat-models.md").read_text()
    lines = [ln.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", page, re.S)
             for ln in block.splitlines()]
    runs = [shlex.split(ln)[1:] for ln in lines if ln.startswith(("ltadv run", "ltadv train"))]
    assert page.startswith("# ") and page.split("```bash\n")[1].startswith("ltadv run")  # starts with the command
    assert len(runs) >= 5
    for argv in runs:
        capsys.readouterr()
        assert main(["config", *argv[1:]]) == 0, argv
        cfg = yaml.safe_load(capsys.readouterr().out)
        if "--attack.norm" in argv:
            assert cfg["attack"]["norm"] == argv[argv.index("--attack.norm") + 1]
        if "--attack.class_eps" in argv:
            assert len(cfg["attack"]["class_eps"]) == 10
    evals = [shlex.split(ln)[1:] for ln in lines if ln.startswith("ltadv eval")]
    assert evals and all(build_parser().parse_args(a).func.__name__ == "cmd_eval" for a in evals)
