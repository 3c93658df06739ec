"""Attacks on crafted linear models: start distributions, default steps, signed steps, losses by hand,
and the AutoAttack cascade where stage 1 breaks some points and stage 2 others."""

import pytest
import torch
import torch.nn as nn

import ltadv.attacks as atk
from ltadv.attacks import (
    ATTACKS,
    AttackSettings,
    ce_loss,
    check_budget,
    cw_loss,
    frozen_params,
    pgd,
    project_linf,
    random_init,
    scaled_ce_loss,
)
from ltadv.attacks import mim as mim_mod
from ltadv.attacks.autoattack import _valid_state, cascade_key, run_cascade


def quiet(*a, **k):
    pass


def linear(weight):
    m = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(weight))
    return m


# ---- starts -------------------------------------------------------------------------------------------------

def test_uniform_start_covers_both_signs_within_eps():
    x = torch.full((20000,), 0.5)
    d = random_init(x, 0.1, True) - x
    assert float(d.min()) < -0.095 and float(d.max()) > 0.095  # U(-eps, eps), not U[0, eps)
    assert float(d.abs().max()) <= 0.1 + 1e-6
    assert 0.45 < float((d < 0).float().mean()) < 0.55
    assert abs(float(d.mean())) < 0.003
    d2 = random_init(x, 0.1, "uniform") - x
    assert float(d2.min()) < -0.095 and float(d2.max()) > 0.095


def test_uniform_plus_start_is_one_sided():
    x = torch.full((20000,), 0.5)
    d = random_init(x, 0.1, "uniform_plus") - x
    assert float(d.min()) >= 0 and float(d.max()) > 0.095 and float(d.max()) <= 0.1
    assert float(d.mean()) == pytest.approx(0.05, abs=0.003)


def test_normal_start_scale_and_zero_start():
    x = torch.full((20000,), 0.5)
    d = random_init(x, 0.1, "normal") - x
    assert float(d.std()) == pytest.approx(0.001, rel=0.05) and abs(float(d.mean())) < 1e-4
    z = random_init(x, 0.1, False)
    assert torch.equal(z, x) and z is not x
    assert torch.equal(random_init(x, 0.1, "zero"), x)
    with pytest.raises(ValueError, match=r"^unknown random_start 'gauss'$"):
        random_init(x, 0.1, "gauss")


def test_start_clamp_and_unclamped():
    x = torch.zeros(20000)
    assert float(random_init(x, 0.1, True).min()) >= 0.0  # projected into [0, 1]
    assert float(random_init(x, 0.1, True, clamp=False).min()) < -0.09  # as drawn, as the AT-BSL test script
    y = torch.ones(20000)
    assert float(random_init(y, 0.1, "uniform_plus").max()) <= 1.0
    assert float(random_init(y, 0.1, "uniform_plus", clamp=False).max()) > 1.09


def test_project_linf_hand_values():
    x = torch.tensor([0.5, 0.05, 0.97, 0.5])
    xa = torch.tensor([0.9, -0.3, 1.2, 0.45])
    assert project_linf(xa, x, 0.1).tolist() == pytest.approx([0.6, 0.0, 1.0, 0.45])


# ---- PGD on a linear model --------------------------------------------------------------------------------

W = [[1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, 1.0, 3.0]]  # d CE / dx for y = 0 has the sign of w1 - w0: -, +, +, +


def test_pgd_signed_steps_hand_values():
    model = linear(W)
    x = torch.tensor([[0.5, 0.5, 0.5, 0.99], [0.2, 0.5, 0.5, 0.5]])
    y = torch.tensor([0, 1])
    one = pgd(model, x, y, eps=0.1, alpha=0.03, steps=1, random_start=False)
    assert one.tolist()[0] == pytest.approx([0.47, 0.53, 0.53, 1.0])  # pixel 3 clipped at 1
    assert one.tolist()[1] == pytest.approx([0.23, 0.47, 0.47, 0.47])  # y = 1: the opposite signs
    three = pgd(model, x, y, eps=0.05, alpha=0.03, steps=3, random_start=False)  # capped at eps
    assert three.tolist()[0] == pytest.approx([0.45, 0.55, 0.55, 1.0])
    assert three.tolist()[1] == pytest.approx([0.25, 0.45, 0.45, 0.45])
    assert not three.requires_grad


def test_pgd_eps_zero_and_budget_checks():
    model = linear(W)
    x = torch.full((2, 4), 0.5)
    assert torch.equal(pgd(model, x, torch.tensor([0, 1]), eps=0.0, alpha=0.1, steps=3), x)
    check_budget(0.0, 1)
    with pytest.raises(ValueError, match=r"^eps must be >= 0, got -0.1$"):
        check_budget(-0.1, 1)
    with pytest.raises(ValueError, match=r"^steps must be >= 1, got 0$"):
        check_budget(0.1, 0)


def test_pgd_custom_loss_is_maximised():
    model = linear(W)
    x = torch.full((1, 4), 0.5)

    def minus_logit1(z, y):  # maximising -z_1 pushes x against w1
        return -z[:, 1].sum()

    out = pgd(model, x, torch.tensor([0]), eps=0.1, alpha=0.1, steps=1, loss_fn=minus_logit1, random_start=False)
    assert out.tolist()[0] == pytest.approx([0.6, 0.4, 0.4, 0.4])


def test_frozen_params_restores_only_trainable():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    m[0].weight.requires_grad_(False)
    with frozen_params(m):
        assert not any(p.requires_grad for p in m.parameters())
    assert [p.requires_grad for p in m.parameters()] == [False, True, True, True]


# ---- the evaluation entries' settings ----------------------------------------------------------------------

@pytest.fixture
def pgd_spy(monkeypatch):
    calls = []

    def fake(model, x, y, eps, alpha, steps, loss_fn=None, random_start=True, clamp_start=True, norm="linf"):
        assert model == "the model" and torch.equal(x, torch.zeros(1, 4)) and y.tolist() == [0]
        assert norm == "linf"  # the default threat model
        calls.append(dict(eps=eps, alpha=alpha, steps=steps, loss_fn=loss_fn, random_start=random_start,
                          clamp_start=clamp_start))
        return x

    monkeypatch.setattr(atk, "pgd", fake)
    return calls


def test_default_steps_and_starts(pgd_spy):
    x, y = torch.zeros(1, 4), torch.tensor([0])
    for name in ("pgd20", "cw", "lsa", "fgsm"):
        ATTACKS[name]("the model", x, y, 0.08)
    pgd20, cw, lsa, fgsm = pgd_spy
    assert pgd20 == dict(eps=0.08, alpha=pytest.approx(0.02), steps=20, loss_fn=None, random_start="uniform",
                         clamp_start=True)  # SPEC section 5: step eps / 4
    assert cw["loss_fn"] is cw_loss and cw["alpha"] == pytest.approx(0.02) and cw["steps"] == 20
    assert lsa["loss_fn"] is scaled_ce_loss and lsa["steps"] == 20 and lsa["random_start"] == "uniform"
    assert fgsm == dict(eps=0.08, alpha=0.08, steps=1, loss_fn=None, random_start="zero", clamp_start=True)


def test_settings_change_step_and_start(pgd_spy):
    s = AttackSettings(alpha=0.0078, fgsm_init="normal", pgd_init="uniform_plus", clamp_start=False)
    x, y = torch.zeros(1, 4), torch.tensor([0])
    ATTACKS["pgd20"]("the model", x, y, 0.03, settings=s)
    ATTACKS["fgsm"]("the model", x, y, 0.03, settings=s)
    assert pgd_spy[0]["alpha"] == 0.0078 and pgd_spy[0]["random_start"] == "uniform_plus"
    assert pgd_spy[0]["clamp_start"] is False
    assert pgd_spy[1]["alpha"] == 0.03 and pgd_spy[1]["random_start"] == "normal" and pgd_spy[1]["clamp_start"] is False


def test_mim_defaults(monkeypatch):
    calls = []
    monkeypatch.setattr(mim_mod, "mim", lambda *a, **k: calls.append(k) or a[1])
    ATTACKS["mim"](None, torch.zeros(1, 4), torch.tensor([0]), 0.08)
    assert calls[0] == dict(eps=0.08, alpha=pytest.approx(0.02), steps=20, mu=1.0, random_start="zero",
                            clamp_start=True, norm="linf")


def test_attack_settings_validation_and_of():
    assert AttackSettings().step(0.08) == pytest.approx(0.02)
    assert AttackSettings(alpha=0.01).step(0.08) == 0.01
    with pytest.raises(ValueError, match=r"^alpha must be > 0, got 0$"):
        AttackSettings(alpha=0)
    with pytest.raises(ValueError, match=r"^pgd_init must be one of uniform, normal, uniform_plus, zero, got 'x'$"):
        AttackSettings(pgd_init="x")
    with pytest.raises(ValueError, match=r"^mim_init must be one of"):
        AttackSettings(mim_init="x")
    assert AttackSettings.of(None) == AttackSettings()

    class Eval:
        alpha = 0.5
        mim_init = "uniform"
        other = 1

    assert AttackSettings.of(Eval()) == AttackSettings(alpha=0.5, mim_init="uniform")
    s = AttackSettings(alpha=0.2)
    assert AttackSettings.of(s) is s


def test_mim_signed_momentum_steps():
    model = linear(W)
    x = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    out = mim_mod.mim(model, x, torch.tensor([0]), eps=0.1, alpha=0.03, steps=2)
    assert out.tolist()[0] == pytest.approx([0.44, 0.56, 0.56, 0.56])
    out = mim_mod.mim(model, x, torch.tensor([0]), eps=0.05, alpha=0.03, steps=3)
    assert out.tolist()[0] == pytest.approx([0.45, 0.55, 0.55, 0.55])
    assert torch.equal(mim_mod.mim(model, x, torch.tensor([0]), eps=0.0, alpha=0.03, steps=3), x)


# ---- losses by hand ----------------------------------------------------------------------------------------

Z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
YZ = torch.tensor([0, 2])


def test_cw_loss_hand_numbers():
    # -sum max(z_y - max_{i != y} z_i + conf, 0): rows 2 - 0.5 + 50 = 51.5 and 1 - 3 + 50 = 48
    assert float(cw_loss(Z, YZ)) == pytest.approx(-99.5)
    assert float(cw_loss(Z, YZ, confidence=1.0)) == pytest.approx(-2.5)  # row 2 clamps at 0


def test_ce_and_scaled_ce_hand_numbers():
    assert float(ce_loss(Z, YZ)) == pytest.approx(2.4112, abs=1e-4)  # summed, not averaged
    assert float(scaled_ce_loss(Z, YZ, 2.0)) == pytest.approx(4.0715, abs=1e-4)
    assert float(scaled_ce_loss(Z, YZ)) == pytest.approx(float(ce_loss(10 * Z, YZ)), rel=1e-6)
    soft = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert float(ce_loss(Z, soft)) == pytest.approx(2.4112, abs=1e-4)


# ---- the AutoAttack cascade ------------------------------------------------------------------------------

# features: (logit 0, logit 1, broken by stage 1, broken by stage 2)
XC = torch.tensor([
    [0.9, 0.1, 1.0, 0.0],  # y 0, correct, stage 1 breaks it
    [0.1, 0.9, 0.0, 1.0],  # y 1, correct, stage 2 breaks it
    [0.8, 0.2, 1.0, 1.0],  # y 0, correct, both would: stage 1 does
    [0.3, 0.7, 0.0, 0.0],  # y 1, correct, robust
    [0.6, 0.4, 1.0, 1.0],  # y 1, misclassified clean: never attacked
    [0.7, 0.3, 0.0, 1.0],  # y 0, correct, stage 2 breaks it
])
YC = torch.tensor([0, 1, 0, 1, 1, 0])


def reader4():
    return linear([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])


def breaker(col, seen, name):
    def fn(x, y):
        seen.append((name, sorted(tuple(r) for r in x.tolist())))
        out = x.clone()
        hit = x[:, col] > 0.5
        out[hit, 0], out[hit, 1] = x[hit, 1], x[hit, 0]
        out[:, 3 if col == 2 else 2] += 0.001  # a mark on every image the stage returns
        return out
    return fn


def test_cascade_stage_one_breaks_some_and_stage_two_others():
    seen = []
    stages = [("s1", breaker(2, seen, "s1")), ("s2", breaker(3, seen, "s2"))]
    res = run_cascade(reader4(), XC, YC, stages, batch_size=2, return_adv=True, log=quiet)
    assert res["flags"].tolist() == [False, False, False, True, False, False]
    assert res["broken_by"].tolist() == [1, 2, 1, -1, 0, 2]
    s1_rows = sorted(r for n, rows in seen if n == "s1" for r in rows)
    s2_rows = sorted(r for n, rows in seen if n == "s2" for r in rows)
    assert s1_rows == sorted(tuple(r) for r in XC[[0, 1, 2, 3, 5]].tolist())  # not the misclassified point 4
    assert s2_rows == sorted(tuple(r) for r in XC[[1, 3, 5]].tolist())  # only points still robust
    assert res["stages"] == {"s1": pytest.approx(3 / 6), "s2": pytest.approx(1 / 6)}
    adv = res["x_adv"]
    # broken points keep the adversarial image of the stage that broke them (logits swapped, stage mark)
    assert adv[0].tolist() == pytest.approx([0.1, 0.9, 1.0, 0.001])
    assert adv[1].tolist() == pytest.approx([0.9, 0.1, 0.001, 1.0])
    assert adv[2].tolist() == pytest.approx([0.2, 0.8, 1.0, 1.001])
    assert adv[5].tolist() == pytest.approx([0.3, 0.7, 0.001, 1.0])
    # robust and misclassified points keep their clean image (stage 2's marked image did not break point 3)
    assert torch.equal(adv[3], XC[3]) and torch.equal(adv[4], XC[4])


def test_cascade_with_given_correct_flags_and_uint8():
    seen = []
    stages = [("s1", breaker(2, seen, "s1"))]
    correct = torch.tensor([True, True, True, False, False, True])  # point 3 declared misclassified
    res = run_cascade(reader4(), XC, YC, stages, correct=correct, batch_size=4, log=quiet)
    assert res["broken_by"].tolist() == [1, -1, 1, 0, 0, -1]
    assert res["flags"].tolist() == [False, True, False, False, False, True]
    xu = torch.tensor([[200, 10, 255, 0], [10, 200, 0, 0]], dtype=torch.uint8)
    res = run_cascade(reader4(), xu, torch.tensor([0, 1]), [("s1", breaker(2, [], "s1"))], log=quiet,
                      return_adv=True)
    assert res["flags"].tolist() == [False, True]
    assert res["x_adv"].dtype == torch.float32 and float(res["x_adv"][1, 1]) == pytest.approx(200 / 255)


def test_cascade_state_is_reused_and_key_checked(tmp_path):
    path = tmp_path / "aa.pt"
    seen = []
    stages = [("s1", breaker(2, seen, "s1")), ("s2", breaker(3, seen, "s2"))]
    first = run_cascade(reader4(), XC, YC, stages, batch_size=2, state_path=path, key="k", log=quiet)
    assert path.is_file() and len(seen) == 5  # 3 batches of stage 1, 2 of stage 2

    def boom(x, y):
        raise AssertionError("a finished state must be reused")

    again = run_cascade(reader4(), XC, YC, [("s1", boom), ("s2", boom)], batch_size=2, state_path=path, key="k",
                        log=quiet)
    assert torch.equal(again["flags"], first["flags"]) and torch.equal(again["broken_by"], first["broken_by"])
    logs = []
    other = run_cascade(reader4(), XC, YC, stages, batch_size=2, state_path=path, key="other", log=logs.append)
    assert torch.equal(other["flags"], first["flags"])
    assert logs == [f"attack state {path} belongs to other weights, data or settings; starting again"]
    with pytest.raises(ValueError, match=r"^return_adv is only available without a state file, in one process$"):
        run_cascade(reader4(), XC, YC, stages, state_path=path, return_adv=True, log=quiet)


def test_valid_state_rejects_wrong_fields():
    good = {"flags": torch.ones(3, dtype=torch.bool), "start_flags": torch.ones(3, dtype=torch.bool),
            "broken_by": torch.zeros(3, dtype=torch.int16), "stage": 1, "batches_done": 0, "seconds": 0.0}
    assert _valid_state(good, 3, 2)
    assert not _valid_state(good, 4, 2)
    assert not _valid_state({**good, "stage": 3}, 3, 2)
    assert _valid_state({**good, "stage": 2}, 3, 2)
    assert not _valid_state({**good, "stage": -1}, 3, 2)
    assert not _valid_state({**good, "flags": torch.ones(3)}, 3, 2)
    assert not _valid_state({**good, "start_flags": torch.ones(3, dtype=torch.int64)}, 3, 2)
    assert not _valid_state({**good, "broken_by": torch.zeros(3)}, 3, 2)
    assert not _valid_state({**good, "batches_done": -1}, 3, 2)
    assert not _valid_state({**good, "seconds": "0"}, 3, 2)
    assert not _valid_state({**good, "flags": torch.ones(1, 3, dtype=torch.bool)}, 3, 2)
    assert not _valid_state({k: v for k, v in good.items() if k != "stage"}, 3, 2)


def test_cascade_key_changes_with_each_input():
    m = reader4()
    base = cascade_key(m, XC, YC, 0.1, ["a", "b"], 2, 0)
    assert cascade_key(m, XC, YC, 0.1, ["a", "b"], 2, 0) == base
    changed = [cascade_key(m, XC + 0.01, YC, 0.1, ["a", "b"], 2, 0),
               cascade_key(m, XC, YC.flip(0), 0.1, ["a", "b"], 2, 0),
               cascade_key(m, XC, YC, 0.2, ["a", "b"], 2, 0), cascade_key(m, XC, YC, 0.1, ["a"], 2, 0),
               cascade_key(m, XC, YC, 0.1, ["a", "b"], 3, 0), cascade_key(m, XC, YC, 0.1, ["a", "b"], 2, 1),
               cascade_key(reader4().double(), XC, YC, 0.1, ["a", "b"], 2, 0)]
    assert base not in changed


# ---- AutoAttack (pyautoattack) on a linear model, tiny budget --------------------------------------------

@pytest.fixture
def tiny_aa(monkeypatch):
    from ltadv.attacks import autoattack

    monkeypatch.setattr(autoattack, "AA_BUDGET", {"n_iter": 3, "n_queries": 20})
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x = torch.rand(16, 3, 2, 2)
    with torch.no_grad():
        y = m(x).argmax(1)
    y[0] = (y[0] + 1) % 4  # one point misclassified clean
    return m, x, y


def linf_radius(m, x, y):
    """Exact L-inf distance to the nearest other class of a linear model (ignoring the [0, 1] box)."""
    w = m[1].weight.detach()
    z = m(x).detach()
    out = []
    for i in range(len(y)):
        r = [float((z[i, y[i]] - z[i, j]) / (w[y[i]] - w[j]).abs().sum()) for j in range(4) if j != y[i]]
        out.append(min(r))
    return torch.tensor(out)


def test_autoattack_breaks_only_breakable_points_and_keeps_images(tiny_aa):
    from ltadv.attacks.autoattack import aa_apgd_flags, aa_flags

    m, x, y = tiny_aa
    res = aa_flags(m, x, y, 0.1, batch_size=5, log=quiet)
    bb = res["broken_by"]
    assert int(bb[0]) == 0  # misclassified clean: not attacked
    assert set(bb.tolist()) >= {1, 2, -1}  # APGD-CE breaks some points, APGD-T others, some stay robust
    radius = linf_radius(m, x, y)
    assert bool((radius[bb > 0] < 0.1).all())  # an attack cannot break a point that is robust at eps
    assert res["flags"].tolist() == (bb == -1).tolist()
    again = aa_flags(m, x, y, 0.1, batch_size=5, log=quiet)
    assert torch.equal(again["broken_by"], bb)  # seeded: the same flags every time
    apgd = aa_apgd_flags(m, x, y, 0.1, batch_size=5, log=quiet)
    assert list(apgd["stages"]) == ["apgd-ce", "apgd-t"] and list(res["stages"]) == ["apgd-ce", "apgd-t", "fab-t",
                                                                                        "square"]
    assert not bool((res["flags"] & ~apgd["flags"]).any())  # the full cascade is at least as strong
    x_adv = ATTACKS["aa"](m, x, y, 0.1)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    broken = bb > 0
    assert bool((m(x_adv).argmax(1)[broken] != y[broken]).all())  # broken points keep their adversarial image
    assert torch.equal(x_adv[~broken], x[~broken])
    x_adv2 = ATTACKS["aa_apgd"](m, x, y, 0.1)
    assert bool((m(x_adv2).argmax(1)[apgd["broken_by"] > 0] != y[apgd["broken_by"] > 0]).all())


def test_autoattack_stage_settings(tiny_aa):
    from ltadv.attacks.autoattack import autoattack_stages

    m, x, y = tiny_aa
    stages = autoattack_stages(m, 0.1, 4, seed=5, n_iter=3, n_queries=20)
    assert [n for n, _ in stages] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    aa = next(c.cell_contents for c in stages[0][1].__closure__ if hasattr(c.cell_contents, "apgd"))
    assert aa.apgd.n_iter == 3 and aa.apgd_targeted.n_iter == 3 and aa.fab.n_iter == 3 and not aa.apgd.verbose
    assert aa.apgd_targeted.eps == 0.1 and aa.apgd_targeted.thr_decr == 0.75 and aa.apgd_targeted.seed == 5
    assert aa.apgd.n_restarts == 1 and aa.apgd_targeted.n_restarts == 1
    assert aa.apgd.eps == 0.1 and aa.apgd.norm == "Linf" and aa.apgd.thr_decr == 0.75 and aa.apgd.eot_iter == 1
    assert aa.apgd_targeted.n_target_classes == 3 and aa.fab.n_target_classes == 3  # C - 1 with 4 classes
    assert aa.square.n_queries == 20 and aa.epsilon == 0.1 and aa.seed == 5
    for _, fn in stages:
        fn(x[:2], y[:2])
    assert aa.apgd.loss == "ce" and aa.apgd.seed == 5 and aa.apgd_targeted.seed == 5
    assert aa.fab.targeted and aa.fab.n_restarts == 1 and aa.fab.seed == 5 and aa.square.seed == 5
    full = autoattack_stages(nn.Sequential(nn.Flatten(), nn.Linear(12, 12)), 0.1, 12)
    aa = next(c.cell_contents for c in full[0][1].__closure__ if hasattr(c.cell_contents, "apgd"))
    assert aa.apgd.n_iter == 100 and aa.apgd_targeted.n_target_classes == 9 and aa.square.n_queries == 5000


class Flat(nn.Module):
    """Logits = the input itself (no parameters): the loss alone decides the gradient."""

    def forward(self, x):
        return x


def test_pgd_default_start_is_uniform_and_zero_gradient_keeps_it():
    x = torch.full((2, 5000), 0.5)
    out = pgd(Flat(), x, torch.tensor([0, 1]), eps=0.1, alpha=0.05, steps=1, loss_fn=lambda z, y: 0 * z.sum())
    d = out - x  # zero gradient: the step adds nothing, the random start is all that moved
    assert float(d.min()) < -0.09 and float(d.max()) > 0.09 and float(d.abs().max()) <= 0.1 + 1e-6
    m = mim_mod.mim(Flat(), x, torch.tensor([0, 1]), eps=0.1, alpha=0.05, steps=1, loss_fn=lambda z, y: 0 * z.sum(),
                    random_start="uniform")
    assert float((m - x).min()) < -0.09 and float((m - x).max()) > 0.09


def test_pgd_first_gradient_at_clamped_or_unclamped_start():
    # x = 0, loss sum((z + eps/2)^2): where the unclamped start is below -eps/2 the first step goes down
    x = torch.zeros(1, 20000)
    loss = lambda z, y: ((z + 0.05) ** 2).sum()  # noqa: E731
    clamped = pgd(Flat(), x, torch.tensor([0]), eps=0.1, alpha=0.025, steps=1, loss_fn=loss)
    assert float(clamped.min()) >= 0.025 - 1e-6  # every start >= 0, every gradient positive
    raw = pgd(Flat(), x, torch.tensor([0]), eps=0.1, alpha=0.025, steps=1, loss_fn=loss, clamp_start=False)
    # starts below -alpha end at 0 after the projection: (0.1 - 0.025) / 0.2 = 37.5% of them
    assert 0.35 < float((raw == 0).float().mean()) < 0.40


def test_cw_loss_when_the_last_class_is_no_label():
    z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    assert float(cw_loss(z, torch.tensor([0, 1]))) == pytest.approx(-(51.5 + 52.0))


def test_mim_batch_of_two_normalises_per_sample():
    model = linear(W)
    x = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.2, 0.5, 0.5, 0.5]])
    out = mim_mod.mim(model, x, torch.tensor([0, 1]), eps=0.1, alpha=0.03, steps=2)
    assert out.tolist()[0] == pytest.approx([0.44, 0.56, 0.56, 0.56])
    assert out.tolist()[1] == pytest.approx([0.26, 0.44, 0.44, 0.44])


def test_autoattack_flags_take_correct_state_and_log(tiny_aa, tmp_path):
    from ltadv.attacks.autoattack import aa_apgd_flags

    m, x, y = tiny_aa
    correct = torch.ones(16, dtype=torch.bool)
    correct[1] = False  # declared misclassified: never attacked, whatever the model says
    logs = []
    res = aa_apgd_flags(m, x, y, 0.1, correct=correct, batch_size=500, state_path=tmp_path / "aa.pt", progress=True,
                        log=logs.append)
    assert int(res["broken_by"][1]) == 0 and (tmp_path / "aa.pt").is_file()
    assert any(line.startswith("apgd-ce: ") for line in logs)  # progress lines go to the given log
    state = torch.load(tmp_path / "aa.pt", weights_only=True)
    assert isinstance(state["key"], str) and len(state["key"]) == 64  # the cascade fingerprint, not None
    again = aa_apgd_flags(m, x, y, 0.1, correct=correct, state_path=tmp_path / "aa.pt", log=logs.append)
    assert torch.equal(again["broken_by"], res["broken_by"])
