import pytest
import torch

from conftest import clean_digits_model
from ltadv.attacks import ATTACKS, pgd, project_linf
from ltadv.evaluate import predict


@pytest.fixture(scope="module")
def trained_digits():
    """A small CNN trained cleanly on digits-lt for a few epochs (seconds on CPU)."""
    model, d = clean_digits_model(40)
    return model, d.x_test.float() / 255, d.y_test


def test_projection():
    x = torch.rand(4, 3, 5, 5)
    far = x + torch.randn_like(x)
    p = project_linf(far, x, 0.1)
    assert (p - x).abs().max() <= 0.1 + 1e-6
    assert p.min() >= 0 and p.max() <= 1


@pytest.mark.parametrize("start", [True, "normal", False])
def test_pgd_stays_in_ball_and_box(trained_digits, start):
    model, x, y = trained_digits
    eps = 0.1
    x_adv = pgd(model, x[:64], y[:64], eps=eps, alpha=eps / 4, steps=5, random_start=start)
    assert (x_adv - x[:64]).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - {"aa", "aa_apgd", "aa_torchattacks"}))  # AA: test_eval_*.py
def test_registered_attacks_stay_in_ball(trained_digits, name):
    model, x, y = trained_digits
    x_adv = ATTACKS[name](model, x[:32], y[:32], 0.1)
    assert x_adv.shape == x[:32].shape
    assert (x_adv - x[:32]).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_lowers_accuracy(trained_digits):
    model, x, y = trained_digits
    clean = (predict(model, x) == y).float().mean()
    x_adv = pgd(model, x, y, eps=0.1, alpha=0.025, steps=20)
    robust = (predict(model, x_adv) == y).float().mean()
    assert clean > 0.6
    assert robust < clean - 0.2


def test_pgd_leaves_parameters_trainable_and_grad_free(trained_digits):
    model, x, y = trained_digits
    for p in model.parameters():
        p.grad = None
    pgd(model, x[:8], y[:8], eps=0.1, alpha=0.025, steps=2)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_pgd_rejects_negative_eps(trained_digits):
    model, x, y = trained_digits
    with pytest.raises(ValueError, match="eps must be >= 0"):
        pgd(model, x[:2], y[:2], eps=-0.1, alpha=0.01, steps=1)
