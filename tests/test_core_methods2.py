"""Training objectives, second part: every outer loss a method can take, the attack each method runs (its
budget, step, start, norm and loss), REAT's loss, counts and attack weights, RoBal's switches, CFA's
calibration, RobustLT's class-wise budgets and TAET's two stages, on hand-computed numbers (batch of 3 or
more, asymmetric logits, unequal counts). Fast: tiny linear models, no training loop."""

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import ltadv.methods as methods_pkg
from conftest import identity_model
from ltadv.config import load_config
from ltadv.methods import METHODS
from ltadv.methods import reat as reat_mod
from ltadv.methods import robustlt as robustlt_mod
from ltadv.methods import trades as trades_mod
from ltadv.methods.cfa import cfa_class_beta, cfa_class_eps, class_accuracy
from ltadv.methods.outer import outer_loss
from ltadv.methods.robustlt import classwise_pgd, robustlt_eps, robustlt_intensity
from ltadv.methods.taet import harl_loss

ZC = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [-1.0, 0.0, 3.0]])  # clean logits (identity model)
ZA = torch.tensor([[0.0, 1.0, 0.5], [1.0, -0.5, 2.0], [0.0, 0.0, 0.0]])  # adversarial logits
Y = torch.tensor([0, 2, 1])
COUNTS = [100, 10, 1]
# Pixels for the real attacks on the identity model: logits = x, so the summed CE's input gradient is
# p(x) - e_y, negative on the label and positive elsewhere: every L-inf step moves the label's pixel down
# by alpha and the others up by alpha, whatever x is (hand-computable PGD).
X = torch.tensor([[0.5, 0.3, 0.9], [0.2, 0.97, 0.6], [0.02, 0.4, 0.7]])


def cfg(name, **over):
    return load_config(overrides={"method.name": name, **over})


def make(name, counts=COUNTS, **over):
    return METHODS[name](cfg(name, **over), counts)


def approx(x):
    return pytest.approx(x, rel=1e-5)


def loss_of(name, **over):
    return float(make(name, **over).loss(identity_model(), ZC, ZA, Y)["loss"].detach())


@pytest.fixture
def spy(monkeypatch):
    """Replaces ``pgd`` in the method modules: records every argument, returns x + 1."""
    calls = []

    def fake(model, x, y, eps, alpha, steps, loss_fn=None, random_start=True, clamp_start=True, norm="linf"):
        calls.append(dict(model=model, x=x, y=y, eps=eps, alpha=alpha, steps=steps, loss_fn=loss_fn,
                          random_start=random_start, clamp_start=clamp_start, norm=norm))
        return x + 1

    for mod in (methods_pkg, trades_mod, reat_mod):
        monkeypatch.setattr(mod, "pgd", fake)
    return calls


ATTACK = {"attack.eps": 0.05, "attack.alpha": 0.03, "attack.steps": 4, "attack.init": "uniform",
          "attack.clamp_start": False, "attack.norm": "l2", "attack.class_eps": (0.05, 0.01, 0.03)}


def check_plumbing(call, model, x, y):
    assert call["model"] is model and torch.equal(call["x"], x) and torch.equal(call["y"], y)
    assert call["eps"].tolist() == pytest.approx([0.05, 0.03, 0.01])  # class_eps[Y], Y = [0, 2, 1]
    assert call["alpha"] == 0.03 and call["steps"] == 4
    assert call["random_start"] == "uniform" and call["clamp_start"] is False and call["norm"] == "l2"


# --- the outer losses (methods/outer.py) on AT's adversarial logits ---------------------------------------
# ZA, Y = [0, 2, 1], counts [100, 10, 1]; CE per sample l = [1.680270, 0.371539, 1.098612].
# inverse weights 3 (1/n) / sum(1/n) = [0.027027, 0.270270, 2.702703]; effective (beta 0.99)
# (1 - b) / (1 - b^n), normalised to sum 3 = [0.042237, 0.280044, 2.677719].

@pytest.mark.parametrize("over,expected", [
    # focal, LDAM-DRW's FocalLoss: v = w_y l, mean (1 - e^-v)^1.5 v
    ({"method.outer_loss": "focal", "method.focal_gamma": 1.5}, 0.6318345454699231),
    ({"method.outer_loss": "focal", "method.focal_gamma": 1.5, "method.reweight": "inverse"}, 0.18186031327081897),
    # cb: CE weighted by effective numbers (beta 0.99), sum w_y l / sum w_y
    ({"method.outer_loss": "cb", "method.cb_beta": 0.99}, 0.4578355955964864),
    # ldam: margins m = 0.3 n^-1/4 / max = [0.094868, 0.168702, 0.3]; CE(2 (z - m_y e_y))
    ({"method.outer_loss": "ldam", "method.ldam_max_m": 0.3, "method.ldam_s": 2.0}, 1.3825223861682128),
    ({"method.outer_loss": "ldam", "method.ldam_max_m": 0.3, "method.ldam_s": 2.0, "method.reweight": "inverse"},
     0.3509940102695399),
    # la: CE(z + 0.7 log(n / 111))
    ({"method.outer_loss": "la", "method.la_tau": 0.7}, 1.5557129524651432),
    ({"method.outer_loss": "la", "method.la_tau": 0.7, "method.reweight": "inverse"}, 2.3001323040201576),
    # cdt: CE(z / (100 / n)^0.5) = CE(z / [1, 3.162278, 10])
    ({"method.outer_loss": "cdt", "method.cdt_gamma": 0.5}, 1.2321466081521215),
    ({"method.outer_loss": "cdt", "method.cdt_gamma": 0.5, "method.reweight": "inverse"}, 1.341815086378827),
    # focal_sigmoid: sum over the 3 x 3 binary terms -(1 - p_t)^1.5 log p_t, each times w_y, / N = 3
    ({"method.outer_loss": "focal_sigmoid", "method.focal_gamma": 1.5}, 1.0718606593922886),
    ({"method.outer_loss": "focal_sigmoid", "method.focal_gamma": 1.5, "method.reweight": "inverse"},
     0.9234604958167338),
    # cb_focal_sigmoid: the same with effective weights (beta 0.99)
    ({"method.outer_loss": "cb_focal_sigmoid", "method.focal_gamma": 1.5, "method.cb_beta": 0.99},
     0.925889876873696),
    # bsl with effective re-weighting keeps tau_b: CE_w(z + 0.5 log n), w effective (0.99)
    ({"method.outer_loss": "bsl", "method.tau_b": 0.5, "method.reweight": "effective", "method.cb_beta": 0.99},
     1.575356155748332),
    ({"method.outer_loss": "ce"}, 1.0501403303875092),  # explicit ce on at_bsl: plain CE, no tau_b
])
def test_outer_losses_on_at_by_hand(over, expected):
    assert loss_of("at_bsl", **{"method.tau_b": 0.5, **over}) == approx(expected)


def test_outer_loss_default_is_ce():
    # no default given: auto means CE (1.050140), not BSL (CE(ZA + log n) = 2.104587 for tau_b 1)
    m = make("at_bsl")
    assert float(outer_loss(m, ZA, Y)) == approx(1.0501403303875092)
    assert float(m.outer(ZA, Y)) == approx(1.0501403303875092)
    assert float(m.outer(ZA, Y, "bsl")) == approx(2.104586885127529)


def test_at_takes_ce_by_default_whatever_tau_b():
    assert loss_of("at", **{"method.tau_b": 0.5}) == approx(1.0501403303875092)


def test_trades_natural_term_follows_outer_loss():
    # focal (gamma 1.5) on the clean logits + 6 KL(p(ZC) || p(ZA)) = 1.476834 + 6 * 1.037745
    assert loss_of("trades", **{"method.outer_loss": "focal", "method.focal_gamma": 1.5}) == \
        approx(7.703303917777968)


def test_mart_uses_beta():
    # MART with beta 0 is the boosted CE alone; beta 6 adds 6 mean[KL (1 - p_y(ZC))] (tests/test_core_methods.py:
    # 5.589312 in all); the difference is linear in beta
    b0, b6, b2 = (loss_of("mart", **{"method.beta": b}) for b in (0.0, 6.0, 2.0))
    assert b6 == approx(5.5893118747799875)
    assert b2 - b0 == pytest.approx((b6 - b0) / 3, rel=1e-5) and b6 - b0 > 1.0


# --- the training attacks: every argument reaches pgd -----------------------------------------------------

def test_base_attack_passes_every_setting(spy):
    model = identity_model()
    out = make("at", **ATTACK).perturb(model, X, Y)
    assert torch.equal(out, X + 1)
    check_plumbing(spy[-1], model, X, Y)
    assert spy[-1]["loss_fn"] is None  # the reference CE
    # soft targets: each sample's radius is its argmax class's
    soft = torch.tensor([[0.6, 0.0, 0.4], [0.1, 0.2, 0.7], [0.3, 0.7, 0.0]])
    make("at", **ATTACK).perturb(model, X, soft)
    assert spy[-1]["eps"].tolist() == pytest.approx([0.05, 0.03, 0.01]) and torch.equal(spy[-1]["y"], soft)


def test_trades_attack_passes_every_setting(spy):
    model = identity_model()
    make("trades", **ATTACK).perturb(model, X, Y)
    call = spy[-1]
    check_plumbing(call, model, X, X)  # the target is the clean logits, identity(X) = X
    assert call["loss_fn"] is trades_mod.kl_attack_loss


def test_reat_attack_passes_every_setting_and_its_weights(spy):
    model = identity_model()
    m = make("reat", **ATTACK)
    m.perturb(model, X, Y)
    call = spy[-1]
    check_plumbing(call, model, X, Y)
    # first epoch a = n: E = n (1 - (1 - 1/n)^n) = [63.396766, 6.513216, 1], w = 1 / (E + 1e-5) normalised to 3
    # = [0.040470, 0.393913, 2.565618]; loss = sum w_y l / sum w_y with l = CE(ZA)
    assert float(call["loss_fn"](ZA, Y)) == approx(0.4846614715200022)
    # a = [3, 0, 7]: E = [(1 - 0.99^3) / 0.01, 0, 1] = [2.9701, 0, 1]: w ~ [1.01e-5, 3.0, 3.0e-5]
    m.adv_counts = torch.tensor([3.0, 0.0, 7.0], dtype=torch.float64)
    m.perturb(model, X, Y)
    assert float(spy[-1]["loss_fn"](ZA, Y)) == pytest.approx(1.098606976449087, rel=1e-4)


def real_at(**over):
    torch.manual_seed(0)
    return make("at", **{"attack.init": "zero", **over}).perturb(identity_model(), X, Y)


def test_at_attack_by_hand():
    # 3 steps of 0.02 from x, eps 0.05: 0.05 down on the label's pixel, up on the others, then [0, 1]
    out = real_at(**{"attack.eps": 0.05, "attack.alpha": 0.02, "attack.steps": 3})
    assert torch.allclose(out, torch.tensor([[0.45, 0.35, 0.95], [0.25, 1.0, 0.55], [0.07, 0.35, 0.75]]), atol=1e-6)
    # 2 steps of the default eps / 4 = 0.02 at eps 0.08: 0.04 each way
    out = real_at(**{"attack.eps": 0.08, "attack.steps": 2})
    assert torch.allclose(out, torch.tensor([[0.46, 0.34, 0.94], [0.24, 1.0, 0.56], [0.06, 0.36, 0.74]]), atol=1e-6)
    # per-class radii class_eps[Y] = [0.05, 0.03, 0.01], step 0.02, 3 steps
    out = real_at(**{"attack.eps": 0.05, "attack.alpha": 0.02, "attack.steps": 3,
                     "attack.class_eps": (0.05, 0.01, 0.03)})
    assert torch.allclose(out, torch.tensor([[0.45, 0.35, 0.95], [0.23, 1.0, 0.57], [0.03, 0.39, 0.71]]), atol=1e-6)


def test_at_attack_l2_stays_in_the_l2_ball_and_moves():
    out = real_at(**{"attack.eps": 0.05, "attack.alpha": 0.02, "attack.steps": 5, "attack.norm": "l2"})
    d = (out - X).norm(dim=1)
    # L2 ball of 0.05 (the L-inf attack would move each row by 0.05 sqrt(3) = 0.087)
    assert (d <= 0.05 + 1e-6).all() and (d > 0.045).all()


# --- RoBal: every switch and constant reaches the loss ----------------------------------------------------
# CE(s' ZA - (tau_m log(n / n_min) + s m0) e_y + tau_b log n) (+ beta KL(ZC || ZA) with trades), s' = s in the
# loss (scale_in loss, cosine head)

def test_robal_non_default_constants():
    # s 5, tau_m 0.5, m0 0.2, tau_b 0.7, beta 2: margins tau_m log(n / 1) + 5 * 0.2 = [3.302585, 2.151293, 1]
    over = {"method.s": 5.0, "method.tau_m": 0.5, "method.m0": 0.2, "method.tau_b": 0.7, "method.beta": 2.0}
    assert loss_of("robal", **over) == approx(5.712482858250334)


def test_robal_bsl_and_margin_switches():
    assert loss_of("robal", **{"method.bsl": False}) == approx(11.179969990070752)  # no tau_b log n
    assert loss_of("robal", **{"method.margin": False}) == approx(9.585852967637038)  # no margin


def test_robal_without_trades_runs_one_forward():
    seen = []
    model = identity_model()
    model.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
    make("robal", **{"method.trades": False}).loss(model, ZC, ZA, Y)
    assert len(seen) == 1 and torch.equal(seen[0], ZA)
    seen.clear()
    make("robal").loss(model, ZC, ZA, Y)
    assert len(seen) == 2


# --- the base method -----------------------------------------------------------------------------------

def test_batch_eps_per_class_or_scalar():
    assert make("at", **{"attack.eps": 0.07}).batch_eps(Y) == 0.07
    m = make("at", **{"attack.class_eps": (0.05, 0.01, 0.03)})
    assert m.batch_eps(Y).tolist() == pytest.approx([0.05, 0.03, 0.01])
    assert m.batch_eps(torch.tensor([[0.2, 0.7, 0.1], [0.9, 0.0, 0.1]])).tolist() == pytest.approx([0.01, 0.05])


# --- REAT: the loss through the head's input features, the prediction counts, the state -------------------
# C = 4, counts [40, 20, 10, 5]: tail = the positions from 4 // 3 * 2 + 1 = 3 on, i.e. class 3.
# The model's features are its input (4 x 3); the head is a fixed linear layer, logits = f W^T + b.

C4 = [40, 20, 10, 5]
F4 = torch.tensor([[0.2, 0.9, 0.4], [0.7, 0.1, 0.5], [0.6, 0.3, 0.8], [0.1, 0.5, 0.2]])
L4 = torch.tensor([3, 0, 3, 1])


class Headed(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 4)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5], [0.5, 0.5, 0.0],
                                                 [-1.0, 0.5, 1.0]]))
            self.head.bias.copy_(torch.tensor([0.1, 0.0, -0.1, 0.2]))

    def forward(self, x):
        return self.head(x)


class DDPLike(nn.Module):  # DistributedDataParallel keeps the model as .module
    def __init__(self, inner):
        super().__init__()
        self.module = inner

    def forward(self, x):
        return self.module(x)


class CompiledLike(nn.Module):  # torch.compile keeps the model as ._orig_mod
    def __init__(self, inner):
        super().__init__()
        self._orig_mod = inner

    def forward(self, x):
        return self._orig_mod(x)


# logits = [[0.5, 0.7, 0.45, 0.85], [1.05, -0.15, 0.3, 0.05], [1.1, -0.1, 0.35, 0.55], [0.3, 0.4, 0.2, 0.55]]
# (argmax [3, 0, 0, 3]). BSL(tau_b 0.5) = CE(logits + 0.5 log n) = 1.379632; BSL(tau_b 1) = 1.721807.
# TAIL over f = F4: w = sqrt(75 / n) = [1.369306, 1.936492, 2.738613, 3.872983]; anchors 0 and 2 (class 3);
# K_i = 1/(4 * 3) sum_j KL(softmax f_i || softmax f_j); c = (-2 w_3 + (w_3 + w_0) - 2 w_3 + (w_3 + w_1)) / 4
# for both anchors: TAIL = (K_0 + K_2) / 2 * c = -0.021354.
BSL_HALF, TAIL = 1.3796319060744628, -0.02135360920437964


@pytest.mark.parametrize("wrap", [lambda m: m, DDPLike, CompiledLike])
def test_reat_loss_by_hand(wrap):
    m = make("reat", C4, **{"method.tau_b": 0.5, "method.reat_tail": 2.0})
    out = m.loss(wrap(Headed()), None, F4, L4)
    assert float(out["loss"].detach()) == approx(BSL_HALF + 2 * TAIL)  # 1.336925
    assert out["logits"].argmax(1).tolist() == [3, 0, 0, 3]
    out["loss"].backward()  # the graph reaches the head through both terms


def test_reat_defaults_and_switch_off():
    # tau_b 1, lambda 1: BSL(1) + TAIL
    assert float(make("reat", C4).loss(Headed(), None, F4, L4)["loss"].detach()) == approx(1.7004531401480916)
    off = make("reat", C4, **{"method.tau_b": 0.5, "method.reat_tail": 0.0})
    assert float(off.loss(Headed(), None, F4, L4)["loss"].detach()) == approx(BSL_HALF)


def test_reat_soft_targets():
    # BSL takes the soft rows as they are; the tail set and pair signs use their argmax, [3, 0, 3, 1] again:
    # -mean sum_c t_c log softmax(logits + 0.5 log n)_c = 1.475232, plus 2 TAIL
    soft = torch.tensor([[0.3, 0.0, 0.0, 0.7], [0.6, 0.4, 0.0, 0.0], [0.0, 0.0, 0.2, 0.8], [0.0, 1.0, 0.0, 0.0]])
    m = make("reat", C4, **{"method.tau_b": 0.5, "method.reat_tail": 2.0})
    assert float(m.loss(Headed(), None, F4, soft)["loss"].detach()) == approx(1.4325243093667084)


def test_reat_counts_predictions_for_the_next_epoch():
    m = make("reat", C4)
    assert m.adv_counts.tolist() == [40, 20, 10, 5]  # first epoch: a = n
    assert m.tail_classes == [3]
    m.end_epoch()  # nothing predicted this epoch: a stays
    assert m.adv_counts.tolist() == [40, 20, 10, 5]
    m.loss(Headed(), None, F4, L4)  # predictions [3, 0, 0, 3]
    m.loss(Headed(), None, F4[1:2], L4[1:2])  # prediction [0]
    m.end_epoch()
    assert m.adv_counts.tolist() == [3, 0, 0, 2]
    m.loss(Headed(), None, F4[:1], L4[:1])  # one prediction, class 3: the new count starts from zero
    m.end_epoch()
    assert m.adv_counts.tolist() == [0, 0, 0, 1]
    state = m.state_dict()
    m.loss(Headed(), None, F4, L4)
    m.end_epoch()
    assert m.adv_counts.tolist() == [2, 0, 0, 2]
    assert state["adv_counts"].tolist() == [0, 0, 0, 1]  # the saved state is a copy
    r = make("reat", C4)
    r.load_state_dict({"adv_counts": [7, 1, 0, 3]})
    assert r.adv_counts.tolist() == [7, 1, 0, 3]
    r.load_state_dict({})  # an older checkpoint without the counts keeps them
    assert r.adv_counts.tolist() == [7, 1, 0, 3]


def test_reat_attack_weights_follow_the_counts():
    # rbl_weights with large counts needs float64: n = 1e7, a = 1e7: beta = 1 - 1e-7,
    # E = (1 - (1 - 1e-7)^1e7) / 1e-7 = 6.321206e6; n = 3, a = 3: E = (1 - 8/27) / (1/3) = 19/9;
    # w = 1 / (E + 1e-5) normalised to 2 = [6.679486e-07, 1.999999]
    w = reat_mod.rbl_weights([10**7, 3], [10**7, 3])
    assert w.tolist() == pytest.approx([6.67948642e-07, 1.99999933], rel=1e-4)


# --- CFA (methods/cfa.py; PKU-ML/CFA train.py) ---------------------------------------------------------------

def test_cfa_formulas_by_hand():
    a = torch.tensor([0.25, math.nan, 1.0], dtype=torch.float64)
    # CCM: (0.3 + A) * base: 0.55 * 0.1, class 1 without accuracy keeps 0.2, 1.3 * 0.05
    assert cfa_class_eps(torch.tensor([0.1, 0.2, 0.05]), a, 0.3).tolist() == pytest.approx([0.055, 0.2, 0.065])
    # CCR: r = (0.2 + A) * 4 = [1.8, nan, 4.8]: r / (1 + r) = [0.642857, 4 / 5 (plain), 0.827586]
    assert cfa_class_beta(4.0, a, 0.2).tolist() == pytest.approx([1.8 / 2.8, 0.8, 4.8 / 5.8], rel=1e-6)
    assert cfa_class_beta(4.0, None, 0.2) == pytest.approx(0.8)
    correct, seen = torch.tensor([3.0, 0.0, 2.0, 0.0]), torch.tensor([4.0, 5.0, 2.0, 0.0])
    acc = class_accuracy(correct, seen)  # the default: correct_k / n_k, NaN for an unseen class
    assert acc[:3].tolist() == [0.75, 0.0, 1.0] and math.isnan(acc[3])
    assert class_accuracy(correct, seen, "total").tolist() == pytest.approx([12 / 11, 0.0, 8 / 11, 0.0])  # 4 c_k / 11
    assert class_accuracy(torch.zeros(2), torch.zeros(2), "total").tolist() == [0.0, 0.0]  # nothing seen


def cfa_epoch0(name="at_cfa", **over):
    """One epoch of counting: ZA with Y (predictions [1, 2, 0]: class 2 right) and ZC with [0, 1, 1]
    (predictions [0, 1, 2]: classes 0 and 1 right once): correct [1, 1, 1] of seen [2, 3, 1],
    A = [0.5, 1/3, 1] (``total``: 3 * 1 / 6 = 0.5 each)."""
    m = make(name, [30, 20, 10], **{"attack.eps": 0.1, "method.cfa_begin": 1, "method.cfa_lambda1": 0.3,
                                    "method.cfa_lambda2": 0.2, "method.beta": 4.0, **over})
    m.set_epoch(0)
    m.count(ZA, Y)
    m.count(ZC, torch.eye(3)[torch.tensor([0, 1, 1])] * 0.8 + 0.2 / 3)  # soft rows: their argmax counts
    m.end_epoch()
    return m


def test_cfa_calibrated_eps_from_the_previous_epoch():
    m = cfa_epoch0()
    info = m.epoch_info()
    assert info["cfa_class_eps"] == pytest.approx([0.1, 0.1, 0.1])  # epoch 0 trained at eps
    assert info["cfa_train_robust"] == pytest.approx([0.5, 1 / 3, 1.0])
    m.set_epoch(1)
    # (0.3 + A) * 0.1 = [0.08, 0.063333, 0.13]; the batch [0, 2, 1] gets [0.08, 0.13, 0.063333]
    assert m.batch_eps(Y).tolist() == pytest.approx([0.08, 0.13, 0.19 / 3], rel=1e-6)
    assert m.epoch_info()["cfa_class_eps"] == pytest.approx([0.08, 0.19 / 3, 0.13], rel=1e-6)
    # an epoch that saw classes 0 and 1 only: class 2 is NaN, reported as None, and keeps eps next
    m.count(ZA[:2], torch.tensor([1, 0]))  # predictions [1, 2]: class 1 right, class 0 wrong
    m.end_epoch()
    assert m.epoch_info()["cfa_train_robust"] == [0.0, 1.0, None]
    m.set_epoch(2)
    assert m.batch_eps(torch.tensor([0, 1, 2])).tolist() == pytest.approx([0.03, 0.13, 0.1], rel=1e-6)


def test_cfa_switches():
    m = cfa_epoch0(**{"method.cfa_begin": 3})
    m.set_epoch(2)  # before cfa_begin: eps for every class
    assert m.batch_eps(Y).tolist() == pytest.approx([0.1, 0.1, 0.1])
    m.set_epoch(3)
    assert m.batch_eps(Y).tolist() == pytest.approx([0.08, 0.13, 0.19 / 3], rel=1e-6)
    m = cfa_epoch0(**{"method.cfa_ccm": False})
    m.set_epoch(1)
    assert m.batch_eps(Y).tolist() == pytest.approx([0.1, 0.1, 0.1])
    m = cfa_epoch0(**{"method.cfa_acc": "total"})
    m.set_epoch(1)
    assert m.batch_eps(Y).tolist() == pytest.approx([0.08, 0.08, 0.08])  # (0.3 + 0.5) * 0.1
    # per-class base radii are calibrated from their own: (0.3 + A) * [0.2, 0.1, 0.05] = [0.16, 0.063333, 0.065]
    m = cfa_epoch0(**{"attack.class_eps": (0.2, 0.1, 0.05)})
    m.set_epoch(1)
    assert m.batch_eps(Y).tolist() == pytest.approx([0.16, 0.065, 0.19 / 3], rel=1e-6)


def test_cfa_eps_fixed_until_the_next_epoch_and_one_sample_epochs():
    m = cfa_epoch0()
    m.set_epoch(1)
    m.count(ZC[:1], torch.tensor([0]))  # an epoch of one sample, right: A = [1, NaN, NaN]
    m.end_epoch()
    # until set_epoch the radius stays the one this epoch trained with, (0.3 + A_prev) * 0.1
    assert m.batch_eps(Y).tolist() == pytest.approx([0.08, 0.13, 0.19 / 3], rel=1e-6)
    assert m.epoch_info()["cfa_train_robust"] == [1.0, None, None]
    m.set_epoch(2)
    assert m.batch_eps(Y).tolist() == pytest.approx([0.13, 0.1, 0.1], rel=1e-6)
    # the authors' total form on one sample: C * correct / N = 2 * 1 / 1
    assert class_accuracy(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]), "total").tolist() == [2.0, 0.0]


def test_cfa_eps_before_any_epoch_hook_and_nothing_seen():
    m = make("at_cfa", [30, 20, 10], **{"attack.class_eps": (0.2, 0.1, 0.05)})
    assert m.batch_eps(Y).tolist() == pytest.approx([0.2, 0.05, 0.1])  # no set_epoch yet
    assert m.state_dict() == {} and m.epoch_info()["cfa_train_robust"] is None
    m.end_epoch()  # an epoch without a batch leaves no accuracy
    assert m.train_robust is None and m.state_dict() == {}


def test_cfa_state_round_trip():
    m = cfa_epoch0()
    r = make("at_cfa", [30, 20, 10], **{"attack.eps": 0.1, "method.cfa_begin": 1, "method.cfa_lambda1": 0.3})
    r.load_state_dict({"cfa_train_robust": None})  # nothing saved yet: stays uncalibrated
    r.set_epoch(1)
    assert r.batch_eps(Y).tolist() == pytest.approx([0.1, 0.1, 0.1])
    state = m.state_dict()
    r.load_state_dict(state)
    r.set_epoch(1)
    assert r.batch_eps(Y).tolist() == pytest.approx([0.08, 0.13, 0.19 / 3], rel=1e-6)
    m.count(ZC, torch.tensor([0, 1, 2]))  # all right
    m.end_epoch()
    assert state["cfa_train_robust"].tolist() == pytest.approx([0.5, 1 / 3, 1.0])  # the saved state is a copy


def test_at_cfa_loss_counts_its_adversarial_logits():
    m = make("at_cfa", [30, 20, 10], **{"attack.eps": 0.1, "method.cfa_begin": 0, "method.cfa_lambda1": 0.3})
    out = m.loss(identity_model(), ZC, ZA, Y)
    assert float(out["loss"].detach()) == approx(1.0501403303875092)  # CE(ZA) as AT
    assert torch.equal(out["logits"].detach(), ZA)
    m.end_epoch()  # ZA predicts [1, 2, 0] for Y [0, 2, 1]: only class 2 right
    m.set_epoch(0)
    assert m.batch_eps(torch.tensor([0, 1, 2])).tolist() == pytest.approx([0.03, 0.03, 0.13], rel=1e-6)


def test_trades_cfa_loss_by_hand():
    # CE(ZC) per sample [0.169846, 1.964369, 3.065884], KL(ZC || ZA) [1.020803, 1.268133, 0.824299]
    m = make("trades_cfa", [30, 20, 10], **{"method.cfa_begin": 1, "method.cfa_lambda2": 0.2,
                                            "method.beta": 4.0})
    m.set_epoch(0)
    out = m.loss(identity_model(), ZC, ZA, Y)  # uncalibrated: beta / (1 + beta) = 0.8 for every class
    assert float(out["loss"].detach()) == approx(1.176869249156677)
    assert torch.equal(out["logits"].detach(), ZA)
    m.end_epoch()  # A = [0, 0, 1] (ZA predicts [1, 2, 0])
    m.set_epoch(1)
    # r = (0.2 + A) 4 = [0.8, 0.8, 4.8]: beta_y for Y [0, 2, 1] = [0.444444, 0.827586, 0.444444]
    assert float(m.loss(identity_model(), ZC, ZA, Y)["loss"].detach()) == approx(1.3352822377212947)
    soft = torch.tensor([[0.6, 0.4, 0.0], [0.1, 0.2, 0.7], [0.3, 0.7, 0.0]])  # argmax [0, 2, 1]: same weights
    assert float(m.loss(identity_model(), ZC, ZA, soft)["loss"].detach()) == approx(1.5188709988962625)
    off = make("trades_cfa", [30, 20, 10], **{"method.cfa_begin": 1, "method.cfa_lambda2": 0.2,
                                              "method.beta": 4.0, "method.cfa_ccr": False})
    off.load_state_dict(m.state_dict())
    off.set_epoch(1)
    assert float(off.loss(identity_model(), ZC, ZA, Y)["loss"].detach()) == approx(1.176869249156677)


def test_trades_cfa_attack_is_the_kl_attack_with_calibrated_eps(spy):
    m = cfa_epoch0("trades_cfa", **{"attack.alpha": 0.03, "attack.steps": 4})
    m.set_epoch(1)
    model = identity_model()
    m.perturb(model, X, Y)
    call = spy[-1]
    assert call["loss_fn"] is trades_mod.kl_attack_loss and torch.equal(call["y"], X) and call["model"] is model
    assert call["eps"].tolist() == pytest.approx([0.08, 0.13, 0.19 / 3], rel=1e-6)
    assert call["alpha"] == 0.03 and call["steps"] == 4


# --- RobustLT's class-wise budgets (methods/robustlt.py; zhang-lilin/RobustLT) -------------------------------

def test_robustlt_budgets_by_hand():
    # n = [100, 10, 1], N = 111: r = sqrt(log(100 / n)) = [0, 1.517427, 2.145966],
    # sum n / N r = (10 * 1.517427 + 2.145966) / 111 = 0.156038; tau = 0.3 / 0.156038 = 1.922609;
    # eps_c = 0.7 * 0.1 + tau r_c 0.1 = [0.07, 0.361742, 0.482585]
    assert robustlt_eps([100, 10, 1], 0.1, 0.3) == pytest.approx([0.07, 0.36174152, 0.48258481], rel=1e-6)
    # alpha 0.5, eps 0.05: 0.025 + (0.5 / 0.156038) r 0.05
    assert robustlt_eps([100, 10, 1], 0.05, 0.5) == pytest.approx([0.025, 0.26811793, 0.36882068], rel=1e-6)
    # labels not in count order: the two largest classes keep 0.7 eps
    assert robustlt_eps([8, 2, 8, 1], 0.1, 0.3) == pytest.approx([0.07, 0.24675817, 0.07, 0.28648366], rel=1e-6)
    assert robustlt_eps([5, 5, 5], 0.1, 0.3) == [0.1, 0.1, 0.1]  # all equal: tau would divide by zero


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=2, max_size=6), st.floats(0.01, 0.9))
def test_robustlt_budgets_average_to_eps_and_grow_towards_the_tail(counts, alpha):
    eps = robustlt_eps(counts, 0.1, alpha)
    assert sum(n * e for n, e in zip(counts, eps)) / sum(counts) == pytest.approx(0.1, rel=1e-9)
    for i in range(len(counts)):
        for j in range(len(counts)):
            if counts[i] < counts[j]:
                assert eps[i] > eps[j]
            elif counts[i] == counts[j]:
                assert eps[i] == pytest.approx(eps[j])


def test_robustlt_ramp():
    # 0-based epoch t of E: min(t / (beta E), 1)
    assert robustlt_intensity(0, 10, 0.8) == 0.0
    assert robustlt_intensity(3, 10, 0.8) == pytest.approx(0.375)
    assert robustlt_intensity(2, 10, 0.5) == pytest.approx(0.4)
    assert robustlt_intensity(9, 10, 0.8) == 1.0  # 9 / 8 capped
    assert robustlt_intensity(0, 10, 0.0) == 1.0  # beta 0: the full budget from the start


def test_classwise_pgd_by_hand():
    # per-sample eps [0.05, 0.03, 0], step 0.04 * eps / 0.1 = [0.02, 0.012, 0], from x (zero start):
    # 2 steps move [0.04, 0.024, 0] (down on the label, up elsewhere), 3 steps [0.05, 0.03, 0] (the ball)
    eps = torch.tensor([0.05, 0.03, 0.0])
    out = classwise_pgd(identity_model(), X, Y, eps, 0.1, 0.04, 2, random_start="zero")
    assert torch.allclose(out, torch.tensor([[0.46, 0.34, 0.94], [0.224, 0.994, 0.576], [0.02, 0.4, 0.7]]),
                          atol=1e-6)
    out = classwise_pgd(identity_model(), X, Y, eps, 0.1, 0.04, 3, random_start="zero")
    assert torch.allclose(out, torch.tensor([[0.45, 0.35, 0.95], [0.23, 1.0, 0.57], [0.02, 0.4, 0.7]]), atol=1e-6)
    # a global eps of 0 (the ramp's first epoch): no step, x itself
    assert torch.equal(classwise_pgd(identity_model(), X, Y, eps, 0.0, 0.04, 3, random_start="uniform"), X)


def test_classwise_pgd_leaves_a_pixel_the_model_ignores():
    # the model does not read pixel 2: its gradient is 0, so sign steps leave it where it is
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    out = classwise_pgd(model, X, Y, torch.tensor([0.05, 0.03, 0.01]), 0.1, 0.04, 2, random_start="zero")
    assert torch.equal(out[:, 2], X[:, 2])
    assert not torch.equal(out[:, :2], X[:, :2])


def test_classwise_pgd_start(monkeypatch):
    seen = []
    real = robustlt_mod.random_init

    def spy_init(x, eps, random_start, clamp=True, norm="linf"):
        seen.append((eps, random_start, clamp))
        return real(x, eps, random_start, clamp, norm)

    monkeypatch.setattr(robustlt_mod, "random_init", spy_init)
    torch.manual_seed(0)
    out = classwise_pgd(identity_model(), X, Y, torch.tensor([0.05, 0.03, 0.01]), 0.1, 0.04, 1,
                        random_start="uniform", clamp_start=False)
    assert seen == [(0.1, "uniform", False)]  # drawn in the global ball, as RobustLT
    assert ((out - X).abs().amax(1) <= torch.tensor([0.05, 0.03, 0.01]) + 1e-6).all()  # each its own ball
    assert not torch.equal(out, X)
    classwise_pgd(identity_model(), X, Y, torch.tensor([0.05, 0.03, 0.01]), 0.1, 0.04, 1)
    assert seen[-1] == (0.1, "uniform", True)  # the defaults


def test_robustlt_perturb_through_the_method(monkeypatch):
    calls = []

    def spy_pgd(model, x, y, eps, eps_start, alpha, steps, random_start="uniform", clamp_start=True):
        calls.append(dict(model=model, x=x, y=y, eps=eps, eps_start=eps_start, alpha=alpha, steps=steps,
                          random_start=random_start, clamp_start=clamp_start))
        return x + 1

    monkeypatch.setattr(robustlt_mod, "classwise_pgd", spy_pgd)
    m = make("at", **{"method.robustlt": True, "method.robustlt_alpha": 0.5, "method.robustlt_beta": 0.5,
                      "train.epochs": 10, "attack.eps": 0.05, "attack.alpha": 0.02, "attack.steps": 3,
                      "attack.init": "zero", "attack.clamp_start": False})
    m.set_epoch(2)
    model = identity_model()
    assert torch.equal(m.perturb(model, X, Y), X + 1)
    c = calls[-1]
    assert c["model"] is model and torch.equal(c["x"], X) and torch.equal(c["y"], Y)
    # ramp 2 / (0.5 * 10) = 0.4 of [0.025, 0.268118, 0.368821] = [0.01, 0.107247, 0.147528], for Y = [0, 2, 1]
    assert c["eps"].tolist() == pytest.approx([0.01, 0.14752827, 0.10724717], rel=1e-5)
    assert c["eps_start"] == 0.05 and c["alpha"] == 0.02 and c["steps"] == 3
    assert c["random_start"] == "zero" and c["clamp_start"] is False
    soft = torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.0, 0.0, 1.0]])  # argmax [1, 0, 2]
    m.perturb(model, X, soft)
    assert calls[-1]["eps"].tolist() == pytest.approx([0.10724717, 0.01, 0.14752827], rel=1e-5)
    assert torch.equal(calls[-1]["y"], soft)


# --- TAET (methods/taet.py) -----------------------------------------------------------------------------------
# Z5 / Y5: 5 samples, 4 classes, class 3 absent. Per-sample CE [1.787339, 0.460773, 1.743668, 0.342350, 1.242536];
# class means L = [(1.787339 + 0.342350 + 1.242536) / 3, 1.743668, 0.460773, 0] = [1.124075, 1.743668, 0.460773, 0]
# (the absent class counts as 0 in both means); mean 0.832129.

Z5 = torch.tensor([[0.0, 1.0, 0.5, -0.5], [1.0, -0.5, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0], [2.0, 0.5, -1.0, 0.0],
                   [0.3, 0.2, 0.1, 0.0]])
Y5 = torch.tensor([0, 2, 1, 0, 0])


def test_harl_by_hand():
    # 0.2 mean L + 0.5 mean (L - mean)^2 + 0.3 sum (L / sum L)^2
    assert float(harl_loss(Z5, Y5, 0.2, 0.5, 0.3)) == approx(0.5070273415034188)
    assert float(harl_loss(Z5, Y5)) == approx(0.1676387533621186)  # 0.1 each (HARL.py)
    # soft rows 0.9 one-hot + 0.025: per-sample -sum t log p, each sample in its argmax class:
    # L = [1.174908, 1.718668, 0.598273, 0]
    soft = torch.eye(4)[Y5] * 0.9 + 0.025
    assert float(harl_loss(Z5, soft, 0.2, 0.5, 0.3)) == approx(0.4955279735698467)


def test_harl_shares_keep_the_guard_on_a_confident_batch():
    # logits (a, 0) and (0, a), a = 20 ln 2, both right: CE = log(1 + 2^-20) = c = 9.536739e-7 each, L = [c, c].
    # With alpha = beta = 0: sum_c (L_c / (2c + 1e-10))^2 = 0.5 / (1 + 1e-10 / 2c)^2 = 0.5 / (1 + 5.242880e-5)^2
    # = 0.4999476 (without HARL.py's + 1e-10 the shares would sum their squares to 0.5; with - 1e-10, 0.5000524)
    a = 20 * math.log(2)
    z = torch.tensor([[a, 0.0], [0.0, a]])
    assert float(harl_loss(z, torch.tensor([0, 1]), 0.0, 0.0, 1.0)) == pytest.approx(0.4999476, abs=2e-6)


TAET = {"method.taet_ce_epochs": 2, "method.taet_alpha": 0.2, "method.taet_beta": 0.5, "method.taet_gamma": 0.3}


def test_taet_stages():
    seen = []
    model = identity_model()
    model.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
    m = make("taet", **TAET)
    m.set_epoch(1)  # stage 1: clean CE, after the unused clean forward
    out = m.loss(model, ZC, ZA, Y)
    assert float(out["loss"].detach()) == approx(1.73336623580722)  # CE(ZC)
    assert torch.equal(out["logits"].detach(), ZC)
    assert len(seen) == 2 and torch.equal(seen[0], ZC) and torch.equal(seen[1], ZC)
    seen.clear()
    m.set_epoch(2)  # stage 2: HARL on the adversarial logits; CE(ZA) = [1.680270, 0.371539, 1.098612] is one per class
    out = m.loss(model, ZC, ZA, Y)
    # 0.2 * 1.050140 + 0.5 * mean (l - 1.050140)^2 + 0.3 * sum (l / 3.150421)^2
    assert float(out["loss"].detach()) == approx(0.4793386827582747)
    assert torch.equal(out["logits"].detach(), ZA)
    assert len(seen) == 2 and torch.equal(seen[0], ZC) and torch.equal(seen[1], ZA)


def test_taet_attack_only_from_the_second_stage(spy):
    m = make("taet", **TAET, **{"attack.eps": 0.05, "attack.alpha": 0.03, "attack.steps": 4})
    model = identity_model()
    m.set_epoch(1)
    assert m.perturb(model, X, Y) is X and spy == []
    m.set_epoch(2)
    assert torch.equal(m.perturb(model, X, Y), X + 1)
    c = spy[-1]
    assert c["model"] is model and torch.equal(c["y"], Y) and c["eps"] == 0.05 and c["steps"] == 4


def test_epoch_counts_are_summed_over_processes(tmp_path):
    """Under DDP, REAT's prediction counts and CFA's correct / seen counts are all-reduced at the epoch's end
    (a one-process gloo group: the sums are the process's own counts)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        r = make("reat", C4)
        r.loss(Headed(), None, F4, L4)  # predictions [3, 0, 0, 3]
        r.end_epoch()
        assert r.adv_counts.tolist() == [2, 0, 0, 2]
        c = make("at_cfa", [30, 20, 10])
        c.count(ZA, Y)  # ZA predicts [1, 2, 0] for Y [0, 2, 1]
        c.end_epoch()
        assert c.train_robust.tolist() == [0.0, 0.0, 1.0]
    finally:
        dist.destroy_process_group()
