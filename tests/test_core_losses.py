"""Losses on hand-computed numbers: asymmetric logits, a batch of 3, unequal class counts.

The expected values were computed by hand (float64, log-sum-exp written out) for the logits below;
every test fails if a sign, a reduction, a default or a direction changes.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from ltadv.losses import (
    MART_BOOST_EPS,
    balanced_softmax_loss,
    boosted_cross_entropy,
    class_aware_margin,
    cross_entropy,
    log_counts,
    mart_loss,
    robal_loss,
    trades_kl,
    trades_loss,
)

ZC = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [-1.0, 0.0, 3.0]])  # "clean" logits, batch of 3
ZA = torch.tensor([[0.0, 1.0, 0.5], [1.0, -0.5, 2.0], [0.0, 0.0, 0.0]])  # "adversarial" logits
Y = torch.tensor([0, 2, 1])
COUNTS = [100, 10, 1]

KL_PER_SAMPLE = [1.0208028214624345, 1.2681329710250115, 0.8242992149946776]  # KL(p(ZC) || p(ZA)) per row
KL_MEAN = 1.0377450024940411
KL_REVERSE_MEAN = 1.1235388737865832  # KL(p(ZA) || p(ZC)): the wrong direction
CE_PER_SAMPLE = [0.16984601955628567, 1.964368784107945, 3.0658839037574293]  # CE(ZC, Y)
CE_MEAN = 1.73336623580722


def approx(x, rel=1e-5):
    return pytest.approx(x, rel=rel, abs=1e-6)


def test_log_counts_values_and_rejects_zero():
    assert log_counts([1, 2, 8]).tolist() == approx([0.0, math.log(2), math.log(8)])
    assert log_counts([3]).dtype == torch.float32
    with pytest.raises(ValueError, match="every class count must be >= 1"):
        log_counts([5, 0, 2])
    with pytest.raises(ValueError, match="every class count must be >= 1"):
        log_counts([5, -1])
    log_counts([1, 1])  # 1 is allowed


def test_cross_entropy_hard_reductions():
    assert float(cross_entropy(ZC, Y)) == approx(CE_MEAN)
    assert float(cross_entropy(ZC, Y, reduction="sum")) == approx(sum(CE_PER_SAMPLE))
    assert cross_entropy(ZC, Y, reduction="none").tolist() == approx(CE_PER_SAMPLE)


def test_cross_entropy_soft_reductions():
    t = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.25, 0.75]])
    per = [0.7698460195562856, 1.589368784107945]  # -sum_c t_c log p_c, by hand
    assert cross_entropy(ZC[:2], t, reduction="none").tolist() == approx(per)
    assert float(cross_entropy(ZC[:2], t)) == approx(sum(per) / 2)
    assert float(cross_entropy(ZC[:2], t, reduction="sum")) == approx(sum(per))


@pytest.mark.parametrize("tau_b,per", [
    (0.5, [0.046669327372662626, 3.4550400914353627, 2.1418224331655553]),
    (1.5, [0.0043201193284114585, 7.490777681102714, 2.585395053326668]),
])
def test_bsl_hand_numbers(tau_b, per):
    assert balanced_softmax_loss(ZC, Y, COUNTS, tau_b, reduction="none").tolist() == approx(per)
    assert float(balanced_softmax_loss(ZC, Y, COUNTS, tau_b)) == approx(sum(per) / 3)
    assert float(balanced_softmax_loss(ZC, Y, COUNTS, tau_b, reduction="sum")) == approx(sum(per))


def test_bsl_default_tau_is_one():
    # tau_b = 1 on row 0 of ZC with y = 0: -log(100 e^2 / (100 e^2 + 10 + e^-1))
    expected = -math.log(100 * math.e ** 2 / (100 * math.e ** 2 + 10 + math.e ** -1))
    assert float(balanced_softmax_loss(ZC[:1], Y[:1], COUNTS)) == approx(expected)


def test_trades_kl_asymmetric_batch_of_three():
    assert trades_kl(ZC, ZA, reduction="none").tolist() == approx(KL_PER_SAMPLE)
    assert float(trades_kl(ZC, ZA)) == approx(KL_MEAN)  # batchmean: divided by 3, not summed
    assert float(trades_kl(ZC, ZA, reduction="sum")) == approx(sum(KL_PER_SAMPLE))
    # direction: KL(clean || adv), as TRADES' KLDivLoss(log_softmax(adv), softmax(clean))
    # (yaodongyu/TRADES trades.py: criterion_kl(F.log_softmax(model(x_adv)), F.softmax(model(x_natural))))
    assert float(trades_kl(ZA, ZC)) == approx(KL_REVERSE_MEAN)
    assert abs(KL_MEAN - KL_REVERSE_MEAN) > 0.05


def test_trades_loss_hand_number():
    assert float(trades_loss(ZC, ZA, Y)) == approx(CE_MEAN + 6.0 * KL_MEAN)  # beta = 6 (TRADES default)
    assert float(trades_loss(ZC, ZA, Y, beta=2.0)) == approx(3.8088562407953024)


def test_boosted_cross_entropy_hand_number():
    # -log p_y(ZA) - log(1 + 1e-4 - max_{k != y} p_k(ZA)), rows where y is not / is / ties the argmax
    per = [2.386259751435327, 0.6640543411120199, 1.5039274080251492]
    assert MART_BOOST_EPS == 1e-4  # YisenWang/MART mart.py: torch.log(1.0001 - adv_probs[..])
    assert boosted_cross_entropy(ZA, Y, reduction="none").tolist() == approx(per)
    assert float(boosted_cross_entropy(ZA, Y)) == approx(sum(per) / 3)


def test_boosted_cross_entropy_soft_target_is_mixture():
    t = torch.tensor([[0.25, 0.0, 0.75], [0.0, 1.0, 0.0]])
    a = boosted_cross_entropy(ZA[:2], torch.tensor([0, 1]), reduction="none")
    b = boosted_cross_entropy(ZA[:2], torch.tensor([2, 1]), reduction="none")
    got = boosted_cross_entropy(ZA[:2], t, reduction="none")
    assert got.tolist() == approx([0.25 * float(a[0]) + 0.75 * float(b[0]), float(a[1])])


def test_mart_loss_hand_number():
    # BCE(ZA, Y) + beta * mean( KL_n * (1 - p_y(ZC_n)) )
    assert float(mart_loss(ZC, ZA, Y)) == approx(5.5893118747799875)
    assert float(mart_loss(ZC, ZA, Y, beta=1.0)) == approx(2.196619062622358)


def test_class_aware_margin_hand_numbers():
    # (tau_m / s) log(n_i / n_min) + m0 with s = 10, tau_m = 0.3, m0 = 0.1: head gets the largest margin
    m = class_aware_margin(COUNTS)
    assert m.tolist() == approx([0.23815510557964276, 0.1690775527898214, 0.1])
    m2 = class_aware_margin([4, 16, 2], s=2.0, tau_m=1.0, m0=0.5)
    assert m2.tolist() == approx([0.5 + 0.5 * math.log(2), 0.5 + 0.5 * math.log(8), 0.5])


@pytest.mark.parametrize("margin,bsl,plain,with_kl", [
    (False, False, 1.0501403303875092, 7.276610345351756),
    (False, True, 3.162480929756708, 9.388950944720955),
    (True, False, 2.3825299052159536, 8.6089999201802),
    (True, True, 4.244692683975823, 10.47116269894007),
])
def test_robal_loss_each_switch(margin, bsl, plain, with_kl):
    # CE(ZA - s m onehot + tau_b log n, Y) [+ 6 KL(ZC || ZA)], s = 10, tau_m = 0.3, m0 = 0.1, tau_b = 1.5
    assert float(robal_loss(ZA, Y, COUNTS, margin=margin, bsl=bsl)) == approx(plain)
    assert float(robal_loss(ZA, Y, COUNTS, logits_clean=ZC, margin=margin, bsl=bsl)) == approx(with_kl)


def test_robal_loss_defaults_are_the_papers():
    # defaults: margin and BSL on, tau_b 1.5, s 10, tau_m 0.3, m0 0.1, beta 6 (RoBal, Wu et al. 2021)
    assert float(robal_loss(ZA, Y, COUNTS, logits_clean=ZC)) == approx(10.47116269894007)


def test_robal_loss_soft_one_hot_equals_hard():
    oh = F.one_hot(Y, 3).float()
    assert float(robal_loss(ZA, oh, COUNTS, logits_clean=ZC)) == approx(10.47116269894007)


def test_log_counts_message_and_float32_from_float64():
    with pytest.raises(ValueError, match=r"^every class count must be >= 1$"):
        log_counts([3, 0])
    import numpy as np

    assert log_counts(np.array([1.0, 4.0])).dtype == torch.float32  # float64 counts still give float32


def test_boosted_cross_entropy_two_classes():
    # C = 2: max_{k != y} p_k is the other class's probability
    z = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    y = torch.tensor([1, 1])
    p1 = [1 / (1 + math.e ** 2), 1 / (1 + math.e ** -2)]
    expected = [-math.log(p1[0]) - math.log(1 + 1e-4 - (1 - p1[0])),
                -math.log(p1[1]) - math.log(1 + 1e-4 - (1 - p1[1]))]
    assert boosted_cross_entropy(z, y, reduction="none").tolist() == approx(expected)


def test_boosted_cross_entropy_when_last_class_never_wins():
    # argmax is class 0 or 1 in every row, never the last class 3
    z = torch.tensor([[3.0, 0.0, 0.0, -1.0], [0.0, 2.0, 1.0, 0.0]])
    p = torch.softmax(z.double(), 1)
    expected = [float(-p[0, 3].log() - (1 + 1e-4 - p[0, 0]).log()), float(-p[1, 1].log() - (1 + 1e-4 - p[1, 2]).log())]
    assert boosted_cross_entropy(z, torch.tensor([3, 1]), reduction="none").tolist() == approx(expected)


# --- devices: the count-based biases and margins follow the logits' device ---------------------------------
# The meta device stands in for CUDA on a CPU-only machine: an op mixing a meta and a CPU tensor raises, as a
# CUDA op with a CPU operand would. Counts come as a Python list (they are built on the CPU).

def test_log_counts_and_margins_land_on_the_requested_device():
    assert log_counts([5, 3, 1], device="meta").device.type == "meta"
    assert class_aware_margin([5, 3, 1], device="meta").device.type == "meta"
    # on the CPU the same calls give the numbers: log 5, log 3, 0; m_i = (0.3 / 10) log(n_i / 1) + 0.1
    assert log_counts([5, 3, 1]).tolist() == pytest.approx([math.log(5), math.log(3), 0.0])
    assert class_aware_margin([5, 3, 1]).tolist() == pytest.approx(
        [0.03 * math.log(5) + 0.1, 0.03 * math.log(3) + 0.1, 0.1])


@pytest.mark.parametrize("margin,bsl", [(True, True), (True, False), (False, True)])
def test_count_terms_follow_the_logits_device(margin, bsl):
    z = torch.zeros(3, 3, device="meta")
    y = torch.tensor([0, 2, 1], device="meta")
    assert balanced_softmax_loss(z, y, [5, 3, 1]).device.type == "meta"  # raises on a device mix
    assert robal_loss(z, y, [5, 3, 1], logits_clean=z, margin=margin, bsl=bsl).device.type == "meta"


def test_trades_kl_rejects_an_unknown_reduction():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="reduction"):
        trades_kl(z, z.flip(1), reduction="mean")
