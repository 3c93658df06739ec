"""The threat model by hand: per-sample eps, the L2 projection, step and start (torchattacks PGDL2, v3.5.1),
budget checks, the eps-0 shortcut, MIM's momentum, and the evaluation entries' norm. Tiny crafted models:
``Flat`` (logits = the input) with a scripted loss, and a linear model whose gradient is a row of W."""

import pytest
import torch
import torch.nn as nn

import ltadv.attacks as atk
from ltadv.attacks import (
    ATTACKS,
    AttackSettings,
    ascent_direction,
    check_budget,
    per_sample,
    pgd,
    project,
    project_l2,
    project_linf,
    random_init,
)
from ltadv.attacks import mim as mim_mod


class Flat(nn.Module):
    """Logits = the input itself (no parameters): the loss alone decides the gradient."""

    def forward(self, x):
        return x


class Boom(nn.Module):
    def forward(self, x):
        raise AssertionError("with eps 0 the attack must return x without evaluating the model")


def scripted(*grads):
    """A loss whose input gradient at call t is grads[t] (sum(z * g_t) on Flat logits)."""
    calls = []

    def loss(z, y):
        g = grads[min(len(calls), len(grads) - 1)]
        calls.append(z.detach().clone())
        return (z * g).sum()

    loss.calls = calls
    return loss


# rows of norm 5, 3 and 1; the loss -z_y has input gradient -W[y] (the same at every x)
W = [[3.0, -4.0, 0.0, 0.0], [1.0, 2.0, -2.0, 0.0], [0.0, 0.0, 0.6, 0.8]]


def linear_img():
    lin = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W))
    return nn.Sequential(nn.Flatten(), lin)


def minus_true_logit(z, y):
    return -z.gather(1, y[:, None]).sum()


def l2(d):
    return d.flatten(1).norm(dim=1)


def rows(t):
    return [r.flatten().tolist() for r in t]


# ---- per-sample eps ---------------------------------------------------------------------------------------

def test_per_sample_eps_broadcasts_over_the_batch_axis_only():
    x = torch.full((2, 2, 3), 0.5)  # shape[1] = 2 = batch, shape[2] = 3: a wrong axis would broadcast silently
    eps = torch.tensor([0.1, 0.3], dtype=torch.float64)
    out = project_linf(x + 1.0, x, eps)  # every pixel pushed up: 0.5 + eps_i per sample
    assert out.tolist() == [[[pytest.approx(0.6)] * 3] * 2, [[pytest.approx(0.8)] * 3] * 2]
    assert out.dtype == torch.float32  # a float64 eps does not turn a float32 image into float64
    down = project_linf(x - 1.0, x, eps)
    assert rows(down) == [[pytest.approx(0.4)] * 6, [pytest.approx(0.2)] * 6]


def test_per_sample_eps_zero_dim_tensor_is_a_float_and_wrong_shapes_are_refused():
    x = torch.full((2, 4), 0.5)
    e = per_sample(torch.tensor(0.25), x)
    assert isinstance(e, float) and e == 0.25
    assert project_linf(x + 1.0, x, torch.tensor(0.25)).tolist() == [[0.75] * 4] * 2
    v = per_sample(torch.tensor([0.1, 0.2]), x)  # x.shape[1] = 4 != 2: only the batch size is checked
    assert (x + v).tolist() == [[pytest.approx(0.6)] * 4, [pytest.approx(0.7)] * 4]
    with pytest.raises(ValueError, match=r"^a per-sample eps must have shape \[2\], got \[3\]$"):
        per_sample(torch.tensor([0.1, 0.2, 0.3]), x)
    with pytest.raises(ValueError, match=r"^a per-sample eps must have shape \[2\], got \[2, 1\]$"):
        per_sample(torch.tensor([[0.1], [0.2]]), x)


def test_per_sample_eps_moves_to_the_image_device():
    x = torch.zeros(2, 3, device="meta")  # CPU eps and a meta image cannot be mixed unless eps is moved
    assert per_sample(torch.tensor([0.1, 0.2]), x).device.type == "meta"
    start = random_init(x, torch.tensor([0.1, 0.2]), "uniform", norm="l2")
    assert start.device.type == "meta" and start.shape == (2, 3)


# ---- projection -------------------------------------------------------------------------------------------

def test_project_l2_hand_numbers_inside_outside_and_box():
    x = torch.tensor([[0.98, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], [0.6, 0.3, 0.5, 0.5]]).view(3, 1, 2, 2)
    delta = torch.tensor([[0.03, -0.04, 0, 0], [0.3, 0, 0, -0.4], [0.6, -0.8, 0, 0]]).view(3, 1, 2, 2)
    out = project_l2(x + delta, x, torch.tensor([0.2, 0.2, 0.5]))
    assert out.shape == (3, 1, 2, 2)
    assert rows(out) == [
        # ||d|| = 0.05 <= 0.2: kept; 0.98 + 0.03 = 1.01 clamps to 1
        pytest.approx([1.0, 0.46, 0.5, 0.5]),
        # ||d|| = 0.5 > 0.2: scaled by 0.4 to (0.12, 0, 0, -0.16)
        pytest.approx([0.62, 0.5, 0.5, 0.34]),
        # ||d|| = 1 > 0.5: scaled by 0.5 to (0.3, -0.4); 0.3 - 0.4 = -0.1 clamps to 0
        pytest.approx([0.9, 0.0, 0.5, 0.5]),
    ]
    same = project(x + delta, x, 0.2, "l2")  # a float radius: sample 3 scaled by 0.2 to (0.12, -0.16)
    assert rows(same)[2] == pytest.approx([0.72, 0.14, 0.5, 0.5])
    assert rows(same)[1] == pytest.approx([0.62, 0.5, 0.5, 0.34])


def test_project_l2_zero_radius_returns_x_for_any_delta():
    x = torch.zeros(4, 2, dtype=torch.float64)
    x_adv = torch.tensor([[0.0, 0.0], [1e-12, 0.0], [0.0, 1e-6], [0.3, 0.4]], dtype=torch.float64)
    out = project_l2(x_adv, x, torch.zeros(4))  # 1e-12 is the division guard: 0 / (1e-12 + 1e-12) = 0
    assert out.tolist() == [[0.0, 0.0]] * 4


def test_project_default_is_linf_and_names_are_checked():
    x, xa = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.7, 0.3]])
    assert project(xa, x, 0.1).tolist() == [pytest.approx([0.6, 0.4])]  # clipped per pixel
    # L2: delta (0.2, -0.2) has norm 0.2828, scaled to 0.1: 0.5 +- 0.1 / sqrt(2) = 0.5 +- 0.070711
    assert project(xa, x, 0.1, "l2").tolist() == [pytest.approx([0.570711, 0.429289], abs=1e-6)]
    with pytest.raises(ValueError, match=r"^unknown norm 'l1'; use linf or l2$"):
        project(xa, x, 0.1, "l1")


# ---- ascent direction ---------------------------------------------------------------------------------------

def test_l2_ascent_direction_hand_numbers():
    g = torch.tensor([[3.0, -4.0], [0.0, 0.5], [3e-10, 4e-10], [0.0, 0.0]]).view(4, 1, 2)
    d = ascent_direction(g, "l2")
    assert d.shape == (4, 1, 2)
    # g / (||g|| + 1e-10) per sample (torchattacks PGDL2 eps_for_division): 5, 0.5, 5e-10 + 1e-10 = 6e-10, 0
    assert rows(d) == [pytest.approx([0.6, -0.8]), pytest.approx([0.0, 1.0]),
                       pytest.approx([0.5, 2 / 3], rel=1e-5), [0.0, 0.0]]
    assert ascent_direction(g).tolist() == torch.sign(g).tolist()  # the default is L-inf
    assert rows(ascent_direction(g, "linf"))[0] == [1.0, -1.0]
    with pytest.raises(ValueError, match=r"^unknown norm 'L2'; use linf or l2$"):
        ascent_direction(g, "L2")


# ---- budget checks and the eps-0 shortcut ---------------------------------------------------------------------

def test_check_budget_per_sample_tensor():
    check_budget(torch.tensor([0.0, 0.1, 0.9]), 1)  # zeros are allowed (a class without budget)
    with pytest.raises(ValueError, match=r"^every per-sample eps must be finite and >= 0, got \[0.5, nan\]$"):
        check_budget(torch.tensor([0.5, float("nan")]), 1)
    with pytest.raises(ValueError, match=r"^every per-sample eps must be finite and >= 0, got \[inf, 0.5\]$"):
        check_budget(torch.tensor([float("inf"), 0.5]), 1)
    with pytest.raises(ValueError, match=r"^every per-sample eps must be finite and >= 0, got \[0.5, -0.25\]$"):
        check_budget(torch.tensor([0.5, -0.25]), 3)
    with pytest.raises(ValueError, match=r"^steps must be >= 1, got 0$"):
        check_budget(torch.tensor([0.5, 0.25]), 0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("eps", [0.0, torch.zeros(3)], ids=["float", "tensor"])
def test_eps_zero_returns_x_without_evaluating_the_model(eps, norm):
    x = torch.tensor([[0.2, 0.9], [0.5, 0.1], [1.0, 0.0]])
    y = torch.tensor([0, 1, 0])
    assert pgd(Boom(), x, y, eps=eps, alpha=0.1, steps=3, norm=norm).tolist() == x.tolist()
    out = mim_mod.mim(Boom(), x, y, eps=eps, alpha=0.1, steps=3, random_start="uniform", norm=norm)
    assert out.tolist() == x.tolist()


def test_eps_one_is_a_budget_like_any_other():
    x = torch.full((1, 2), 0.5)
    out = pgd(Flat(), x, torch.tensor([0]), eps=1.0, alpha=0.2, steps=1, loss_fn=scripted(torch.tensor([[1.0, -1.0]])),
              random_start=False)
    assert out.tolist() == [pytest.approx([0.7, 0.3])]


# ---- PGD: per-class eps, per-sample step, L2 steps by hand -------------------------------------------------------

CLASS_EPS = torch.tensor([0.0, 0.05, 0.1])  # class 0 has no budget
Y4 = torch.tensor([2, 0, 1, 2])
X4 = torch.tensor([[0.5, 0.5, 0.5, 0.5]] * 3 + [[0.5, 0.5, 0.5, 0.05]]).view(4, 1, 2, 2)


def test_pgd_linf_per_class_eps_goes_to_the_right_samples():
    # eps = class_eps[y] = (0.1, 0, 0.05, 0.1); 3 steps of 0.04 = 0.12 capped at eps, along sign(-W[y])
    out = pgd(linear_img(), X4, Y4, eps=CLASS_EPS[Y4], alpha=0.04, steps=3, loss_fn=minus_true_logit,
              random_start=False)
    assert rows(out) == [
        pytest.approx([0.5, 0.5, 0.4, 0.4]),  # -W[2] = (0, 0, -0.6, -0.8)
        [0.5, 0.5, 0.5, 0.5],  # class 0: eps 0
        pytest.approx([0.45, 0.45, 0.55, 0.5]),  # -W[1] = (-1, -2, 2, 0)
        pytest.approx([0.5, 0.5, 0.4, 0.0]),  # 0.05 - 0.1 clamps at 0
    ]


def test_pgd_l2_per_class_eps_goes_to_the_right_samples():
    out = pgd(linear_img(), X4, Y4, eps=CLASS_EPS[Y4], alpha=0.04, steps=3, loss_fn=minus_true_logit,
              random_start=False, norm="l2")
    assert rows(out) == [
        pytest.approx([0.5, 0.5, 0.44, 0.42]),  # 0.12 along (0, 0, -0.6, -0.8) capped at 0.1
        [0.5, 0.5, 0.5, 0.5],
        # 0.05 along (-1, -2, 2, 0) / 3
        pytest.approx([0.5 - 0.05 / 3, 0.5 - 0.1 / 3, 0.5 + 0.1 / 3, 0.5]),
        # pixel 4 clamps at 0 after steps 2 and 3; step 3: x_adv (0.452, 0) + 0.04 u = (0.428, -0.032),
        # delta (-0.072, -0.082) of norm 0.109124 scaled to 0.1: 0.5 - 0.065980 = 0.434020, then the clamp
        pytest.approx([0.5, 0.5, 0.434020, 0.0], abs=1e-6),
    ]


def test_pgd_default_start_keeps_a_zero_budget_class_at_x():
    x = torch.full((4, 3000), 0.5)
    out = pgd(Flat(), x, Y4, eps=CLASS_EPS[Y4], alpha=0.01, steps=1, loss_fn=lambda z, y: 0 * z.sum())
    d = (out - x).abs().amax(1)
    assert d[1] == 0  # eps 0: the uniform start adds nothing
    assert d.tolist() == [pytest.approx(0.1, abs=0.001), 0.0, pytest.approx(0.05, abs=0.001),
                          pytest.approx(0.1, abs=0.001)]


def test_pgd_per_sample_step():
    x = torch.full((3, 2), 0.5)
    loss = scripted(torch.tensor([[1.0, -2.0], [-1.0, 1.0], [3.0, 1.0]]))
    out = pgd(Flat(), x, Y4[:3], eps=0.1, alpha=torch.tensor([0.01, 0.02, 0.03]), steps=2, loss_fn=loss,
              random_start=False)
    assert out.tolist() == [pytest.approx([0.52, 0.48]), pytest.approx([0.46, 0.54]), pytest.approx([0.56, 0.56])]


def test_pgd_l2_steps_by_hand_with_clamp_and_projection():
    x = torch.tensor([[0.5, 0.95, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.05]]).view(3, 1, 2, 2)
    y = torch.tensor([0, 1, 2])
    one = pgd(linear_img(), x, y, eps=0.25, alpha=0.15, steps=1, loss_fn=minus_true_logit, random_start=False,
              norm="l2")
    # one step of 0.15 along -W[y] / ||W[y]||: (-0.09, 0.12, 0, 0), (-0.05, -0.1, 0.1, 0), (0, 0, -0.09, -0.12)
    assert rows(one) == [pytest.approx([0.41, 1.0, 0.5, 0.5]), pytest.approx([0.45, 0.4, 0.6, 0.5]),
                         pytest.approx([0.5, 0.5, 0.41, 0.0])]
    two = pgd(linear_img(), x, y, eps=0.25, alpha=0.15, steps=2, loss_fn=minus_true_logit, random_start=False,
              norm="l2")
    # sample 1: 0.3 along u scaled to 0.25: 0.5 + 0.25 * (-1, -2, 2, 0) / 3; samples 0 and 2: the clamped
    # first step shortens delta to (-0.18, 0.17) and (-0.18, -0.17), norm 0.2476 < 0.25: no rescaling
    assert rows(two) == [pytest.approx([0.32, 1.0, 0.5, 0.5]),
                         pytest.approx([0.5 - 0.25 / 3, 0.5 - 0.5 / 3, 0.5 + 0.5 / 3, 0.5]),
                         pytest.approx([0.5, 0.5, 0.32, 0.0])]


def test_pgd_l2_runs_in_bfloat16():
    model = linear_img().to(torch.bfloat16)
    x = torch.full((64, 1, 2, 2), 0.5, dtype=torch.bfloat16)
    y = torch.arange(64) % 3
    out = pgd(model, x, y, eps=0.3, alpha=0.1, steps=2, loss_fn=minus_true_logit, norm="l2")
    assert out.dtype == torch.bfloat16
    assert float(l2((out - x).float()).max()) <= 0.3 * 1.01


# ---- the L2 start --------------------------------------------------------------------------------------------

def test_l2_uniform_start_radius_is_uniform_and_directions_cover_the_sphere():
    torch.manual_seed(0)
    x = torch.full((3000, 3), 0.5)  # 0.5 +- 0.3 stays in [0, 1]: no clamping
    for start in (random_init(x, 0.3, True, norm="l2"), random_init(x, 0.3, "uniform", norm="l2")):
        d = start - x
        r = l2(d) / 0.3
        assert start.shape == (3000, 3) and float(r.max()) <= 1 + 1e-5
        # r ~ U(0, 1) per sample (torchattacks PGDL2): mean 1/2, quartiles 1/4 and 3/4, reaches 0 and 1
        assert float(r.mean()) == pytest.approx(0.5, abs=0.02) and float(r.max()) > 0.99 and float(r.min()) < 0.01
        assert float((r < 0.25).float().mean()) == pytest.approx(0.25, abs=0.03)
        u = d / l2(d)[:, None]  # an isotropic direction: each coordinate has mean 0 and E u_k^2 = 1/3
        assert u.mean(0).abs().max() < 0.05
        assert (u ** 2).mean(0).tolist() == [pytest.approx(1 / 3, abs=0.03)] * 3


def test_l2_start_per_class_radius():
    torch.manual_seed(1)
    x = torch.full((2000, 1, 2, 2), 0.5)
    eps = torch.tensor([0.05, 0.4]).repeat(1000)
    r = l2(random_init(x, eps, "uniform", norm="l2") - x)
    small, large = r[0::2], r[1::2]
    assert float(small.max()) <= 0.05 + 1e-6 and float(small.max()) > 0.049
    assert float(large.max()) <= 0.4 + 1e-6 and float(large.max()) > 0.39
    assert float(large.mean()) == pytest.approx(0.2, abs=0.02)


def test_l2_start_clamp_and_other_starts():
    torch.manual_seed(2)
    x = torch.zeros(2000, 3)
    assert float(random_init(x, 0.3, "uniform", norm="l2").min()) == 0.0  # in [0, 1]
    assert float(random_init(x, 0.3, "uniform", clamp=False, norm="l2").min()) < -0.2
    big = torch.full((2000, 100), 0.5)
    n = random_init(big, 0.5, "normal", norm="l2") - big  # 0.001 N(0, 1): norm about 0.01, inside the ball
    assert float(n.std()) == pytest.approx(0.001, rel=0.05)
    small = l2(random_init(big, 0.005, "normal", norm="l2") - big)  # norm about 0.01 projected onto 0.005
    assert float(small.max()) <= 0.005 + 1e-6 and float(small.min()) > 0.0049  # an L2 rescale, not a clip
    for z in (False, "zero"):
        assert torch.equal(random_init(big, 0.5, z, norm="l2"), big)
    with pytest.raises(ValueError, match=r"^the uniform_plus start \(x \+ U\[0, eps\)\) is L-inf only; "
                                         r"use uniform, normal or zero with L2$"):
        random_init(x, 0.3, "uniform_plus", norm="l2")
    with pytest.raises(ValueError, match=r"^unknown random_start 'gauss'$"):
        random_init(x, 0.3, "gauss", norm="l2")


def test_pgd_and_mim_take_their_first_gradient_at_the_l2_start():
    torch.manual_seed(3)
    x = torch.full((2000, 3), 0.5)
    for attack in (pgd, mim_mod.mim):
        loss = scripted(torch.zeros(2000, 3))
        attack(Flat(), x, Y4.repeat(500), eps=0.3, alpha=0.1, steps=1, loss_fn=loss, random_start="uniform",
               norm="l2")
        r = l2(loss.calls[0] - x)  # an L-inf start of 0.3 would reach 0.3 * sqrt(3)
        assert float(r.max()) <= 0.3 + 1e-6 and float(r.mean()) == pytest.approx(0.15, abs=0.015)


def test_mim_clamps_its_start_unless_told_not_to():
    torch.manual_seed(4)
    x = torch.zeros(1, 3000)
    loss = scripted(torch.zeros(1, 3000))
    mim_mod.mim(Flat(), x, torch.tensor([0]), eps=0.1, alpha=0.05, steps=1, loss_fn=loss, random_start="uniform")
    assert float(loss.calls[0].min()) == 0.0
    loss = scripted(torch.zeros(1, 3000))
    mim_mod.mim(Flat(), x, torch.tensor([0]), eps=0.1, alpha=0.05, steps=1, loss_fn=loss, random_start="uniform",
                clamp_start=False)
    assert float(loss.calls[0].min()) < -0.09


# ---- MIM: momentum by hand ---------------------------------------------------------------------------------------

# per-sample gradients at steps 1 and 2; L1-normalised: sample 0 (0.4, 0.6) then (-0.6, 0.4),
# sample 1 (0.5, -0.5) twice (its second gradient is 100 times the first)
G1 = torch.tensor([[4.0, 6.0], [0.5, -0.5]])
G2 = torch.tensor([[-0.06, 0.04], [50.0, -50.0]])


def test_mim_linf_momentum_by_hand():
    x = torch.full((2, 2), 0.5)
    out = mim_mod.mim(Flat(), x, torch.tensor([0, 1]), eps=0.1, alpha=0.03, steps=2, loss_fn=scripted(G1, G2))
    # mu = 1: g2 = (0.4 - 0.6, 0.6 + 0.4) = (-0.2, 1.0): signs (-, +) after (+, +); with mu = 2, an unnormalised
    # gradient, an L1 norm floored at 1 or one taken over the batch, g2 would keep the signs (+, +)
    assert out.tolist() == [pytest.approx([0.5, 0.56]), pytest.approx([0.56, 0.44])]


def test_mim_l2_momentum_by_hand():
    x = torch.full((2, 2), 0.5)
    out = mim_mod.mim(Flat(), x, torch.tensor([0, 1]), eps=0.12, alpha=0.1, steps=2, loss_fn=scripted(G1, G2),
                      norm="l2")
    # sample 0: 0.1 (0.4, 0.6) / 0.72111 = (0.055470, 0.083205); + 0.1 (-0.2, 1.0) / 1.01980 = (0.035858, 0.181263),
    # norm 0.184776 > 0.12: scaled by 0.649435 to (0.023288, 0.117719)
    # sample 1: 0.2 along (1, -1) / sqrt(2) scaled to 0.12: 0.5 +- 0.084853
    assert out.tolist() == [pytest.approx([0.523288, 0.617719], abs=1e-6),
                            pytest.approx([0.584853, 0.415147], abs=1e-6)]


# ---- settings and the evaluation entries ---------------------------------------------------------------------------

def test_settings_norm_is_checked_and_read_from_a_config():
    with pytest.raises(ValueError, match=r"^norm must be one of linf, l2, got 'l1'$"):
        AttackSettings(norm="l1")

    class Eval:
        def __init__(self, norm):
            self.norm = norm
            self.alpha = 0.01

    assert AttackSettings.of(Eval("l2")) == AttackSettings(alpha=0.01, norm="l2")
    assert AttackSettings.of(Eval(None)) == AttackSettings(alpha=0.01, norm="linf")  # unset: the default here


def test_evaluation_entries_pass_the_norm(monkeypatch):
    seen = []

    def fake(model, x, y, eps, alpha, steps, loss_fn=None, random_start=True, clamp_start=True, norm="linf"):
        seen.append(norm)
        return x

    monkeypatch.setattr(atk, "pgd", fake)
    s = AttackSettings(norm="l2")
    for name in ("pgd20", "cw", "lsa", "fgsm"):
        ATTACKS[name](None, torch.zeros(1, 4), torch.tensor([0]), 0.5, settings=s)
    ATTACKS["pgd20"](None, torch.zeros(1, 4), torch.tensor([0]), 0.5)
    assert seen == ["l2", "l2", "l2", "l2", "linf"]

