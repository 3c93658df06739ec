"""TRADES, MART, RoBal (and its switches), post-hoc logit adjustment, cost accounting, the ablation preset."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import ltadv
from ltadv.build import make_model
from ltadv.config import load_config
from ltadv.losses import (
    boosted_cross_entropy,
    class_aware_margin,
    mart_loss,
    robal_loss,
    trades_kl,
    trades_loss,
)
from ltadv.methods import METHODS
from ltadv.methods.baselines import BASELINES
from ltadv.models import posthoc
from ltadv.models.heads import CosineHead
from ltadv.sweep import expand, load_spec, run_sweep
from ltadv.train import train

COUNTS = [100, 10, 1]
FAST = {"data.name": "digits-lt", "train.epochs": 1, "train.progress": False, "attack.steps": 2,
        "eval.n": 50, "eval.val_n": 30, "eval.checkpoints": ["last"]}


def quiet(*a, **k):
    pass


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def ce(z, y):
    return -math.log(softmax(z)[y])


def kl(zc, za):
    p, q = softmax(zc), softmax(za)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


# ---- losses on hand-computed numbers -------------------------------------------------------------

def test_cosine_head_logits_by_hand():
    head = CosineHead(2, 2, s=10.0, gamma=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    f = torch.tensor([[1.0, 0.0]])
    # s * W_i . f / ((||W_i|| + gamma) ||f||): [10 * 3 / 5.5, 10 * 0 / 2.5]
    assert head(f).tolist()[0] == pytest.approx([30 / 5.5, 0.0], abs=1e-6)
    f2 = torch.tensor([[0.0, 5.0]])
    assert head(f2).tolist()[0] == pytest.approx([10 * 4 / 5.5, 10 * 2 / 2.5], rel=1e-6)


def test_class_aware_margin_by_hand():
    m = class_aware_margin(COUNTS, s=10.0, tau_m=0.3, m0=0.1)
    expected = [0.03 * math.log(100) + 0.1, 0.03 * math.log(10) + 0.1, 0.1]
    assert m.tolist() == pytest.approx(expected, rel=1e-6)
    assert m[0] > m[1] > m[2]  # head classes get the larger margin
    assert class_aware_margin(COUNTS, s=10.0, tau_m=0.0, m0=0.2).tolist() == pytest.approx([0.2] * 3)


def test_trades_kl_and_loss_by_hand():
    zc, za = [2.0, 0.0, -1.0], [0.5, 0.5, 0.0]
    got_kl = trades_kl(torch.tensor([zc]), torch.tensor([za]))
    assert float(got_kl) == pytest.approx(kl(zc, za), rel=1e-6)
    assert float(trades_kl(torch.tensor([zc]), torch.tensor([zc]))) == pytest.approx(0.0, abs=1e-7)
    got = trades_loss(torch.tensor([zc]), torch.tensor([za]), torch.tensor([1]), beta=6.0)
    assert float(got) == pytest.approx(ce(zc, 1) + 6 * kl(zc, za), rel=1e-6)


def test_mart_loss_by_hand():
    zc, za, y = [1.0, 2.0, 0.0], [0.0, 3.0, 1.0], 0
    pa, pc = softmax(za), softmax(zc)
    bce = -math.log(pa[y]) - math.log(1 + 1e-4 - max(p for k, p in enumerate(pa) if k != y))
    expected = bce + 6.0 * kl(zc, za) * (1 - pc[y])
    got = mart_loss(torch.tensor([zc]), torch.tensor([za]), torch.tensor([y]), beta=6.0)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # when the true class is the top one, the boosted term uses the runner-up
    bce1 = -math.log(pa[1]) - math.log(1 + 1e-4 - pa[2])
    assert float(boosted_cross_entropy(torch.tensor([za]), torch.tensor([1]))) == pytest.approx(bce1, rel=1e-6)


def test_robal_loss_by_hand():
    za, zc, y = [2.0, 1.0, 0.0], [1.0, 1.5, -0.5], 0
    s, tau_m, m0, tau_b, beta = 10.0, 0.3, 0.1, 1.5, 6.0
    m_y = tau_m / s * math.log(100 / 1) + m0
    z = [za[0] - s * m_y, za[1], za[2]]
    z = [v + tau_b * math.log(n) for v, n in zip(z, COUNTS)]
    expected = ce(z, y) + beta * kl(zc, za)
    got = robal_loss(torch.tensor([za]), torch.tensor([y]), COUNTS, logits_clean=torch.tensor([zc]),
                     tau_b=tau_b, s=s, tau_m=tau_m, m0=m0, beta=beta)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    off = robal_loss(torch.tensor([za]), torch.tensor([y]), COUNTS, bsl=False, margin=False)
    assert float(off) == pytest.approx(ce(za, y), rel=1e-6)


@pytest.mark.parametrize("fn", [
    lambda zc, za, t: trades_loss(zc, za, t),
    lambda zc, za, t: mart_loss(zc, za, t),
    lambda zc, za, t: robal_loss(za, t, [50, 20, 9, 3], logits_clean=zc),
])
def test_soft_one_hot_equals_hard(fn):
    zc, za = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 3, 0, 2])
    assert torch.allclose(fn(zc, za, y), fn(zc, za, F.one_hot(y, 4).float()), atol=1e-6)
    soft = 0.7 * F.one_hot(y, 4).float() + 0.3 * F.one_hot(y.flip(0), 4).float()
    assert torch.isfinite(fn(zc, za, soft))


# ---- methods -------------------------------------------------------------------------------------

def _method_and_model(name, **overrides):
    cfg = load_config(overrides={"data.name": "digits-lt", "method.name": name, "attack.steps": 3, **overrides})
    method = METHODS[name](cfg, [80, 40, 20, 12, 8, 6, 5, 4, 3, 2])
    meta = {"num_classes": 10, "in_channels": 1, "image_size": 8, "head": method.head,
            "mean": [0.5], "std": [0.25]}
    torch.manual_seed(0)
    return cfg, method, make_model(cfg, meta)


def test_robal_all_off_is_at_on_the_same_batch():
    off = {"method.bsl": False, "method.cosine": False, "method.margin": False, "method.trades": False}
    _, robal, model = _method_and_model("robal", **off)
    _, at, _ = _method_and_model("at")
    assert robal.head == "linear"
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    model.eval()
    x_adv = at.perturb(model, x, y)
    m1, m2 = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    l_robal, l_at = robal.loss(m1, x, x_adv, y)["loss"], at.loss(m2, x, x_adv, y)["loss"]
    assert torch.equal(l_robal, l_at)
    l_robal.backward()
    l_at.backward()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1.grad, p2.grad)


def test_robal_bsl_only_is_at_bsl():
    sw = {"method.cosine": False, "method.margin": False, "method.trades": False, "method.tau_b": 1.0}
    _, robal, model = _method_and_model("robal", **sw)
    _, at_bsl, _ = _method_and_model("at_bsl")
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    x_adv = (x + 0.05).clamp(0, 1)
    model.train()
    assert torch.equal(robal.loss(model, x, x_adv, y)["loss"], at_bsl.loss(model, x, x_adv, y)["loss"])


def test_robal_defaults_and_head():
    cfg, method, model = _method_and_model("robal")
    m = cfg.method
    assert (m.tau_b, m.s, m.m0, m.tau_m, m.beta) == (1.5, 10.0, 0.1, 0.3, 6.0)  # RoBal's CIFAR-10-LT config
    assert cfg.attack.init == "uniform_plus"
    # RoBal's code (configs/CIFAR10_LT/cifar10_LT0.02_pgdat_robal_R_train.yaml): CosPlus ``scale: 1``, s in the loss
    assert m.scale_in == "loss"
    assert isinstance(model.head, CosineHead) and model.head.s == 1.0
    _, _, head_model = _method_and_model("robal", **{"method.scale_in": "head"})
    assert head_model.head.s == 10.0
    assert load_config(overrides={"method.name": "at_bsl"}).method.tau_b == 1.0
    assert load_config(overrides={"method.name": "robal", "method.tau_b": 1.2}).method.tau_b == 1.2


def test_robal_all_on_composes_the_parts():
    cfg, method, model = _method_and_model("robal")
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    x_adv = (x - 0.05).clamp(0, 1)
    model.train()
    out = method.loss(model, x, x_adv, y)
    za, zc = model(x_adv), model(x)  # cosines: the head has scale 1 (scale_in loss)
    assert za.abs().max() <= 1 + 1e-6
    # RoBal's MultiMarginLoss: CE(s * (cos - m_y) + tau_b log prior); its add_reg_train: KL on the cosines
    counts = torch.tensor(method.class_counts, dtype=torch.float32)
    margins = 0.3 / 10 * (counts / counts.min()).log() + 0.1
    onehot = torch.nn.functional.one_hot(y, 10).float()
    ce = torch.nn.functional.cross_entropy(10 * (za - margins * onehot) + 1.5 * (counts / counts.sum()).log(), y)
    p_c, p_a = zc.softmax(1), za.softmax(1)
    kl = (p_c * (p_c.log() - p_a.log())).sum(1).mean()
    assert torch.allclose(out["loss"], ce + 6.0 * kl, atol=1e-5)


@pytest.mark.parametrize("name", ["trades", "robal", "mart"])
def test_perturbation_stays_in_the_eps_ball(name):
    cfg, method, model = _method_and_model(name)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    model.eval()
    x_adv = method.perturb(model, x, y)
    assert (x_adv - x).abs().max() <= cfg.attack.eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)


def test_trades_attack_increases_the_kl():
    cfg, method, model = _method_and_model("trades", **{"attack.steps": 5})
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    model.eval()
    x_adv = method.perturb(model, x, y)
    with torch.no_grad():
        zc = model(x)
        start = trades_kl(zc, model((x + 0.001 * torch.randn_like(x)).clamp(0, 1)))
        after = trades_kl(zc, model(x_adv))
    assert after > 10 * start


# ---- end to end ------------------------------------------------------------------------------------

# model forward calls per batch in the training phase: attack steps (+1 clean pass for TRADES's
# attack) + the loss's passes; RoBal must run two in its loss (RoBal's code runs three).
FORWARDS = {"at": 2 + 1, "at_bsl": 2 + 1, "trades": 1 + 2 + 2, "mart": 2 + 2, "robal": 2 + 2}
FORWARDS.update({name: 2 + 1 for name in (*BASELINES, "reat")})  # AT-shaped: the long-tail baselines and REAT
FORWARDS["taet"] = 2  # its first 40 epochs: no attack, the clean batch twice (TAET.ipynb's unused forward)
FORWARDS.update({"at_cfa": 2 + 1, "trades_cfa": 1 + 2 + 2})  # CFA on AT and on TRADES


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_one_epoch(name, tmp_path):
    rec = train(load_config(overrides={**FAST, "method.name": name}), tmp_path / name, log=quiet)
    assert rec["status"] == "complete"
    e = rec["epochs"][0]
    assert math.isfinite(e["train_loss"])
    for k in ("train_seconds", "eval_seconds", "peak_mem_mb", "eval_peak_mem_mb"):
        assert isinstance(e[k], float) and e[k] > 0, k
    assert e["forward_passes"] == FORWARDS[name] * e["batches"]
    assert 0 <= rec["metrics"]["pgd20"]["overall"] <= rec["metrics"]["clean"]["overall"] <= 1
    assert json.loads((tmp_path / name / "result.json").read_text())["config"]["method"]["name"] == name


def test_tau_p_adjusts_the_saved_model(tmp_path):
    cfg = load_config(overrides={**FAST, "method.name": "robal", "method.tau_p": 0.5, "attack.steps": 1})
    rec = train(cfg, tmp_path / "n", log=quiet)
    adjusted = ltadv.load_model(tmp_path / "n", "last")
    plain = adjusted.model
    x = torch.rand(4, 1, 8, 8)
    counts = torch.tensor(rec["class_counts"], dtype=torch.float32)
    # RoBal's PostProc classifier (models/classifiers/basic_classifiers.py): s * cos - tau_p * log prior
    with torch.no_grad():
        cos = plain(x)
        diff = adjusted(x) - 10.0 * cos
    assert cos.abs().max() <= 1 + 1e-6  # the trained head outputs cosines (scale_in loss)
    expected = -0.5 * (counts / counts.sum()).log()
    assert torch.allclose(diff, expected.expand_as(diff), atol=1e-5)
    assert diff[0, -1] > diff[0, 0]  # tail classes are favoured at inference
    assert posthoc(plain, rec["class_counts"], 0.0) is plain  # the default leaves a model alone


# ---- the ablation preset ------------------------------------------------------------------------------

def test_ablation_preset_cells():
    spec = load_spec("robal_ablation")
    cells = dict(expand(spec))
    assert list(cells) == ["at", "at_bsl", "plus_cosine", "plus_margin", "robal"]
    assert spec["relative_to"] == "at_bsl"
    cfgs = {n: load_config(overrides=ov) for n, ov in cells.items()}
    assert [c.method.name for c in cfgs.values()] == ["at", "at_bsl", "robal", "robal", "robal"]
    switches = [(c.method.bsl, c.method.cosine, c.method.margin, c.method.trades) for c in list(cfgs.values())[2:]]
    assert switches == [(True, True, False, False), (True, True, True, False), (True, True, True, True)]
    assert {c.data.name for c in cfgs.values()} == {"digits-lt"}
    assert len({c.attack for c in cfgs.values()}) == 1  # one training attack for every row
    assert cfgs["robal"].method.tau_b == 1.5 and cfgs["at_bsl"].method.tau_b == 1.0


@pytest.mark.slow
def test_ablation_sweep_runs(tmp_path):
    lines = []
    fast = {"train.epochs": 1, "attack.steps": 1, "eval.n": 50, "eval.val_n": 20, "eval.checkpoints": ["last"]}
    records = run_sweep("robal_ablation", tmp_path, overrides=fast, log=lines.append)
    assert list(records) == ["at", "at_bsl", "plus_cosine", "plus_margin", "robal"]
    table = next(ln for ln in lines if ln.startswith("| run"))
    assert "time x at_bsl" in table and "mem x at_bsl" in table
    rows = {cells[0]: cells for cells in ([c.strip() for c in r.strip("|").split("|")] for r in table.splitlines()[2:])}
    assert set(rows) == set(records)
    assert rows["at_bsl"][-2:] == ["1.00", "1.00"]
    assert all(float(cells[-2]) > 0 and float(cells[-1]) > 0 for cells in rows.values())
    assert records["robal"]["epochs"][0]["forward_passes"] == 3 * records["robal"]["epochs"][0]["batches"]
