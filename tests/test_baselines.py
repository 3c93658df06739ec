"""Long-tail baselines: losses on hand-computed numbers, the re-sampler, REAT, MIM, post-hoc, CLI names."""

import hashlib
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ltadv
from ltadv.attacks import ATTACKS, pgd
from ltadv.attacks.mim import mim
from ltadv.cli import main
from ltadv.config import ConfigError, load_config
from ltadv.data.sampler import balanced_order, epoch_order, uniform_order
from ltadv.losses import balanced_softmax_loss, cross_entropy
from ltadv.losses_lt import (
    cdt_loss,
    cdt_temperatures,
    effective_number_weights,
    focal_loss,
    inverse_frequency_weights,
    ldam_loss,
    ldam_margins,
    logit_adjusted_loss,
    weighted_cross_entropy,
)
from ltadv.methods import METHODS
from ltadv.methods.baselines import BASELINES
from ltadv.methods.reat import rbl_weights, tail_feature_loss
from ltadv.report import group_runs

COUNTS = [100, 25, 4]
TINY = ["--data", "digits-lt", "--epochs", "1", "--attack.steps", "1", "--eval.n", "40", "--eval.val_n", "30",
        "--train.progress", "false"]


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 0, 2, 1])


# --- losses equal their formulas on hand-computed numbers -------------------------------------------------

def test_focal_gamma_zero_is_ce_and_matches_formula():
    z, y = _batch()
    assert torch.allclose(focal_loss(z, y, gamma=0.0), F.cross_entropy(z, y))
    z1 = torch.tensor([[1.0, 2.0, 0.0]])
    p1 = math.exp(2) / (math.exp(1) + math.exp(2) + 1)
    assert focal_loss(z1, torch.tensor([1]), gamma=2.0).item() == pytest.approx(-(1 - p1) ** 2 * math.log(p1), rel=1e-6)


def test_ldam_margins_for_known_counts_and_loss():
    m = ldam_margins([10000, 16, 1], max_m=0.5)
    assert m.tolist() == pytest.approx([0.05, 0.25, 0.5], rel=1e-6)  # 0.5 * n^(-1/4): 1/10, 1/2, 1
    z, y = _batch()
    mm = ldam_margins(COUNTS, 0.5)
    expected = F.cross_entropy(2.0 * (z - mm * F.one_hot(y, 3)), y)
    assert torch.allclose(ldam_loss(z, y, COUNTS, max_m=0.5, s=2.0), expected)


def test_class_balanced_and_inverse_weights_for_known_counts():
    beta = 0.9
    e = [(1 - beta**100) / (1 - beta), (1 - beta**10) / (1 - beta)]
    w = [1 / e[0], 1 / e[1]]
    w = [2 * v / sum(w) for v in w]
    assert effective_number_weights([100, 10], beta).tolist() == pytest.approx(w, rel=1e-6)
    assert effective_number_weights([100, 10], 0.0).tolist() == pytest.approx([1.0, 1.0])
    assert inverse_frequency_weights([100, 10]).tolist() == pytest.approx([2 / 11, 20 / 11], rel=1e-6)
    z, y = _batch()
    y = torch.tensor([0, 0, 0, 1, 2, 2])  # unequal classes in the batch: sum(w_y) != N
    wt = effective_number_weights(COUNTS, 0.99)
    per = F.cross_entropy(z, y, reduction="none")
    # F.cross_entropy(weight=w) as in LDAM-DRW / RoBal: sum(w_y l) / sum(w_y), not mean(w_y l)
    assert torch.allclose(weighted_cross_entropy(z, y, wt), (per * wt[y]).sum() / wt[y].sum())
    assert not torch.allclose(weighted_cross_entropy(z, y, wt), (per * wt[y]).mean())


def test_logit_adjustment_equals_bsl():
    z, y = _batch()
    assert torch.allclose(logit_adjusted_loss(z, y, COUNTS, tau=1.0), balanced_softmax_loss(z, y, COUNTS, 1.0))
    assert torch.allclose(logit_adjusted_loss(z, y, COUNTS, tau=0.5), balanced_softmax_loss(z, y, COUNTS, 0.5))


def test_cdt_on_known_numbers():
    assert cdt_temperatures([100, 25], gamma=0.5).tolist() == pytest.approx([1.0, 2.0])
    z = torch.tensor([[2.0, 2.0]])
    expected = math.log(math.exp(2) + math.exp(1)) - 1  # CE([2/1, 2/2], y=1)
    assert cdt_loss(z, torch.tensor([1]), [100, 25], gamma=0.5).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("fn", [
    lambda z, t: focal_loss(z, t, 2.0, weights=inverse_frequency_weights(COUNTS)),
    lambda z, t: ldam_loss(z, t, COUNTS, s=5.0),
    lambda z, t: logit_adjusted_loss(z, t, COUNTS),
    lambda z, t: cdt_loss(z, t, COUNTS),
    lambda z, t: weighted_cross_entropy(z, t, effective_number_weights(COUNTS)),
], ids=["focal_rw", "ldam", "la", "cdt", "cb"])
def test_soft_one_hot_equals_hard(fn):
    z, y = _batch()
    assert torch.allclose(fn(z, y), fn(z, F.one_hot(y, 3).float()))


# --- the outer-loss switch ------------------------------------------------------------------------------

def _method(**over):
    cfg = load_config(overrides={"data.name": "digits-lt", **over})
    return METHODS[cfg.method.name](cfg, COUNTS)


def test_outer_loss_defaults_unchanged_and_drw_schedule():
    z, y = _batch()
    model = lambda x: x  # noqa: E731  (the "model" returns its input as logits)
    assert torch.equal(_method(**{"method.name": "at"}).loss(model, None, z, y)["loss"], cross_entropy(z, y))
    assert torch.equal(_method(**{"method.name": "at_bsl"}).loss(model, None, z, y)["loss"],
                       balanced_softmax_loss(z, y, COUNTS, 1.0))
    focal = _method(**{"method.name": "at_focal"})
    assert focal.cfg.method.outer_loss == "focal"
    assert torch.allclose(focal.loss(model, None, z, y)["loss"], focal_loss(z, y, 2.0))
    drw = _method(**{"method.name": "at_ldam_drw", "train.epochs": 10})
    drw.set_epoch(7)
    assert torch.allclose(drw.loss(model, None, z, y)["loss"], ldam_loss(z, y, COUNTS))
    drw.set_epoch(8)
    w = effective_number_weights(COUNTS, 0.9999)
    assert torch.allclose(drw.loss(model, None, z, y)["loss"], ldam_loss(z, y, COUNTS, weights=w))


def test_bad_baseline_config_is_a_config_error():
    with pytest.raises(ConfigError, match="outer_loss"):
        load_config(overrides={"method.name": "mart", "method.outer_loss": "focal"})
    with pytest.raises(ConfigError, match="data.sampler"):
        load_config(overrides={"data.sampler": "oversample"})
    with pytest.raises(ConfigError, match="reweight"):
        load_config(overrides={"method.outer_loss": "cb", "method.reweight": "inverse"})


# --- the re-sampler ---------------------------------------------------------------------------------------

def test_balanced_sampler_proportions_and_determinism():
    labels = torch.tensor([0] * 500 + [1] * 50 + [2] * 5)
    draws = torch.cat([balanced_order(labels, seed=3, epoch=e) for e in range(20)])  # 11,100 draws
    share = torch.bincount(labels[draws], minlength=3).float() / len(draws)
    assert share.tolist() == pytest.approx([1 / 3] * 3, abs=0.02)
    assert torch.equal(balanced_order(labels, 3, 5), balanced_order(labels, 3, 5))
    assert not torch.equal(balanced_order(labels, 3, 5), balanced_order(labels, 3, 6))
    # within a class every image is drawn about equally often
    tail = torch.bincount(draws[labels[draws] == 2], minlength=555)[550:]
    assert tail.min() > 0.8 * tail.float().mean()


def test_uniform_and_deferred_orders():
    labels = torch.tensor([0] * 50 + [1] * 5)
    expected = torch.randperm(55, generator=torch.Generator().manual_seed(2 * 100_003 + 4))
    assert torch.equal(uniform_order(55, 2, 4), expected)  # the loop's original order, bit for bit
    assert torch.equal(epoch_order("balanced", labels, 2, 4, epochs=10, resample_start=0.8), expected)
    assert torch.equal(epoch_order("balanced", labels, 2, 8, epochs=10, resample_start=0.8),
                       balanced_order(labels, 2, 8))


# --- REAT -------------------------------------------------------------------------------------------------

def test_reat_rbl_weights_and_tail_term():
    # n = [4, 2], a = [4, 2]: beta = [0.75, 0.5], E = [(1 - 0.75^4) / 0.25, (1 - 0.5^2) / 0.5];
    # GuanlinLee/REAT loss_functions.py RBL: w = 1 / (E + 1e-5), normalised to sum C
    e = [(1 - 0.75**4) / 0.25, 1.5]
    w = [1 / (e[0] + 1e-5), 1 / (e[1] + 1e-5)]
    assert rbl_weights([4, 2], [4, 2]).tolist() == pytest.approx([2 * v / sum(w) for v in w], rel=1e-6)
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    counts = [3, 1]
    pw = [math.sqrt(4 / 3), 2.0]  # sqrt(1 / prior)
    p = F.softmax(f, 1)
    total = 0.0
    anchors = [i for i in range(4) if y[i] == 1]
    n, d = f.shape
    for i in anchors:
        # KLDivLoss(size_average='none') = mean over the N x D elements: a scalar, then the pair weights
        k = sum(float((p[i] * (p[i].log() - p[j].log())).sum()) for j in range(4)) / (n * d)
        c = sum((-1 if y[i] == y[j] else 1) * (pw[y[i]] + pw[y[j]]) for j in range(4)) / n
        total += k * c
    assert tail_feature_loss(f, y, counts, [1]).item() == pytest.approx(total / len(anchors), rel=1e-5)
    assert tail_feature_loss(f, torch.tensor([0, 0, 0, 0]), counts, [1]).item() == 0.0


def test_reat_attack_equals_pgd_and_counts_roll():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    m = _method(**{"method.name": "reat"})
    m.adv_counts = torch.tensor([50.0, 3.0, 1.0], dtype=torch.float64)
    torch.manual_seed(1)
    a = m.perturb(model, x, y)
    torch.manual_seed(1)
    b = pgd(model, x, y, eps=m.eps, alpha=m.alpha, steps=m.cfg.attack.steps, random_start="uniform")
    assert torch.allclose(a, b)  # positive per-sample weights leave every sign step unchanged
    m._next = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    m.end_epoch()
    assert m.state_dict()["adv_counts"].tolist() == [1.0, 2.0, 3.0]


# --- MIM ---------------------------------------------------------------------------------------------------

def test_mim_stays_in_eps_ball_and_hurts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    eps = 0.1
    x_adv = ATTACKS["mim"](model, x, y, eps)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    assert torch.equal(mim(model, x, y, eps=0.0, alpha=0.1, steps=3), x)


# --- every name trains from the CLI; post-hoc steps -------------------------------------------------------

@pytest.mark.parametrize("name", [*BASELINES, "reat"])
def test_every_baseline_trains_one_epoch_from_the_cli(name, tmp_path, capsys):
    out = tmp_path / name
    assert main(["train", "--method", name, *TINY, "--out", str(out)]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["status"] == "complete" and rec["config"]["method"]["name"] == name
    assert len(rec["epochs"]) == 1 and math.isfinite(rec["epochs"][0]["train_loss"])


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_posthoc_tau_norm_and_lws_write_new_loadable_runs(tmp_path, capsys):
    src = tmp_path / "at"
    assert main(["train", "--method", "at", *TINY, "--out", str(src)]) == 0
    before = _digest(src)
    assert main(["posthoc", str(src), "--tau-norm", "1", "--out", str(tmp_path / "tn"), "--n", "40"]) == 0
    model = ltadv.load_model(tmp_path / "tn", "last")
    norms = model.head.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # tau = 1: unit rows
    orig = ltadv.load_model(src, "last")
    g = 1 / orig.head.weight.norm(dim=1)
    assert torch.allclose(model.head.bias, orig.head.bias * g, atol=1e-6)
    assert main(["posthoc", str(src), "--lws", "--lws-epochs", "1", "--out", str(tmp_path / "lws"), "--n", "40"]) == 0
    rec = json.loads((tmp_path / "lws" / "result.json").read_text())
    assert rec["posthoc"]["kind"] == "lws" and rec["status"] == "complete"
    assert len(rec["posthoc"]["scales"]["last"]) == 10
    lws = ltadv.load_model(tmp_path / "lws", "last")
    x = torch.rand(3, 1, 8, 8)
    g = torch.tensor(rec["posthoc"]["scales"]["last"])
    assert not torch.allclose(g, torch.ones(10))  # one LWS epoch moved the scales off 1
    with torch.no_grad():  # the saved model is the source's logits times the learned per-class scales
        assert torch.allclose(lws(x), orig(x) * g, atol=1e-5)
    assert _digest(src) == before  # the source run is untouched
    runs = [(d, json.loads((d / "result.json").read_text())) for d in (src, tmp_path / "tn", tmp_path / "lws")]
    assert len(group_runs(runs)) == 3  # the report keeps post-hoc variants apart from their source
    assert main(["posthoc", str(src), "--tau-norm", "1", "--out", str(tmp_path / "tn")]) == 2  # exists: refused
