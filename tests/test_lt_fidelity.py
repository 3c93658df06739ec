"""The long-tail baselines and REAT at their authors' scale and reduction, on hand-computed numbers.

Sources (read, not copied): kaidic/LDAM-DRW (losses.py, cifar_train.py), wutong16/Adversarial_Long-Tail
(methods/losses_inclass.py, configs/CIFAR10_LT/*), GuanlinLee/REAT (loss_functions.py, train.py).
Every batch below is asymmetric: unequal class counts in the batch, so that sum(w_y) != N and the
reductions mean(w l), sum(w l) / sum(w) and sum(w l) / N all give different numbers.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ltadv.cli import main
from ltadv.config import ConfigError, load_config
from ltadv.losses_lt import (
    cb_focal_sigmoid_loss,
    effective_number_weights,
    focal_loss,
    inverse_frequency_weights,
    ldam_loss,
    logit_adjusted_loss,
    sigmoid_focal_loss,
    weighted_cross_entropy,
)
from ltadv.methods import METHODS
from ltadv.methods.reat import rbl_weights, tail_classes, tail_feature_loss

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
COUNTS = [100, 25, 4]  # inverse-frequency weights: [0.01, 0.04, 0.25] * 3 / 0.3 = [0.1, 0.4, 2.5]
W_INV = [0.1, 0.4, 2.5]
# z row [ln 2, 0, 0]: softmax [1/2, 1/4, 1/4], so CE(y=0) = ln 2 and CE(y=2) = ln 4; a zero row: CE = ln 3.
Z = torch.tensor([[LN2, 0.0, 0.0], [0.0, 0.0, 0.0], [LN2, 0.0, 0.0]])
Y = torch.tensor([0, 0, 2])
L = [LN2, LN3, LN4]  # the per-sample CE
WY = [0.1, 0.1, 2.5]  # w_{y_n}: sums to 2.7, not N = 3


def _method(**over):
    cfg = load_config(overrides={"data.name": "digits-lt", **over})
    return METHODS[cfg.method.name](cfg, COUNTS)


def _identity(x):
    return x  # a "model" whose logits are its input


# --- re-weighting: F.cross_entropy(weight=w), sum(w_y l) / sum(w_y) ---------------------------------------------

def test_weighted_ce_is_sum_over_sum_of_weights():
    assert inverse_frequency_weights(COUNTS).tolist() == pytest.approx(W_INV, rel=1e-6)
    expected = (0.1 * LN2 + 0.1 * LN3 + 2.5 * LN4) / 2.7  # = 1.3409...; mean(w l) would be / 3
    got = weighted_cross_entropy(Z, Y, torch.tensor(W_INV))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.item() != pytest.approx((0.1 * LN2 + 0.1 * LN3 + 2.5 * LN4) / 3, rel=1e-3)
    assert weighted_cross_entropy(Z, Y, torch.tensor(W_INV), reduction="none").tolist() == pytest.approx(
        [w * v for w, v in zip(WY, L)], rel=1e-6)  # F.cross_entropy(reduction='none', weight=w): w_y l
    assert weighted_cross_entropy(Z, F.one_hot(Y, 3).float(), torch.tensor(W_INV)).item() == pytest.approx(
        expected, rel=1e-6)  # a one-hot soft target equals its label


def test_every_reweighted_outer_path_uses_the_weighted_mean():
    expected = (0.1 * LN2 + 0.1 * LN3 + 2.5 * LN4) / 2.7
    at_rw = _method(**{"method.name": "at_rw"})
    assert at_rw.loss(_identity, None, Z, Y)["loss"].item() == pytest.approx(expected, rel=1e-6)
    # BSL + re-weighting: CE on z + log n, the same reduction (z + log n: rows [ln 200, ln 25, ln 4], ...)
    bsl = _method(**{"method.name": "at_bsl", "method.outer_loss": "bsl", "method.reweight": "inverse"})
    zb = Z + torch.tensor(COUNTS, dtype=torch.float32).log()
    per = F.cross_entropy(zb, Y, reduction="none").tolist()
    assert bsl.loss(_identity, None, Z, Y)["loss"].item() == pytest.approx(
        sum(w * v for w, v in zip(WY, per)) / 2.7, rel=1e-6)
    # LDAM-DRW after the switch: kaidic/LDAM-DRW LDAMLoss -> F.cross_entropy(s * output, target, weight)
    drw = _method(**{"method.name": "at_ldam_drw", "train.epochs": 10})
    drw.set_epoch(8)  # floor(0.8 * 10) = 8, 0-based, as LDAM-DRW's epoch // 160 of 200
    w = effective_number_weights(COUNTS, 0.9999).tolist()
    m = [0.5 * (4 / 100) ** 0.25, 0.5 * (4 / 25) ** 0.25, 0.5]  # max_m * (n_min / n_c)^(1/4)
    zl = Z.clone()
    zl[torch.arange(3), Y] -= torch.tensor([m[0], m[0], m[2]])  # s = 1
    per = F.cross_entropy(zl, Y, reduction="none").tolist()
    wy = [w[0], w[0], w[2]]
    assert drw.loss(_identity, None, Z, Y)["loss"].item() == pytest.approx(
        sum(a * b for a, b in zip(wy, per)) / sum(wy), rel=1e-5)


def test_cb_softmax_is_the_effective_number_weighted_mean():
    # beta 0.5, counts [1, 2, 4]: (1 - b) / (1 - b^n) = [1, 2/3, 8/15]; sum 11/5 -> * 3 / (11/5)
    w = [15 / 11, 10 / 11, 8 / 11]
    assert effective_number_weights([1, 2, 4], 0.5).tolist() == pytest.approx(w, rel=1e-6)
    cb = _method(**{"method.name": "at_cb", "method.cb_beta": 0.5})
    cb.class_counts = [1, 2, 4]
    wy = [w[0], w[0], w[2]]
    assert cb.loss(_identity, None, Z, Y)["loss"].item() == pytest.approx(
        sum(a * b for a, b in zip(wy, L)) / sum(wy), rel=1e-6)


def _mixup_pair(y, lam):
    """Mixup's targets: one lambda per batch, each sample paired with its neighbour (v2.MixUp: roll 1)."""
    y_b = y.roll(1)
    return y_b, lam * F.one_hot(y, 3).float() + (1 - lam) * F.one_hot(y_b, 3).float()


@pytest.mark.parametrize("loss", [
    lambda z, t: weighted_cross_entropy(z, t, torch.tensor(W_INV)),
    lambda z, t: ldam_loss(z, t, COUNTS, s=3.0, weights=torch.tensor(W_INV)),
    lambda z, t: logit_adjusted_loss(z, t, COUNTS, weights=torch.tensor(W_INV)),
    lambda z, t: focal_loss(z, t, 2.0, weights=torch.tensor(W_INV)),
    lambda z, t: sigmoid_focal_loss(z, t, 2.0, weights=torch.tensor(W_INV)),
    lambda z, t: cb_focal_sigmoid_loss(z, t, COUNTS),
], ids=["ce_w", "ldam_w", "la_w", "focal_w", "focal_sigmoid_w", "cb_focal_sigmoid"])
def test_soft_targets_are_the_mixture_of_hard_losses(loss):
    """With one lambda and a permuted partner, every loss on Mixup targets is lam L(y_a) + (1 - lam) L(y_b),
    the usual mixup criterion (the denominators sum(w_y) of the two labelings are equal)."""
    g = torch.Generator().manual_seed(3)
    z, y = torch.randn(5, 3, generator=g), torch.tensor([0, 0, 0, 1, 2])
    y_b, t = _mixup_pair(y, 0.3)
    assert loss(z, t).item() == pytest.approx(0.3 * loss(z, y).item() + 0.7 * loss(z, y_b).item(), rel=1e-5)
    assert loss(z, F.one_hot(y, 3).float()).item() == pytest.approx(loss(z, y).item(), rel=1e-6)


# --- softmax focal as LDAM-DRW: the weight inside the focal factor, plain mean ---------------------------------

def test_softmax_focal_weighted_as_ldam_drw():
    v = [w * v for w, v in zip(WY, L)]  # F.cross_entropy(reduction='none', weight=w) = w_y l
    expected = sum((1 - math.exp(-x)) ** 2 * x for x in v) / 3  # focal_loss(...).mean()
    assert focal_loss(Z, Y, 2.0, weights=torch.tensor(W_INV)).item() == pytest.approx(expected, rel=1e-6)
    # unweighted: -(1 - p_y)^2 log p_y with p_y = [1/2, 1/3, 1/4]
    plain = ((1 / 2) ** 2 * LN2 + (2 / 3) ** 2 * LN3 + (3 / 4) ** 2 * LN4) / 3
    assert focal_loss(Z, Y, 2.0).item() == pytest.approx(plain, rel=1e-6)


# --- sigmoid focal and class-balanced sigmoid focal as RoBal ----------------------------------------------------

def _bin(z, positive, gamma=2.0):
    """One binary focal term: -(1 - p_t)^gamma log p_t, p_t = sigmoid(z) if positive else sigmoid(-z)."""
    p = 1 / (1 + math.exp(-z if positive else z))
    return -((1 - p) ** gamma) * math.log(p)


ZS = torch.tensor([[1.0, -1.0, 0.0], [0.5, 2.0, -0.5], [-2.0, 0.0, 3.0], [0.0, 1.5, 1.0]])
YS = torch.tensor([0, 1, 1, 2])


def _rows(gamma=2.0):
    return [sum(_bin(float(ZS[n, c]), c == int(YS[n]), gamma) for c in range(3)) for n in range(4)]


def test_sigmoid_focal_sums_binary_terms_and_divides_by_n():
    # RoBal FocalLoss(use_sigmoid=True): focal_loss.sum() / labels_onehot.sum(); row 0 by hand:
    # 2 * (1 - s(1))^2 (-log s(1)) + 0.25 ln 2 (the logit 0, a negative class: p_t = 1/2)
    s1 = 1 / (1 + math.exp(-1))
    assert _rows()[0] == pytest.approx(2 * (1 - s1) ** 2 * -math.log(s1) + 0.25 * LN2, rel=1e-12)
    assert sigmoid_focal_loss(ZS, YS, 2.0).item() == pytest.approx(sum(_rows()) / 4, rel=1e-6)
    assert sigmoid_focal_loss(ZS, YS, 0.0).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(ZS, F.one_hot(YS, 3).float(), reduction="sum").item() / 4, rel=1e-6)


def test_cb_focal_sigmoid_weights_each_sample_and_divides_by_n():
    # counts [1, 2, 4], beta 0.5: weights [15, 10, 8] / 11 (see the softmax test); CBLoss repeats the
    # sample's class weight over its 3 binary terms and FocalLoss divides the sum by N = 4, not sum(w_y)
    w = [15 / 11, 10 / 11, 8 / 11]
    wy = [w[0], w[1], w[1], w[2]]
    expected = sum(a * r for a, r in zip(wy, _rows())) / 4
    assert cb_focal_sigmoid_loss(ZS, YS, [1, 2, 4], beta=0.5, gamma=2.0).item() == pytest.approx(expected, rel=1e-6)
    assert sum(wy) != pytest.approx(4.0)
    m = _method(**{"method.name": "at_cb_focal_sigmoid", "method.cb_beta": 0.5})
    m.class_counts = [1, 2, 4]
    assert m.cfg.method.outer_loss == "cb_focal_sigmoid" and m.cfg.method.focal_gamma == 2.0
    assert m.loss(_identity, None, ZS, YS)["loss"].item() == pytest.approx(expected, rel=1e-6)
    # focal_sigmoid re-weighted by effective numbers is the same loss (RoBal's one weighted sigmoid path)
    rw = _method(**{"method.name": "at_focal_sigmoid", "method.reweight": "effective", "method.cb_beta": 0.5})
    rw.class_counts = [1, 2, 4]
    assert rw.loss(_identity, None, ZS, YS)["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_focal_sigmoid_preset_and_config_checks(tmp_path, capsys):
    m = _method(**{"method.name": "at_focal_sigmoid"})
    assert m.cfg.method.outer_loss == "focal_sigmoid"
    assert m.loss(_identity, None, ZS, YS)["loss"].item() == pytest.approx(sum(_rows()) / 4, rel=1e-6)
    ldam = _method(**{"method.name": "at_ldam"})
    assert (ldam.cfg.method.outer_loss, ldam.cfg.method.reweight, ldam.cfg.method.ldam_s) == ("ldam", "none", 1.0)
    with pytest.raises(ConfigError, match="cb_focal_sigmoid"):
        load_config(overrides={"method.outer_loss": "cb_focal_sigmoid", "method.reweight": "inverse"})
    with pytest.raises(ConfigError, match="focal_sigmoid"):
        load_config(overrides={"method.outer_loss": "sigmoid_focal"})
    rc = main(["train", "--data", "digits-lt", "--method", "at_cb_focal_sigmoid", "--method.reweight", "effective",
               "--out", str(tmp_path / "x")])
    assert rc == 2 and "already weights" in capsys.readouterr().err


# --- REAT's tail term at the authors' scale ---------------------------------------------------------------------

def test_reat_tail_term_on_hand_computed_numbers():
    """GuanlinLee/REAT loss_functions.py: ``nn.KLDivLoss(size_average='none')`` is the legacy argument, read
    as reduction 'mean' (a truthy size_average): the mean over all N x D elements, a scalar K_i per tail
    anchor i; then ``* idt * W`` (pair signs and weights), summed over anchors, ``TAIL.mean() / counter``.

    Counts [6, 3, 2, 1] (C = 4: tail = range(4 // 3 * 2 + 1, 4) = {3}), w = sqrt(12 / n) =
    [sqrt 2, 2, sqrt 6, sqrt 12]. N = 4, D = 3, labels [3, 0, 3, 1]: anchors 0 and 2.
    KL(p_0 || p_j) = [0, 0.846706, 0.256744, 0.239519] -> K_0 = 1.342969 / 12 = 0.111914;
    KL(p_2 || p_j) = [0.215649, 1.517065, 0, 0.378036] -> K_2 = 2.110750 / 12 = 0.175896;
    c = (-2 sqrt 12 + (sqrt 12 + sqrt 2) - 2 sqrt 12 + (sqrt 12 + 2)) / 4 = (2 + sqrt 2 - 2 sqrt 12) / 4 = -0.878497;
    TAIL = (K_0 + K_2) / 2 * c = -0.126420. (The pairwise sum ltadv computed before, 1/|T| sum_i 1/N
    sum_j s_ij W_ij KL_ij, is +1.454096: another sign and about D times the size.)
    """
    f = torch.tensor([[1.0, 0.0, 0.5], [0.0, 2.0, 0.0], [3.0, 0.5, 1.0], [0.5, 0.5, -1.0]])
    y = torch.tensor([3, 0, 3, 1])
    counts = [6, 3, 2, 1]
    assert tail_classes(counts) == [3]
    assert tail_feature_loss(f, y, counts, [3]).item() == pytest.approx(-0.12642012672559172, rel=1e-5)
    assert tail_feature_loss(f, torch.tensor([0, 0, 1, 2]), counts, [3]).item() == 0.0


def _authors_tail(f, y, counts):
    """The REAT code's procedure, re-enacted with PyTorch's own KLDivLoss(reduction='mean') per anchor."""
    kl = nn.KLDivLoss(reduction="mean")
    spc = torch.tensor(counts, dtype=torch.float32)
    w = torch.sqrt(1.0 / (spc / spc.sum()))
    tail = list(range(len(counts) // 3 * 2 + 1, len(counts)))
    total, counter = 0.0, 0
    for i in range(len(y)):
        if int(y[i]) in tail:
            sign = torch.tensor([-1.0 if y[i] == y[j] else 1.0 for j in range(len(y))])
            pair = torch.stack([w[y[i]] + w[y[j]] for j in range(len(y))])
            target = F.softmax(f[i].detach().expand(len(y), -1), dim=1)
            total = total + kl(F.log_softmax(f, dim=1), target) * sign * pair
            counter += 1
    return total.mean() / counter


@pytest.mark.filterwarnings("ignore:reduction. .mean. divides")  # the legacy mean the REAT code relies on
def test_reat_tail_term_value_and_gradient_match_the_authors_procedure():
    g = torch.Generator().manual_seed(5)
    counts = [50, 20, 9, 5, 3, 2, 1]  # C = 7: tail = range(5, 7) = {5, 6}
    assert tail_classes(counts) == [5, 6]
    y = torch.tensor([0, 5, 1, 6, 5, 2, 0, 3])
    f1 = torch.randn(8, 5, generator=g, requires_grad=True)
    f2 = f1.detach().clone().requires_grad_(True)
    ours = tail_feature_loss(f1, y, counts, [5, 6])
    theirs = _authors_tail(f2, y, counts)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    ours.backward()
    theirs.backward()
    assert torch.allclose(f1.grad, f2.grad, rtol=1e-4, atol=1e-7)
    assert f1.grad.abs().sum() > 0


def test_reat_tail_classes_follow_the_code_for_any_c():
    # range(C // 3 * 2 + 1, C): CIFAR-10 7..9, CIFAR-100 67..99, Tiny-ImageNet (200) 133..199, C = 3 none
    assert tail_classes(list(range(10, 0, -1))) == [7, 8, 9]
    assert tail_classes(list(range(100, 0, -1))) == list(range(67, 100))
    assert len(tail_classes(list(range(200, 0, -1)))) == 67
    assert tail_classes([3, 2, 1]) == []
    assert tail_classes([1, 9, 5, 7, 3]) == [0, 4]  # the rarest positions when labels are not sorted by count


def test_rbl_weights_as_the_code():
    # loss_functions.py RBL: weights = 1 / (E + 1e-5), normalised to sum C; n = [4, 2]
    e = [(1 - 0.75**4) / 0.25, (1 - 0.5**2) / 0.5]
    w = [1 / (v + 1e-5) for v in e]
    assert rbl_weights([4, 2], [4, 2]).tolist() == pytest.approx([2 * v / sum(w) for v in w], rel=1e-6)
    # a class no adversarial example was predicted as: a = 0, E = 0, weight 1e5 before normalising
    w0 = [1e5, 1 / (e[1] + 1e-5)]
    assert rbl_weights([4, 2], [0, 2]).tolist() == pytest.approx([2 * v / sum(w0) for v in w0], rel=1e-6)
