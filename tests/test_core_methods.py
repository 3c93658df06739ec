"""Training objectives on a model whose logits are its input: each method's loss against hand numbers
(batch of 3, asymmetric logits, unequal counts), the attack each method runs, re-weighting switches."""

import pytest
import torch

import ltadv.methods as methods_pkg
from conftest import identity_model
from ltadv.config import load_config
from ltadv.methods import METHODS
from ltadv.methods import trades as trades_mod
from ltadv.methods.outer import outer_loss, reweight_active

ZC = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [-1.0, 0.0, 3.0]])  # the clean input = clean logits
ZA = torch.tensor([[0.0, 1.0, 0.5], [1.0, -0.5, 2.0], [0.0, 0.0, 0.0]])  # the adversarial input = its logits
Y = torch.tensor([0, 2, 1])
COUNTS = [100, 10, 1]
KL_MEAN = 1.0377450024940411  # KL(p(ZC) || p(ZA)), batch mean (tests/test_core_losses.py)


def make(name, **over):
    cfg = load_config(overrides={"method.name": name, **over})
    return METHODS[name](cfg, COUNTS)


@pytest.fixture(autouse=True)
def _no_scalar_warning(recwarn):
    pass


def approx(x):
    return pytest.approx(x, rel=1e-5)


def test_at_loss_is_ce_on_the_adversarial_logits():
    out = make("at").loss(identity_model(), ZC, ZA, Y)
    assert float(out["loss"]) == approx(1.0501403303875092)
    assert torch.equal(out["logits"].detach(), ZA)


def test_at_bsl_uses_tau_b():
    out = make("at_bsl", **{"method.tau_b": 0.5}).loss(identity_model(), ZC, ZA, Y)
    assert float(out["loss"]) == approx(1.2672105993801586)  # CE(ZA + 0.5 log n, Y)
    assert torch.equal(out["logits"].detach(), ZA)


def test_at_bsl_reweighted_keeps_tau_b():
    # inverse weights w = 3 (1/n) / sum(1/n); sum_n w_y l_n / sum_n w_y with l = CE(ZA + 0.5 log n)
    m = make("at_bsl", **{"method.tau_b": 0.5, "method.reweight": "inverse"})
    assert float(m.loss(identity_model(), ZC, ZA, Y)["loss"]) == approx(1.5801957838735843)
    m = make("at", **{"method.reweight": "inverse"})
    assert float(m.loss(identity_model(), ZC, ZA, Y)["loss"]) == approx(0.4488314931764965)


def test_deferred_reweighting_switches_on_at_the_epoch():
    m = make("at", **{"method.reweight": "inverse", "method.drw_start": 0.5, "train.epochs": 7})
    assert [reweight_active(m.cfg, e) for e in (0, 2, 3, 6)] == [False, False, True, True]  # floor(3.5) = 3
    m.set_epoch(2)
    assert float(m.loss(identity_model(), ZC, ZA, Y)["loss"]) == approx(1.0501403303875092)
    m.set_epoch(3)
    assert float(m.loss(identity_model(), ZC, ZA, Y)["loss"]) == approx(0.4488314931764965)
    assert not reweight_active(make("at").cfg, 100)


def test_trades_loss_and_reweighted_natural_term():
    out = make("trades").loss(identity_model(), ZC, ZA, Y)
    assert float(out["loss"]) == approx(7.959836250771467)  # CE(ZC) + 6 KL(ZC || ZA)
    assert torch.equal(out["logits"].detach(), ZA)
    rw = make("trades", **{"method.reweight": "inverse"}).loss(identity_model(), ZC, ZA, Y)
    assert float(rw["loss"]) == approx(8.273907523684292)  # weighted CE(ZC) + 6 KL
    b2 = make("trades", **{"method.beta": 2.0}).loss(identity_model(), ZC, ZA, Y)
    assert float(b2["loss"]) == approx(3.8088562407953024)


def test_mart_loss_hand_number():
    out = make("mart").loss(identity_model(), ZC, ZA, Y)
    assert float(out["loss"]) == approx(5.5893118747799875)
    assert torch.equal(out["logits"].detach(), ZA)


def test_robal_scale_in_loss_and_switches():
    # defaults: cosine head with s in the loss: robal_loss(10 ZA) (margin, tau_b 1.5) + 6 KL(ZC || ZA)
    m = make("robal")
    assert m.head == "cosine"
    out = m.loss(identity_model(), ZC, ZA, Y)
    assert float(out["loss"]) == approx(10.958419370371287)
    assert torch.equal(out["logits"].detach(), ZA)
    assert float(make("robal", **{"method.trades": False}).loss(identity_model(), ZC, ZA, Y)["loss"]) == \
        approx(4.73194935540704)
    # s in the head: the loss sees the logits as they are
    assert float(make("robal", **{"method.scale_in": "head"}).loss(identity_model(), ZC, ZA, Y)["loss"]) == \
        approx(10.47116269894007)
    off = make("robal", **{"method.cosine": False, "model.head": "linear"})
    assert off.head == "linear"
    assert float(off.loss(identity_model(), ZC, ZA, Y)["loss"]) == approx(10.47116269894007)


@pytest.fixture
def pgd_spy(monkeypatch):
    calls = []

    def fake(model, x, y, eps, alpha, steps, loss_fn=None, random_start=True, clamp_start=True, norm="linf"):
        assert norm == "linf"  # the default threat model
        calls.append(dict(y=y, eps=eps, alpha=alpha, steps=steps, loss_fn=loss_fn, random_start=random_start,
                          clamp_start=clamp_start))
        return x + 1

    monkeypatch.setattr(methods_pkg, "pgd", fake)
    monkeypatch.setattr(trades_mod, "pgd", fake)
    return calls


def test_training_attacks(pgd_spy):
    x = ZC.clone()
    out = make("at", **{"attack.eps": 0.08, "attack.steps": 7}).perturb(identity_model(), x, Y)
    assert torch.equal(out, x + 1)
    c = pgd_spy[-1]
    assert c["eps"] == 0.08 and c["alpha"] == approx(0.02) and c["steps"] == 7 and c["loss_fn"] is None
    assert c["random_start"] == "normal" and c["clamp_start"] is True and torch.equal(c["y"], Y)
    make("at", **{"attack.alpha": 0.005, "attack.clamp_start": False}).perturb(identity_model(), x, Y)
    assert pgd_spy[-1]["alpha"] == 0.005 and pgd_spy[-1]["clamp_start"] is False
    make("trades", **{"attack.init": "uniform"}).perturb(identity_model(), x, Y)
    c = pgd_spy[-1]
    assert c["loss_fn"] is trades_mod.kl_attack_loss and torch.equal(c["y"], ZC)  # the clean logits as target
    assert c["random_start"] == "uniform"
    assert make("robal").cfg.attack.init == "uniform_plus"  # RoBal's training start, x + U[0, eps)


def test_kl_attack_loss_is_summed_clean_to_adv():
    # the attack maximises KL(clean || adv) summed over the batch (yaodongyu/TRADES trades.py:
    # criterion_kl = nn.KLDivLoss(size_average=False); criterion_kl(log_softmax(adv), softmax(clean)))
    assert float(trades_mod.kl_attack_loss(ZA, ZC)) == approx(3 * KL_MEAN)


def test_log_n_cached_per_device():
    m = make("at")
    a = m.log_n("cpu")
    assert a.tolist() == pytest.approx([4.605170, 2.302585, 0.0], abs=1e-5)
    assert m.log_n("cpu") is a


def test_outer_loss_unknown_name():
    m = make("at")
    object.__setattr__(m.cfg.method, "outer_loss", "nope")
    with pytest.raises(ValueError, match=r"^unknown outer loss 'nope'$"):
        outer_loss(m, ZA, Y)


def test_method_state_hooks():
    m = make("at")
    m.set_epoch(4)
    assert m.epoch == 4 and m.state_dict() == {}
    m.load_state_dict({})
    m.end_epoch()
    with pytest.raises(NotImplementedError):
        methods_pkg.Method(m.cfg, COUNTS).loss(identity_model(), ZC, ZA, Y)
