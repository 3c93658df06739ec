"""The evaluation details of the authors' test scripts as settings (``eval.alpha``, ``eval.*_init``,
``eval.clamp_start``, ``eval.attack_misclassified``) and RoBal's AutoAttack (``aa_apgd``).

The reference loops below are written from the authors' code (read, not copied): AT-BSL ``eval.py``
and ``pgd_attack.py`` (NISPLab/AT-BSL), RoBal ``attacks/pgd_attack.py``, ``attacks/other_attacks.py``
and ``attacks/auto_attack.py`` (wutong16/Adversarial_Long-Tail)."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ltadv.attacks import ATTACKS, AttackSettings, autoattack, pgd
from ltadv.config import ConfigError, load_config
from ltadv.evaluate import predict, robust_flags

EPS = 8 / 255  # AT-BSL eval.py: epsilon = 8. / 255.
ATBSL = AttackSettings(alpha=2 / 255, fgsm_init="normal", pgd_init="uniform", clamp_start=False)  # AT-BSL eval.py
ROBAL = AttackSettings(alpha=0.0078, pgd_init="uniform", mim_init="uniform", clamp_start=False)  # RoBal test_step_size


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(num_classes=4, seed=0):
    """A small non-linear model on 1 x 4 x 4 images, so the gradient's sign depends on the point."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, num_classes)).eval()


class Wavy(nn.Module):
    """Logits linear in sin(40 x): the loss has maxima inside the eps-ball, where signed steps
    oscillate instead of running to a corner, so 20 steps still depend on the step and the start."""

    def __init__(self, num_classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.lin(torch.sin(40 * x.flatten(1)))


def images(n=6, seed=1):
    """Pixels in [0, 1] with whole rows at exactly 0 and 1, where clipping the start matters."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    x[:, :, 0] = 0.0
    x[:, :, 1] = 1.0
    y = torch.arange(n) % 4
    return x, y


def cat_cw_loss(logits, y, confidence=50.0):
    """CAT's CW loss as AT-BSL eval.py's ``cwloss``: the true class pushed down by 10000, summed."""
    onehot = F.one_hot(y, logits.shape[1]).float()
    real = (onehot * logits).sum(1)
    other = ((1.0 - onehot) * logits - onehot * 10000.0).max(1)[0]
    return -torch.clamp(real - other + confidence, min=0.0).sum()


def authors_pgd(model, x, y, eps, step, steps, start, loss=None):
    """The authors' white-box loop: gradient at the unclipped start, then step, clip to the eps-ball
    around x, clip to [0, 1] (AT-BSL eval.py ``_pgd_whitebox``; RoBal ``_pgd_whitebox_basic``)."""
    loss = loss or (lambda z, t: F.cross_entropy(z, t))  # mean over the batch, as nn.CrossEntropyLoss()
    x_pgd = start.clone()
    for _ in range(steps):
        x_pgd.requires_grad_(True)
        (g,) = torch.autograd.grad(loss(model(x_pgd), y), x_pgd)
        x_pgd = x_pgd.detach() + step * g.sign()
        x_pgd = torch.clamp(x + torch.clamp(x_pgd - x, -eps, eps), 0.0, 1.0)
    return x_pgd


def authors_mim(model, x, y, eps, step, steps, start, decay=1.0):
    """RoBal ``_mim_whitebox``: momentum of the gradient divided by its per-sample mean |grad|."""
    x_pgd, prev = start.clone(), torch.zeros_like(x)
    for _ in range(steps):
        x_pgd.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_pgd), y), x_pgd)
        prev = decay * prev + g / g.abs().mean([1, 2, 3], keepdim=True)
        x_pgd = x_pgd.detach() + step * prev.sign()
        x_pgd = torch.clamp(x + torch.clamp(x_pgd - x, -eps, eps), 0.0, 1.0)
    return x_pgd


def seeded(seed, fn, *args, **kwargs):
    torch.manual_seed(seed)
    return fn(*args, **kwargs)


# --- FGSM -----------------------------------------------------------------------------------------

def test_fgsm_normal_start_is_atbsl_one_step_from_x_plus_small_gaussian():
    model, (x, y) = tiny(), images()
    ours = seeded(3, lambda: ATTACKS["fgsm"](model, x, y, EPS, settings=ATBSL))
    start = seeded(3, lambda: x + 0.001 * torch.randn_like(x))  # AT-BSL eval.py: 0.001 * torch.randn
    ref = authors_pgd(model, x, y, EPS, EPS, 1, start)  # one step of 8/255
    assert torch.allclose(ours, ref, atol=1e-7)
    default = ATTACKS["fgsm"](model, x, y, EPS)
    assert not torch.allclose(ours, default, atol=1e-5), "the normal start was ignored"
    # RoBal's FGSM is the default: one step of eps from x itself (attacks/pgd_attack.py)
    assert torch.allclose(default, authors_pgd(model, x, y, EPS, EPS, 1, x), atol=1e-7)


# --- PGD / CW / LSA starts ------------------------------------------------------------------------

def test_unclamped_start_takes_the_first_gradient_outside_the_box():
    model, (x, y) = tiny(), images()
    u = seeded(5, lambda: torch.empty_like(x).uniform_(-EPS, EPS))
    for clamp in (False, True):
        ours = seeded(5, pgd, model, x, y, EPS, 2 / 255, 1, random_start="uniform", clamp_start=clamp)
        start = (x + u).clamp(0, 1) if clamp else x + u
        assert torch.allclose(ours, authors_pgd(model, x, y, EPS, 2 / 255, 1, start), atol=1e-7)
    a = seeded(5, lambda: pgd(model, x, y, EPS, 2 / 255, 1, random_start="uniform", clamp_start=False))
    b = seeded(5, lambda: pgd(model, x, y, EPS, 2 / 255, 1, random_start="uniform", clamp_start=True))
    # a pixel at 0 drawn to -0.02 and stepped +2/255 stays at 0 unclipped, but ends at 2/255 clipped
    assert not torch.equal(a[:, :, :2], b[:, :, :2])
    assert (a - x).abs().max() <= EPS + 1e-6 and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("name", ["pgd20", "cw", "lsa"])
def test_atbsl_settings_reproduce_atbsl_eval_loops(name):
    """AT-BSL eval.py: PGD and CW 20 steps of 2/255 from x + U(-eps, eps) unclipped; CW is CAT's loss
    (confidence 50, summed); LSA is the PGD loop on CE of 10 * logits (``alpha=10.``)."""
    model, (x, y) = Wavy().eval(), images()
    ours = seeded(7, lambda: ATTACKS[name](model, x, y, EPS, settings=ATBSL))
    start = seeded(7, lambda: x + torch.empty_like(x).uniform_(-EPS, EPS))
    loss = {"pgd20": None, "cw": cat_cw_loss, "lsa": lambda z, t: F.cross_entropy(10.0 * z, t)}[name]
    ref = authors_pgd(model, x, y, EPS, 2 / 255, 20, start, loss)
    assert torch.allclose(ours, ref, atol=1e-6)
    clipped = authors_pgd(model, x, y, EPS, 2 / 255, 20, start.clamp(0, 1), loss)
    assert not torch.allclose(ours, clipped, atol=1e-6), "the test cannot tell the clipped start apart"


@pytest.mark.parametrize("name", ["pgd20", "cw"])
def test_robal_settings_reproduce_robal_loops_and_honour_alpha(name):
    """RoBal configs: test_epsilon 0.031, test_step_size 0.0078, test_num_steps 20, random True; the CW
    loss of attacks/other_attacks.py (margin 50, other classes against the true one minus 1000, mean)."""
    eps = 0.031
    model, (x, y) = Wavy().eval(), images()

    def robal_cw(z, t):
        onehot = F.one_hot(t, z.shape[1]).float()
        other = torch.max((1 - onehot) * z - onehot * 1000, dim=1)[0]
        return -torch.sum(torch.clamp((onehot * z).sum(1) - other + 50, 0)) / len(t)

    ours = seeded(11, lambda: ATTACKS[name](model, x, y, eps, settings=ROBAL))
    start = seeded(11, lambda: x + torch.empty_like(x).uniform_(-eps, eps))
    ref = authors_pgd(model, x, y, eps, 0.0078, 20, start, None if name == "pgd20" else robal_cw)
    assert torch.allclose(ours, ref, atol=1e-6)
    eps4 = seeded(11, lambda: ATTACKS[name](model, x, y, eps, settings=AttackSettings(pgd_init="uniform",
                                                                                      clamp_start=False)))
    assert not torch.equal(ours, eps4), "alpha 0.0078 gave the eps/4 = 0.00775 images"


def test_robal_mim_settings_reproduce_robal_mim():
    """RoBal other_attacks.py ``_mim_whitebox``: random start U(-eps, eps), 20 steps of 0.0078, decay 1."""
    eps = 0.031
    model, (x, y) = Wavy().eval(), images()
    ours = seeded(13, lambda: ATTACKS["mim"](model, x, y, eps, settings=ROBAL))
    start = seeded(13, lambda: x + torch.empty_like(x).uniform_(-eps, eps))
    assert torch.allclose(ours, authors_mim(model, x, y, eps, 0.0078, 20, start), atol=1e-6)
    assert not torch.equal(ours, ATTACKS["mim"](model, x, y, eps)), "the MIM start was ignored"


def test_default_settings_and_default_config_change_nothing():
    model, (x, y) = tiny(), images()
    cfg_eval = load_config().eval
    for name in ("fgsm", "pgd20", "cw", "lsa", "mim"):
        a = seeded(17, ATTACKS[name], model, x, y, EPS)
        b = seeded(17, ATTACKS[name], model, x, y, EPS, settings=AttackSettings.of(cfg_eval))
        assert torch.equal(a, b), name
    # the documented SPEC section 5 PGD-20: step eps/4, a clipped uniform start
    a = seeded(19, lambda: ATTACKS["pgd20"](model, x, y, EPS))
    start = seeded(19, lambda: (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1))
    assert torch.allclose(a, authors_pgd(model, x, y, EPS, EPS / 4, 20, start, lambda z, t: F.cross_entropy(
        z, t, reduction="sum")), atol=1e-6)


def test_settings_reject_unknown_start_and_bad_step():
    with pytest.raises(ValueError, match="pgd_init"):
        AttackSettings(pgd_init="gauss")
    with pytest.raises(ValueError, match="alpha"):
        AttackSettings(alpha=0.0)


# --- robust_flags: settings threading and attack_misclassified ----------------------------------

def test_robust_flags_passes_settings_from_a_config_like_object(monkeypatch):
    model, (x, y) = tiny(), images()
    seen = []

    def spy(model, x, y, eps, settings=None):
        seen.append(settings)
        return x

    monkeypatch.setitem(ATTACKS, "spy", spy)
    monkeypatch.setitem(ATTACKS, "plain", lambda model, x, y, eps: x)  # an attack without settings still runs
    cfg_like = SimpleNamespace(alpha=0.0078, fgsm_init="zero", pgd_init="uniform", mim_init="uniform",
                               clamp_start=False, attack_misclassified=True, head_frac=0.5)
    robust_flags(model, x, y, ["spy", "plain"], EPS, batch_size=4, fast=False, settings=cfg_like)
    assert seen and all(s == ROBAL for s in seen)


def test_attack_misclassified_counts_correct_under_attack():
    """The authors count model(x_adv) == y over every point; the default needs clean-correct too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    x = torch.rand(40, 1, 4, 4)
    y = torch.randint(0, 2, (40,))
    correct = predict(model, x) == y
    assert correct.any() and (~correct).any()
    seen = []

    def helper(model, xb, yb, eps, settings=None):  # a descent step: it can only help the label
        seen.append(len(xb))
        xg = xb.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xg), yb, reduction="sum"), xg)
        return (xb - eps * g.sign()).clamp(0, 1)

    ATTACKS["helper"] = helper
    try:
        eps = 0.5
        helped = predict(model, helper(model, x, y, eps)) == y
        assert (helped & ~correct).any(), "the helper must turn some wrong point right for this test"
        seen.clear()
        default = robust_flags(model, x, y, ["helper"], eps, batch_size=64, fast=False)["helper"]
        assert seen == [int(correct.sum())]
        assert torch.equal(default, correct & helped)
        seen.clear()
        authors = robust_flags(model, x, y, ["helper"], eps, batch_size=64, fast=False,
                               settings=SimpleNamespace(attack_misclassified=True))["helper"]
        assert seen == [40]
        assert torch.equal(authors, helped)
    finally:
        del ATTACKS["helper"]


# --- aa_apgd: RoBal's AutoAttack ----------------------------------------------------------------

def test_aa_apgd_runs_apgd_ce_then_apgd_t_with_robal_settings_on_still_robust_points(monkeypatch):
    """RoBal attacks/auto_attack.py: AutoAttack(norm='Linf', version='standard') with attacks_to_run
    ['apgd-ce', 'apgd-t']; official standard Linf settings: 100 iterations, 1 restart, 9 target classes."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    model = tiny(num_classes=10)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(24, 1, 4, 4, generator=g)
    y = predict(model, x)  # an untrained model: label its own predictions, a quarter of them wrong
    y[::4] = (y[::4] + 1) % 10
    correct = predict(model, x) == y
    calls = []
    real_ce, real_t = APGDAttack.perturb, APGDAttack_targeted.perturb

    def rows(xb):
        return [int(torch.nonzero((x.flatten(1) == r).all(1)).flatten()[0]) for r in xb.flatten(1)]

    def rec_ce(self, xb, yb, *a, **k):
        calls.append(("apgd-ce", self.loss, self.n_iter, self.n_restarts, self.eps, self.norm, rows(xb)))
        return real_ce(self, xb, yb, *a, **k)

    def rec_t(self, xb, yb, *a, **k):
        calls.append(("apgd-t", self.loss, self.n_iter, self.n_restarts, self.n_target_classes, self.norm, rows(xb)))
        return real_t(self, xb, yb, *a, **k)

    def never(*a, **k):
        raise AssertionError("aa_apgd ran FAB or Square")

    monkeypatch.setattr(APGDAttack, "perturb", rec_ce)
    monkeypatch.setattr(APGDAttack_targeted, "perturb", rec_t)
    monkeypatch.setattr(FABAttack_PT, "perturb", never)
    monkeypatch.setattr(SquareAttack, "perturb", never)
    eps = 0.05
    res = autoattack.aa_apgd_flags(model, x, y, eps, batch_size=8, log=lambda *a: None)
    assert list(res["stages"]) == ["apgd-ce", "apgd-t"]
    ce = [c for c in calls if c[0] == "apgd-ce"]
    t = [c for c in calls if c[0] == "apgd-t"]
    assert all(c[1:6] == ("ce", 100, 1, eps, "Linf") for c in ce)
    assert all(c[1:6] == ("dlr-targeted", 100, 1, 9, "Linf") for c in t)
    assert sorted(i for c in ce for i in c[6]) == torch.nonzero(correct).flatten().tolist()
    after_ce = correct & ~(res["broken_by"] == 1)
    assert sorted(i for c in t for i in c[6]) == torch.nonzero(after_ce).flatten().tolist()
    assert not (res["flags"] & ~correct).any()
    assert res["stages"]["apgd-t"] == pytest.approx(float(res["flags"].float().mean()))


def test_aa_apgd_equals_aa_after_its_first_two_stages(monkeypatch, tmp_path):
    monkeypatch.setattr(autoattack, "AA_BUDGET", {"n_iter": 10, "n_queries": 50})
    model = tiny(num_classes=4)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(20, 1, 4, 4, generator=g)
    y = predict(model, x)
    y[::3] = (y[::3] + 1) % 4
    details = {}
    flags = robust_flags(model, x, y, ["aa", "aa_apgd"], 0.08, batch_size=8, fast=False, state_dir=tmp_path,
                         details=details)
    assert list(details["aa_apgd"]["stages"]) == ["apgd-ce", "apgd-t"]
    assert details["aa_apgd"]["stages"] == {k: details["aa"]["stages"][k] for k in ("apgd-ce", "apgd-t")}
    assert not (flags["aa"] & ~flags["aa_apgd"]).any()
    assert (tmp_path / "aa_apgd.pt").is_file() and (tmp_path / "aa.pt").is_file()


# --- config ---------------------------------------------------------------------------------------

def test_config_fields_parse_and_validate():
    cfg = load_config(overrides={"eval.alpha": "2/255", "eval.fgsm_init": "normal", "eval.clamp_start": False,
                                 "eval.attack_misclassified": True})
    assert cfg.eval.alpha == pytest.approx(2 / 255)
    assert AttackSettings.of(cfg.eval) == ATBSL
    d = load_config().eval
    assert (d.alpha, d.fgsm_init, d.pgd_init, d.mim_init, d.clamp_start, d.attack_misclassified) == (
        None, "zero", "uniform", "zero", True, False)
    with pytest.raises(ConfigError, match="eval.pgd_init"):
        load_config(overrides={"eval.pgd_init": "gauss"})
    with pytest.raises(ConfigError, match="eval.alpha"):
        load_config(overrides={"eval.alpha": -0.01})
    with pytest.raises(ConfigError, match="eval.clamp_start"):
        load_config(overrides={"eval.clamp_start": "no"})


def test_train_passes_the_run_eval_settings_to_selection_and_final_attacks(monkeypatch, tmp_path):
    from ltadv.train import train

    real = ATTACKS["pgd20"]
    seen = []

    def spy(model, x, y, eps, settings=None):
        seen.append((settings, len(x)))
        return real(model, x, y, eps, settings=settings)

    monkeypatch.setitem(ATTACKS, "pgd20", spy)
    cfg = load_config(overrides={"data.name": "digits-lt", "method.name": "at", "train.epochs": 1,
                                 "train.progress": False, "attack.steps": 1, "eval.val_n": 30, "eval.n": 40,
                                 "eval.alpha": 0.02, "eval.pgd_init": "normal", "eval.clamp_start": False,
                                 "eval.attack_misclassified": True})
    train(cfg, tmp_path / "run", log=lambda *a, **k: None)
    want = AttackSettings(alpha=0.02, pgd_init="normal", clamp_start=False)
    # one selection pass on 30 validation images, then the best and last checkpoints on 40 test images,
    # every point attacked (attack_misclassified)
    assert seen == [(want, 30), (want, 40), (want, 40)]
