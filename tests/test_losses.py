import math

import pytest
import torch
import torch.nn.functional as F

from ltadv.losses import balanced_softmax_loss, cross_entropy


def test_bsl_equals_hand_computed():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    counts = [100, 10, 1]
    # -log( n_y e^{z_y} / sum_i n_i e^{z_i} ) for y = 1, tau_b = 1
    num = 10 * math.exp(0.0)
    den = 100 * math.exp(1.0) + 10 * math.exp(0.0) + 1 * math.exp(-1.0)
    expected = -math.log(num / den)
    got = balanced_softmax_loss(logits, torch.tensor([1]), counts, tau_b=1.0)
    assert float(got) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("tau_b", [0.0, 0.5, 1.0, 1.5])
def test_bsl_is_ce_on_shifted_logits(tau_b):
    torch.manual_seed(0)
    logits = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    counts = [50, 30, 10, 5, 2]
    shifted = logits + tau_b * torch.log(torch.tensor(counts, dtype=torch.float))
    assert torch.allclose(balanced_softmax_loss(logits, y, counts, tau_b), F.cross_entropy(shifted, y), atol=1e-6)


def test_bsl_tau_zero_is_ce():
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    assert torch.allclose(balanced_softmax_loss(logits, y, [9, 3, 1], 0.0), F.cross_entropy(logits, y))


def test_soft_targets_equal_hard_when_one_hot():
    logits = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    onehot = F.one_hot(y, 4).float()
    counts = [40, 20, 5, 1]
    assert torch.allclose(cross_entropy(logits, onehot), cross_entropy(logits, y), atol=1e-6)
    assert torch.allclose(balanced_softmax_loss(logits, onehot, counts, 1.3),
                          balanced_softmax_loss(logits, y, counts, 1.3), atol=1e-6)
