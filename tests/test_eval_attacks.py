"""Evaluation suite: attacks (FGSM, PGD-20, CW, LSA, AutoAttack), the resumable AA cascade,
class-wise metrics, sanity checks and robust-overfitting tracking (SPEC section 5)."""

import json
import sys

import pytest
import torch
import torch.nn as nn

from ltadv.attacks import ATTACKS, autoattack, cw_loss, fgsm, scaled_ce_loss
from ltadv.attacks.autoattack import AttackUnavailable, autoattack_stages, cascade_key, run_cascade
from ltadv.config import load_config
from ltadv.data import build_data
from ltadv.evaluate import eps_sweep, sanity_warnings
from ltadv.train import evaluate_run, load_run_model, train

EPS = 0.1
AT = {"data.name": "digits-lt", "method.name": "at", "train.epochs": 4, "train.progress": False,
      "attack.steps": 3, "eval.attacks": ["clean", "pgd20"]}


def quiet(*a, **k):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def at_run(tmp_path_factory):
    """A small CNN adversarially trained on digits-lt for a few epochs (a few seconds on CPU)."""
    out = tmp_path_factory.mktemp("eval") / "at"
    train(load_config(overrides=AT), out, log=quiet)
    model, record = load_run_model(out, "best")
    cfg = load_config(overrides=AT)
    d = build_data(cfg.data, cfg.seed)
    return out, model, d.x_test.float() / 255, d.y_test


@pytest.fixture
def fast_aa(monkeypatch):
    """A 10-iteration, 200-query AutoAttack: the same code paths in a fraction of the time."""
    monkeypatch.setattr(autoattack, "AA_BUDGET", {"n_iter": 10, "n_queries": 200})


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "aa_torchattacks" else n
                                  for n in sorted(ATTACKS)])
def test_every_attack_stays_in_ball_and_box(at_run, name, fast_aa):
    _, model, x, y = at_run
    x, y = (x[:4], y[:4]) if name == "aa_torchattacks" else (x[:12], y[:12])  # full-budget AA: few points
    x_adv = ATTACKS[name](model, x, y, EPS)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_cw_loss_is_the_margin_formula():
    logits = torch.tensor([[5.0, 1.0, 2.0], [0.0, 30.0, -80.0], [1.0, 2.0, 200.0]])
    y = torch.tensor([0, 1, 1])
    # -max(z_y - max_{i != y} z_i + 50, 0): (5 - 2 + 50), (30 - 0 + 50), (2 - 200 + 50 < 0 -> 0)
    assert cw_loss(logits, y).item() == pytest.approx(-(53.0 + 80.0 + 0.0))
    assert cw_loss(logits, y, confidence=0).item() == pytest.approx(-(3.0 + 30.0))


def test_lsa_loss_scales_logits_and_fgsm_is_one_signed_step():
    logits, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    assert scaled_ce_loss(logits, y).item() == pytest.approx(
        nn.functional.cross_entropy(10 * logits, y, reduction="sum").item(), rel=1e-5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(xg), y, reduction="sum"), xg)
    assert torch.allclose(fgsm(model, x, y, 0.05), (x + 0.05 * grad.sign()).clamp(0, 1))


class Interrupt(Exception):
    pass


def test_resumed_autoattack_equals_uninterrupted(at_run, tmp_path):
    _, model, x, y = at_run
    x, y = x[:16], y[:16]
    stages = autoattack_stages(model, EPS, 4, n_iter=5, n_queries=100)  # 3 targets: a fast but real cascade
    key = cascade_key(model, x, y, EPS, [n for n, _ in stages], 4, 0)
    full = run_cascade(model, x, y, stages, batch_size=4, log=quiet)

    calls = {"n": 0}

    def interrupting(fn, after):
        def wrapped(xb, yb):
            calls["n"] += 1
            if calls["n"] > after:
                raise Interrupt
            return fn(xb, yb)
        return wrapped

    state = tmp_path / "aa.pt"
    with pytest.raises(Interrupt):
        run_cascade(model, x, y, [(n, interrupting(f, 5)) for n, f in stages], batch_size=4, state_path=state,
                    key=key, log=quiet)
    assert state.is_file()
    calls["n"] = 0
    resumed = run_cascade(model, x, y, [(n, interrupting(f, 10**6)) for n, f in stages], batch_size=4,
                          state_path=state, key=key, log=quiet)
    assert torch.equal(resumed["flags"], full["flags"])
    assert torch.equal(resumed["broken_by"], full["broken_by"])
    assert resumed["stages"] == full["stages"]
    total_batches = calls["n"] + 5
    assert total_batches == sum(-(-int(n) // 4) for n in _robust_counts_before_each_stage(full))
    # a finished state is reused without attacking again; a different key starts over
    calls["n"] = 0
    run_cascade(model, x, y, [(n, interrupting(f, 0)) for n, f in stages], batch_size=4, state_path=state,
                key=key, log=quiet)
    with pytest.raises(Interrupt):
        run_cascade(model, x, y, [(n, interrupting(f, 0)) for n, f in stages], batch_size=4, state_path=state,
                    key="other", log=quiet)


def _robust_counts_before_each_stage(res):
    bb = res["broken_by"]
    return [int(((bb == -1) | (bb > k)).sum()) for k in range(len(res["stages"]))]


def test_eval_cli_full_suite(at_run, fast_aa, capsys):
    """``ltadv eval`` end to end (in process, so the test's smaller AutoAttack budget applies; the
    full-budget numbers are in the README)."""
    from ltadv.cli import main

    run_dir, model, x, y = at_run
    attacks = ["clean", "fgsm", "pgd20", "cw", "lsa", "aa"]
    assert main(["eval", str(run_dir), "--attacks", ",".join(attacks), "--n", "60", "--which", "best,last",
                 "--eps-sweep"]) == 0
    stdout = capsys.readouterr().out
    assert "-- best checkpoint" in stdout and "-- last checkpoint" in stdout
    assert "after each sub-attack" in stdout
    rec = json.loads((run_dir / "result.json").read_text())
    for which in ("best", "last"):
        # --n 60 is not the run's own evaluation: its own entry, the headline numbers untouched
        (key,) = [k for k in rec["evaluations"] if k.startswith(f"{which} n=60 ")]
        entry = rec["evaluations"][key]
        m = entry["metrics"]
        assert entry["headline"] is False and rec["metrics_by_checkpoint"][which]["clean"]["n"] != 60
        for a in attacks:
            assert m[a]["n"] == 60 and len(m[a]["per_class"]) == 10
            assert m[a]["balanced"] == pytest.approx(sum(m[a]["per_class"]) / 10)
            assert m[a]["worst"] == min(m[a]["per_class"])
            pc = m[a]["per_class"]  # digits-lt counts fall with the class index: thirds of 10 are 3 / 4 / 3
            assert m[a]["head"] == pytest.approx((pc[0] + pc[1] + pc[2]) / 3)
            assert m[a]["tail"] == pytest.approx((pc[7] + pc[8] + pc[9]) / 3)
        assert m["aa"]["overall"] <= m["pgd20"]["overall"]
        assert list(m["aa"]["stages"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
        assert m["aa"]["stages"]["square"] == pytest.approx(m["aa"]["overall"])
        assert (run_dir / "eval_state" / which / f"n60-eps{entry['eps']:.6g}" / "aa.pt").is_file()
        sweep = entry["eps_sweep"]
        assert sweep["robust"][0] == pytest.approx(m["pgd20"]["overall"], abs=0.1)
        assert sweep["robust"][-1] <= 0.05
    assert rec["metrics"] == rec["metrics_by_checkpoint"]["best"]


def test_robust_overfitting_tracking(at_run, tmp_path):
    run_dir = at_run[0]
    rec = json.loads((run_dir / "result.json").read_text())
    vr = [e["val_robust"] for e in rec["epochs"]]
    assert rec["best_epoch"] == 1 + vr.index(max(vr))
    assert all(0 <= e["val_robust"] <= e["val_clean"] <= 1 for e in rec["epochs"])
    assert rec["selection"] == {"split": "val", "n": 100, "attack": "pgd20", "from_epoch": 1, "ties": "first"}
    assert {"best", "last"} <= set(rec["metrics_by_checkpoint"])
    out = tmp_path / "ref"
    rec_t = train(load_config(overrides={**AT, "train.epochs": 2, "eval.select_on": "test", "eval.val_n": 80}),
                  out, log=quiet)
    assert rec_t["selection"] == {"split": "test", "n": 80, "attack": "pgd20", "from_epoch": 1, "ties": "first"}
    assert {"best", "last"} <= set(rec_t["metrics_by_checkpoint"])


def test_sanity_warnings_count_violations_and_masking_signs():
    t, f = True, False
    flags = {"clean": torch.tensor([t, t, t, t, f]), "pgd20": torch.tensor([t, t, f, f, f]),
             "aa": torch.tensor([t, f, t, f, f]), "fgsm": torch.tensor([t, f, f, f, f])}
    w = sanity_warnings(flags)
    assert any("1 points are aa-robust but broken by pgd20" in s for s in w)
    assert any(s.startswith("fgsm accuracy") for s in w)
    flags["fgsm"] = torch.tensor([t, t, t, f, f])
    flags["aa"] = torch.tensor([t, f, f, f, t])
    w = sanity_warnings(flags, {"aa": {"stages": {"apgd-ce": 0.6, "apgd-t": 0.6, "fab-t": 0.6, "square": 0.4}}})
    assert any("1 points are aa-robust but misclassified clean" in s for s in w)
    assert any("Square" in s for s in w)
    assert not any(s.startswith("fgsm") for s in w)
    assert sanity_warnings({"clean": flags["clean"], "pgd20": flags["pgd20"]}) == []


def test_eps_sweep_falls_to_zero(at_run):
    _, model, x, y = at_run
    s = eps_sweep(model, x[:60], y[:60], EPS)
    assert s["eps"] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert s["robust"][-1] <= 0.05 and s["robust"][-1] <= s["robust"][0]
    assert not any("rises" in w for w in s["warnings"])


def test_missing_torchattacks_is_one_clear_error(at_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    before = (at_run[0] / "result.json").read_bytes()
    with pytest.raises(AttackUnavailable, match="pip install --no-deps torchattacks"):
        evaluate_run(at_run[0], ["clean", "aa_torchattacks"], n=5, log=quiet)
    assert (at_run[0] / "result.json").read_bytes() == before


def test_eval_cli_rejects_unknown_attack(at_run):
    from ltadv.cli import main

    assert main(["eval", str(at_run[0]), "--attacks", "clean,nope"]) == 2
