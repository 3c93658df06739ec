"""losses_lt on hand-computed numbers: asymmetric logits, a batch of 3, unequal class counts.

The expected values were computed by hand in float64 (log-sum-exp written out, math.exp / math.log only,
no torch); the arithmetic sits beside each literal. The class weights W are chosen so that the batch's
w_{y_n} = [0.5, 2.0, 1.0] sum to 3.5, not N = 3: mean(w l), sum(w l) / sum(w) and sum(w l) / N all differ.
Authors' constants are literals with the file they come from.
"""

import math

import numpy as np
import pytest
import torch

from ltadv.losses_lt import (
    cb_focal_sigmoid_loss,
    cdt_loss,
    cdt_temperatures,
    class_weights,
    effective_number_weights,
    focal_loss,
    inverse_frequency_weights,
    ldam_loss,
    ldam_margins,
    logit_adjusted_loss,
    sigmoid_focal_loss,
    weighted_cross_entropy,
)

Z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [-1.0, 0.0, 3.0]])
Y = torch.tensor([0, 2, 1])
COUNTS = [100, 10, 1]
W = [0.5, 1.0, 2.0]  # per-class weights; w_{y_n} = [0.5, 2.0, 1.0]
# CE_n = lse(z_n) - z_{n,y}: lse row 0 = ln(e^2 + 1 + e^-1) = 2.16985, row 1 = ln(e^.5 + e^1.5 + 1) = 1.96437,
# row 2 = ln(e^-1 + 1 + e^3) = 3.06588
CE = [0.16984601955628564, 1.964368784107945, 3.0658839037574293]
# the CB weights of COUNTS at beta = 0.9999 (kaidic/LDAM-DRW cifar_train.py and RoBal's outer-CB config):
# E_n = (1 - 0.9999^n) / (1 - 0.9999) = [99.50661, 9.99550, 1.0]; 1 / E normalised to sum to 3
W_CB = [0.027158721622260334, 0.2703688739931705, 2.7024724043845696]
W_INV = [0.027027027027027025, 0.2702702702702703, 2.7027027027027026]  # 3 * [.01, .1, 1] / 1.11


def approx(x, rel=1e-5):
    return pytest.approx(x, rel=rel, abs=1e-6)


def _np_weights():
    return torch.from_numpy(np.array(W))  # float64, as numpy hands them over


# --- softmax focal: LDAM-DRW's FocalLoss ----------------------------------------------------------------------

def test_focal_default_gamma_two_and_its_reductions():
    # p_y = e^{-CE} = [0.843795, 0.140244, 0.046613]; (1 - p_y)^2 * CE:
    # 0.156205^2 * 0.169846 = 0.0041443, 0.859756^2 * 1.964369 = 1.4520216, 0.953387^2 * 3.065884 = 2.7867275
    per = [0.004144257309967156, 1.452021569144432, 2.7867274833287223]
    assert focal_loss(Z, Y).item() == approx(sum(per) / 3)  # 1.4142978
    assert focal_loss(Z, Y, reduction="sum").item() == approx(sum(per))  # 4.2428933
    assert focal_loss(Z, Y, reduction="none").tolist() == approx(per)


def test_focal_gamma_one_with_float64_weights_as_ldam_drw():
    # kaidic/LDAM-DRW cifar_train.py: FocalLoss(weight=per_cls_weights, gamma=1); losses.py puts w inside:
    # v = w_y CE = [0.5 * 0.169846, 2 * 1.964369, 1 * 3.065884] = [0.084923, 3.928738, 3.065884]
    # (1 - e^{-v}) v = [0.0069142, 3.8514652, 2.9229750], mean 2.2604515 (an odd gamma: the factor's sign shows)
    got = focal_loss(Z, Y, gamma=1.0, weights=_np_weights())
    assert got.item() == approx(2.2604514784190797)
    assert got.dtype == torch.float32  # numpy's float64 weights do not turn the loss into float64


# --- sigmoid focal (RoBal's FocalLoss(use_sigmoid=True)) and CB focal (RoBal's CBLoss) -------------------------

# per sample sum_c of the binary focal terms, gamma = 2: -(1 - s(z))^2 log s(z) for c = y, -s(z)^2 log(1 - s(z))
# otherwise; row 0: 0.0018036 (z=2, pos) + 0.1732868 (z=0) + 0.0226581 (z=-1) = 0.1977484
SF2 = [0.19774841548369404, 1.687970711618573, 2.9622252936737192]


def test_sigmoid_focal_default_gamma_two_per_sample_and_mean_over_n():
    assert sigmoid_focal_loss(Z, Y).item() == approx(sum(SF2) / 3)  # 1.6159815
    assert sigmoid_focal_loss(Z, Y, reduction="none").tolist() == approx(SF2)
    assert sigmoid_focal_loss(Z, Y, reduction="sum").item() == approx(sum(SF2))


def test_sigmoid_focal_with_float64_weights():
    # each sample's C terms times w_{y_n} = [0.5, 2, 1], divided by N = 3 (not by 3.5):
    # (0.5 * 0.197748 + 2 * 1.687971 + 2.962225) / 3 = 2.1456803
    got = sigmoid_focal_loss(Z, Y, weights=_np_weights())
    assert got.item() == approx(2.1456803082175706)
    assert got.dtype == torch.float32


def test_cb_focal_sigmoid_defaults_are_robals():
    # wutong16/Adversarial_Long-Tail configs/CIFAR10_LT/cifar10_LT0.02_pgdat_outer_CB.yaml: beta 0.9999, gamma 2.0
    # per sample W_CB[y_n] * SF2_n = [0.027159 * 0.197748, 2.702472 * 1.687971, 0.270369 * 2.962225]
    per = [0.005370594167364721, 4.561694267558578, 0.8008935171646523]
    assert cb_focal_sigmoid_loss(Z, Y, COUNTS).item() == approx(sum(per) / 3)  # 1.7893195
    assert cb_focal_sigmoid_loss(Z, Y, COUNTS, reduction="none").tolist() == approx(per)
    # gamma = 1: row 0 terms 0.0151302 + 0.3465736 + 0.0842490 = 0.4459528; weighted mean 2.4160495
    assert cb_focal_sigmoid_loss(Z, Y, COUNTS, gamma=1.0).item() == approx(2.416049524009139)


# --- re-weighting ---------------------------------------------------------------------------------------------

def test_effective_number_weights_default_and_limits():
    assert effective_number_weights(COUNTS).tolist() == approx(W_CB)
    assert class_weights("effective", COUNTS).tolist() == approx(W_CB)  # beta defaults to 0.9999 there too
    assert effective_number_weights(COUNTS, beta=0.0).tolist() == approx([1.0, 1.0, 1.0])  # E_n = 1 for all
    # beta -> 1: E_n -> n, i.e. inverse frequency; 1 - 1e-9 is below 1 in float64 but rounds to 1 in float32
    assert effective_number_weights(COUNTS, beta=1 - 1e-9).tolist() == approx(W_INV)
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"beta must be in \[0, 1\), got"):
            effective_number_weights(COUNTS, beta=bad)


def test_class_weights_dispatch():
    assert class_weights("none", COUNTS) is None  # the "none" kind means no weights, not an error
    assert class_weights("inverse", COUNTS).tolist() == approx(W_INV)
    assert class_weights("effective", COUNTS, beta=0.0).tolist() == approx([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="unknown re-weighting 'cb'; choose none, inverse or effective"):
        class_weights("cb", COUNTS)


def test_weighted_cross_entropy_accepts_float64_weights():
    # hard labels: (0.5 * 0.169846 + 2 * 1.964369 + 1 * 3.065884) / 3.5 = 2.0227270 (F.cross_entropy itself
    # refuses a float64 weight next to float32 logits)
    assert weighted_cross_entropy(Z, Y, _np_weights()).item() == approx(2.022726994786132)
    # soft rows: sum_nc t w_c CE_nc / sum_nc t w_c; CE_nc = lse(z_n) - z_nc; sum t w = 3.65
    t = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.25, 0.75], [0.5, 0.0, 0.5]])
    got = weighted_cross_entropy(Z, t, _np_weights())
    assert got.item() == approx(4.855400164597276 / 3.65)  # 1.3302466
    assert got.dtype == torch.float32


# --- margins, adjustments and temperatures ----------------------------------------------------------------------

def test_ldam_default_margin_and_reductions():
    # kaidic/LDAM-DRW losses.py LDAMLoss(max_m=0.5): m_c = 0.5 * (n_min / n_c)^(1/4)
    # = [0.5 / 100^.25, 0.5 / 10^.25, 0.5]
    assert ldam_margins(COUNTS).tolist() == approx([0.15811388300841897, 0.28117066259517454, 0.5])
    # s = 1: row 1 (y = 2): z = [0.5, 1.5, -0.5], lse = 1.907606, CE = 2.407606
    per = [0.19625218376448839, 2.40760596444438, 3.3355640247065157]
    assert ldam_loss(Z, Y, COUNTS, reduction="none").tolist() == approx(per)
    assert ldam_loss(Z, Y, COUNTS, reduction="sum").item() == approx(sum(per))


def test_ldam_when_the_batch_lacks_the_last_class():
    # labels [1, 0, 1]: no class 2 in the batch, the margins still have C = 3 columns
    # row 0: z = [2, -0.281171, -1], CE = 2.4226282; row 1: z = [0.341886, 1.5, 0], CE = 1.5880818; row 2 as above
    assert ldam_loss(Z, torch.tensor([1, 0, 1]), COUNTS).item() == approx(2.44875800565439)


def test_logit_adjusted_default_tau_weights_and_reductions():
    # Menon et al. tau = 1: z + log(n / 111); row 0: [2 + ln(100/111), ln(10/111), -1 + ln(1/111)]
    per = [0.013933870180043773, 5.350383196876458, 1.9002173985485737]
    assert logit_adjusted_loss(Z, Y, COUNTS).item() == approx(sum(per) / 3)  # 2.4215115
    assert logit_adjusted_loss(Z, Y, COUNTS, reduction="none").tolist() == approx(per)
    # (0.5 * 0.013934 + 2 * 5.350383 + 1 * 1.900217) / 3.5 = 3.6022716
    assert logit_adjusted_loss(Z, Y, COUNTS, weights=torch.tensor(W)).item() == approx(3.6022716363975746)


def test_cdt_default_gamma_weights_and_reductions():
    # RoBal configs/CIFAR10_LT/cifar10_LT0.02_pgdat_outer_CDT.yaml: tau 0.3; a_c = (100 / n_c)^0.3 = [1, 10^.3, 100^.3]
    assert cdt_temperatures(COUNTS).tolist() == approx([1.0, 1.9952623149688795, 3.9810717055349722])
    # row 0: z / a = [2, 0, -0.251189], CE = 0.2156026
    per = [0.21560263003081914, 1.5622403677747079, 1.2506012067823473]
    assert cdt_loss(Z, Y, COUNTS).item() == approx(sum(per) / 3)  # 1.0094814
    assert cdt_loss(Z, Y, COUNTS, reduction="none").tolist() == approx(per)
    # (0.5 * 0.215603 + 2 * 1.562240 + 1 * 1.250601) / 3.5 = 1.2808238
    assert cdt_loss(Z, Y, COUNTS, weights=torch.tensor(W)).item() == approx(1.2808237878134778)


def test_float64_counts_keep_everything_float32():
    counts = np.array([100.0, 10.0, 1.0])  # e.g. an expected count per class, in numpy's float64
    assert inverse_frequency_weights(counts).tolist() == approx(W_INV)
    assert inverse_frequency_weights(counts).dtype == torch.float32
    assert ldam_margins(counts).dtype == torch.float32
    got = logit_adjusted_loss(Z, Y, counts)
    assert got.item() == approx(2.421511488535025)
    assert got.dtype == torch.float32


# --- devices: counts and weights follow the logits ------------------------------------------------------------
# The meta device stands in for CUDA on a CPU-only machine: it runs every op for shapes and devices, and an op
# mixing a meta and a CPU tensor raises ("Tensor on device cpu is not on the expected device meta"), as a CUDA op
# with a CPU operand would. Counts come as a list and weights on the CPU, the logits on the other device.

def _on(device):
    z = torch.zeros(3, 3, device=device)
    y = torch.tensor([0, 2, 1], device=device)
    t = torch.full((3, 3), 1 / 3, device=device)
    w = torch.tensor(W)  # CPU
    return z, y, t, w


CALLS = {
    "inverse_frequency_weights": lambda d, z, y, t, w: inverse_frequency_weights(COUNTS, device=d),
    "effective_number_weights": lambda d, z, y, t, w: effective_number_weights(COUNTS, device=d),
    "class_weights_inverse": lambda d, z, y, t, w: class_weights("inverse", COUNTS, device=d),
    "class_weights_effective": lambda d, z, y, t, w: class_weights("effective", COUNTS, device=d),
    "ldam_margins": lambda d, z, y, t, w: ldam_margins(COUNTS, device=d),
    "cdt_temperatures": lambda d, z, y, t, w: cdt_temperatures(COUNTS, device=d),
    "weighted_ce_hard": lambda d, z, y, t, w: weighted_cross_entropy(z, y, w),
    "weighted_ce_soft": lambda d, z, y, t, w: weighted_cross_entropy(z, t, w),
    "focal": lambda d, z, y, t, w: focal_loss(z, y, weights=w),
    "sigmoid_focal": lambda d, z, y, t, w: sigmoid_focal_loss(z, y, weights=w),
    "cb_focal_sigmoid": lambda d, z, y, t, w: cb_focal_sigmoid_loss(z, y, COUNTS),
    "ldam": lambda d, z, y, t, w: ldam_loss(z, y, COUNTS),
    "ldam_soft": lambda d, z, y, t, w: ldam_loss(z, t, COUNTS, weights=w),
    "logit_adjusted": lambda d, z, y, t, w: logit_adjusted_loss(z, y, COUNTS),
    "cdt": lambda d, z, y, t, w: cdt_loss(z, y, COUNTS),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_counts_and_weights_follow_the_logits_device(name):
    out = CALLS[name]("meta", *_on("meta"))  # raises on a device mix
    assert out.device.type == "meta"


def test_device_calls_give_the_cpu_values():
    # the same calls on the CPU at zero logits: a uniform softmax, so every CE is ln 3 (guards the table above
    # against calls that would pass on meta by computing nothing)
    z, y, t, w = _on("cpu")
    ln3 = math.log(3)
    assert CALLS["weighted_ce_hard"]("cpu", z, y, t, w).item() == approx(ln3)
    assert CALLS["weighted_ce_soft"]("cpu", z, y, t, w).item() == approx(ln3)
    assert CALLS["focal"]("cpu", z, y, t, w).item() == approx(  # v = w_y ln 3, (1 - 3^-w_y)^2 w_y ln 3
        sum((1 - 3.0 ** -wy) ** 2 * wy * ln3 for wy in (0.5, 2.0, 1.0)) / 3)
    assert CALLS["ldam_margins"]("cpu", z, y, t, w).tolist() == approx([0.15811388300841897, 0.28117066259517454, 0.5])
