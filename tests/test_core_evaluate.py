"""Evaluation on a crafted model and a spy attack: which points are attacked, flags, groups, summaries.

The model reads its two logits straight from the first two input features; the spy attack swaps them
(so the point flips class) only where the third feature is 1, and records which points it was given.
"""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from ltadv import evaluate as ev
from ltadv.attacks import ATTACKS, AttackSettings
from ltadv.evaluate import class_groups, evaluate, robust_flags, sanity_warnings, summarize

# rows: (logit 0, logit 1, marker); y below
X = torch.tensor([
    [0.9, 0.1, 1.0],  # y 0: clean correct, broken by the spy
    [0.2, 0.8, 0.0],  # y 1: clean correct, robust
    [0.3, 0.7, 1.0],  # y 0: clean WRONG; the spy's swap would make it correct
    [0.6, 0.4, 0.0],  # y 1: clean wrong
    [0.7, 0.3, 0.0],  # y 0: clean correct, robust
])
Y = torch.tensor([0, 1, 0, 1, 0])


def reader():
    m = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    return m


@pytest.fixture
def spy(monkeypatch):
    seen = {"rows": [], "settings": []}

    def attack(model, x, y, eps, settings=None):
        seen["rows"] += [tuple(r) for r in x.tolist()]
        seen["settings"].append(settings)
        out = x.clone()
        hit = x[:, 2] > 0.5
        out[hit, 0], out[hit, 1] = x[hit, 1], x[hit, 0]
        return out

    monkeypatch.setitem(ATTACKS, "spy", attack)
    return seen


def test_class_groups_ties_and_odd_c():
    # C = 7; sorted by count, ties by index: 1, 6 (50) | 3, 5 (20), 0 (5) | 2 (5), 4 (1); round(7/3) = 2
    counts = [5, 50, 5, 20, 1, 20, 50]
    assert class_groups(counts) == {"head": [1, 6], "medium": [0, 3, 5], "tail": [2, 4]}


def test_class_groups_fractions_and_small_c():
    assert class_groups([3, 9, 1, 4, 2], head_frac=0.2, tail_frac=0.6) == \
        {"head": [1], "medium": [3], "tail": [0, 2, 4]}
    assert class_groups([4, 10, 1, 7], head_frac=0.5, tail_frac=0.5) == {"head": [1, 3], "medium": [], "tail": [0, 2]}
    assert class_groups([7]) == {"head": [0], "medium": [], "tail": []}
    assert class_groups([2, 9]) == {"head": [1], "medium": [], "tail": [0]}
    # tiny fractions still give one head and one tail class; the tail never eats the head
    assert class_groups([1, 2, 3, 4], head_frac=0.01, tail_frac=0.01) == \
        {"head": [3], "medium": [1, 2], "tail": [0]}
    assert class_groups([1, 2, 3], head_frac=0.67, tail_frac=0.67) == {"head": [1, 2], "medium": [], "tail": [0]}


def test_summarize_hand_numbers():
    flags = torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.bool)
    y = torch.tensor([0, 0, 0, 1, 1, 3, 3])  # class 2 absent
    groups = {"head": [0], "medium": [1, 2], "tail": [3]}
    s = summarize(flags, y, 4, groups)
    assert s["overall"] == pytest.approx(4 / 7)
    assert s["per_class"][:2] == pytest.approx([2 / 3, 1 / 2]) and math.isnan(s["per_class"][2])
    assert s["per_class"][3] == pytest.approx(1 / 2)
    assert s["balanced"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
    assert s["worst"] == pytest.approx(1 / 2)
    assert s["n"] == 7 and s["per_class_n"] == [3, 2, 0, 2]
    assert s["head"] == pytest.approx(2 / 3) and s["medium"] == pytest.approx(1 / 2) and s["tail"] == pytest.approx(0.5)


def test_summarize_empty_group_and_no_points():
    s = summarize(torch.tensor([True]), torch.tensor([0]), 2, {"head": [0], "tail": [1]})
    assert s["head"] == 1.0 and math.isnan(s["tail"])
    e = summarize(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long), 2, {"head": [0]})
    assert math.isnan(e["overall"]) and math.isnan(e["balanced"]) and math.isnan(e["worst"]) and math.isnan(e["head"])


@pytest.mark.parametrize("fast", [True, False])
def test_misclassified_points_are_not_attacked(spy, fast):
    model = reader().train()
    flags = robust_flags(model, X, Y, ["clean", "spy"], 0.1, batch_size=2, fast=fast)
    assert flags["clean"].tolist() == [True, True, False, False, True]
    assert flags["spy"].tolist() == [False, True, False, False, True]
    assert sorted(spy["rows"]) == sorted(tuple(r) for r in X[[0, 1, 4]].tolist())
    assert model.training  # mode restored


def test_attack_misclassified_attacks_every_point(spy):
    opts = SimpleNamespace(attack_misclassified=True, alpha=0.01)
    flags = robust_flags(reader(), X, Y, ["spy"], 0.1, batch_size=3, settings=opts)
    assert flags["spy"].tolist() == [False, True, True, False, True]  # point 2 is counted robust, as the scripts do
    assert sorted(spy["rows"]) == sorted(tuple(r) for r in X.tolist())
    assert all(s == AttackSettings(alpha=0.01) for s in spy["settings"])


def test_settings_reach_the_attack_and_details_time(spy):
    details = {}
    robust_flags(reader(), X, Y, ["spy"], 0.1, settings=SimpleNamespace(pgd_init="normal"), details=details)
    assert spy["settings"] == [AttackSettings(pgd_init="normal")]
    assert details["spy"]["seconds"] >= 0 and set(details) == {"spy"}


def test_evaluate_summaries_groups_and_outputs(spy, monkeypatch):
    def cascade(model, x, y, eps, settings=None):
        raise AssertionError("evaluation must use flags_fn")

    def flags_fn(model, x, y, eps, correct, batch_size, progress, state_path):
        return {"flags": correct & torch.tensor([False, False, False, False, True]), "seconds": 1.5,
                "stages": {"a": 0.4, "b": 0.2}}

    cascade.flags_fn = flags_fn
    monkeypatch.setitem(ATTACKS, "casc", cascade)
    flags_out, seconds_out = {}, {}
    counts = [10, 2]  # class 0 head, class 1 tail
    res = evaluate(reader(), X, Y, ["spy", "casc"], 0.1, counts, batch_size=2, flags_out=flags_out,
                   seconds_out=seconds_out)
    assert list(res) == ["spy", "casc"]  # clean only when asked for
    assert res["spy"]["per_class"] == pytest.approx([1 / 3, 1 / 2])
    assert res["spy"]["head"] == pytest.approx(1 / 3) and res["spy"]["tail"] == pytest.approx(1 / 2)
    assert res["casc"]["overall"] == pytest.approx(1 / 5) and res["casc"]["stages"] == {"a": 0.4, "b": 0.2}
    assert "stages" not in res["spy"]
    assert flags_out["casc"].tolist() == [False, False, False, False, True]
    assert seconds_out["casc"] == 1.5 and set(seconds_out) == {"spy", "casc"}
    res2 = evaluate(reader(), X, Y, ["clean"], 0.1, counts)
    assert list(res2) == ["clean"] and res2["clean"]["overall"] == pytest.approx(3 / 5)


def test_evaluate_default_group_fractions(spy):
    counts = [9, 8, 7, 6, 5, 4]  # thirds: head 0, 1; tail 4, 5
    x = torch.tensor([[0.9, 0.1, 0.0]] * 6)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    res = evaluate(reader(), x, y, ["clean"], 0.1, counts)
    # every point predicted 0: class 0 at 1.0, class 1 at 0.0, classes 2-5 absent (NaN)
    assert res["clean"]["head"] == pytest.approx(0.5)
    assert math.isnan(res["clean"]["tail"])


def test_sanity_warnings_messages():
    clean = torch.tensor([True, True, False, True])
    flags = {"clean": clean, "pgd20": torch.tensor([True, False, True, False]),
             "aa": torch.tensor([False, True, False, False]), "fgsm": torch.tensor([False, False, False, False]),
             "lsa": torch.tensor([False, False, False, False]), "cw": torch.tensor([True, True, False, False])}
    out = sanity_warnings(flags)
    assert "1 points are pgd20-robust but misclassified clean" in out
    assert "1 points are aa-robust but broken by pgd20 (aa missed points a weaker attack found)" in out
    assert "fgsm accuracy 0.000 is below pgd20 0.500: a single step beats 20, a sign of gradient masking" in out
    assert "lsa accuracy 0.000 is far below pgd20 0.500: cross-entropy gradients look masked" in out
    assert "aa accuracy 0.250 is far below pgd20 0.500: PGD-20 overstates robustness (gradient masking?)" in out
    assert not any(w.startswith("cw") for w in out)  # 0.5, not below pgd20
    assert len(out) == 5


def test_sanity_warnings_thresholds_and_square():
    t, f = True, False
    def acc(k):
        return torch.tensor([t] * k + [f] * (40 - k))

    base = {"clean": acc(40), "pgd20": acc(20)}
    # fgsm equal to pgd20 (0.5), lsa 0.025 below (gap 0.05), aa_apgd 0.075 below (gap 0.10): no warning
    assert sanity_warnings({**base, "fgsm": acc(20), "lsa": acc(19), "aa_apgd": acc(17)}) == []
    bad = {**base, "lsa": acc(17), "aa_apgd": acc(15), "fgsm": acc(19), "cw": acc(16)}
    assert [w.split(" ")[0] for w in sanity_warnings(bad)] == ["aa_apgd", "fgsm", "lsa", "cw"]
    metrics = {"aa": {"stages": {"apgd-ce": 0.5, "apgd-t": 0.45, "square": 0.447}}}
    assert sanity_warnings(base, metrics) == [
        "the black-box Square attack lowered AutoAttack accuracy by 0.003 after the white-box attacks: "
        "gradient masking likely"]
    metrics = {"aa": {"stages": {"apgd-ce": 0.5, "apgd-t": 0.45, "square": 0.449}}}
    assert sanity_warnings(base, metrics) == []  # within AutoAttack's 0.002
    assert sanity_warnings(base, {"aa": {"stages": {"square": 0.1}}}) == []  # nothing to compare with
    assert sanity_warnings({"clean": torch.tensor([t, f]), "pgd20": torch.tensor([t, t])}) == \
        ["1 points are pgd20-robust but misclassified clean"]


def _sweep(monkeypatch, values, n=200, **kw):
    calls = []
    seq = iter(values)

    def fake_flags(model, x, y, attacks, eps, batch_size=512, shard=None, settings=None):
        calls.append((model, x, y, attacks, eps, batch_size))
        k = round(next(seq) * n)
        return {attacks[0]: torch.tensor([True] * k + [False] * (n - k))}

    monkeypatch.setattr(ev, "robust_flags", fake_flags)
    return ev.eps_sweep("model", X, Y, 0.01, **kw), calls


def test_eps_sweep_warnings(monkeypatch):
    out, calls = _sweep(monkeypatch, [0.5, 0.6, 0.2, 0.1], n=10, attack="spy")
    assert out["attack"] == "spy" and out["eps"] == pytest.approx([0.01, 0.02, 0.04, 0.08])
    assert out["robust"] == pytest.approx([0.5, 0.6, 0.2, 0.1])
    assert out["warnings"] == [
        "spy accuracy rises with eps (0.500 at 0.01 -> 0.600 at 0.02)",
        "spy accuracy is still 0.100 at eps 0.08: it should fall to ~0 (gradient masking or a broken attack)"]
    assert [c[4] for c in calls] == pytest.approx([0.01, 0.02, 0.04, 0.08])
    assert all(c[0] == "model" and c[1] is X and c[2] is Y and c[3] == ["spy"] and c[5] == 512 for c in calls)


def test_eps_sweep_thresholds_and_defaults(monkeypatch):
    # a drop of 0.005 is no rise; a rise of 0.05 is; the last value 0 needs no warning
    out, calls = _sweep(monkeypatch, [0.6, 0.595, 0.645, 0.0])
    assert out["attack"] == "pgd20" and calls[0][3] == ["pgd20"]
    assert out["warnings"] == ["pgd20 accuracy rises with eps (0.595 at 0.02 -> 0.645 at 0.04)"]
    out, _ = _sweep(monkeypatch, [0.3, 0.1], factors=(1, 3), batch_size=7)
    assert out["eps"] == pytest.approx([0.01, 0.03]) and out["warnings"][0].startswith("pgd20 accuracy is still 0.100")


def test_merge_saved_flags(tmp_path):
    path = tmp_path / "flags.pt"
    a = ev.merge_saved_flags(path, "k1", {"pgd20": torch.tensor([True, False])})
    assert set(a) == {"pgd20"}
    b = ev.merge_saved_flags(path, "k1", {"fgsm": torch.tensor([1, 1])})
    assert set(b) == {"pgd20", "fgsm"} and b["fgsm"].dtype == torch.bool and b["pgd20"].tolist() == [True, False]
    c = ev.merge_saved_flags(path, "k2", {"cw": torch.tensor([False, False])})  # other key: earlier flags dropped
    assert set(c) == {"cw"}
    d = ev.merge_saved_flags(path, "k2", {"lsa": torch.tensor([False, False, True])})  # other length: dropped
    assert set(d) == {"lsa"}
    path.write_bytes(b"not a checkpoint")
    assert set(ev.merge_saved_flags(path, "k2", {"x": torch.tensor([True])})) == {"x"}


# ---- issue 14: the wiring of robust_flags / evaluate / eps_sweep, checked on the crafted reader model ----

def test_class_groups_two_classes_and_none():
    # C = 2, head_frac 0.75: round(2 * 0.75) = 2 head classes, and the tail is clipped to 2 - 2 = 0 classes
    assert class_groups([2, 9], head_frac=0.75) == {"head": [0, 1], "medium": [], "tail": []}
    assert class_groups([]) == {"head": [], "medium": [], "tail": []}


def test_to_float_scales_uint8_only():
    u = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    assert ev.to_float(u, "cpu")[0].tolist() == pytest.approx([0.0, 0.2, 1.0])  # 51 / 255 = 0.2
    assert ev.to_float(u, "cpu").dtype == torch.float32
    f = torch.tensor([[0.5, 3.0]], dtype=torch.float64)  # float pixels are not rescaled
    assert ev.to_float(f, "cpu").tolist() == [[0.5, 3.0]]
    assert ev.to_float(u, "meta").device.type == "meta"  # moved to the device it is given (no data needed)


@pytest.fixture
def probe(monkeypatch):
    """An attack that runs the model it is given, swaps the logits of marked rows like the spy, and
    records its labels, eps, batch sizes, the model and one random draw per batch."""
    seen = {"y": [], "eps": [], "sizes": [], "models": [], "draws": [], "settings": []}

    def attack(model, x, y, eps, settings=None):
        model(x)  # fails if no model is passed
        seen["y"].append(y.tolist())
        seen["eps"].append(eps)
        seen["sizes"].append(len(x))
        seen["models"].append(model)
        seen["settings"].append(settings)
        seen["draws"].append(torch.rand(2).tolist())
        out = x.clone()
        if x.dim() == 2:  # rows of (logit 0, logit 1, marker); images go back unchanged
            hit = x[:, 2] > 0.5
            out[hit, 0], out[hit, 1] = x[hit, 1], x[hit, 0]
        return out

    monkeypatch.setitem(ATTACKS, "probe", attack)
    return seen


def test_attack_gets_labels_eps_and_per_batch_seeds(probe):
    # clean-correct points 0, 1, 4 in batches of 2: [0, 1] and [4]
    expected = [torch.rand(2, generator=torch.Generator().manual_seed(ev.batch_seed("probe", b))).tolist()
                for b in (0, 1)]
    with torch.random.fork_rng():
        torch.manual_seed(1)
        flags = robust_flags(reader(), X, Y, ["probe"], 0.125, batch_size=2)
        assert flags["probe"].tolist() == [False, True, False, False, True]
        assert probe["y"] == [[0, 1], [0]] and probe["eps"] == [0.125, 0.125] and probe["sizes"] == [2, 1]
        # each batch draws from its own seed batch_seed(attack, batch index), whatever the caller's state
        assert probe["draws"] == expected and expected[0] != expected[1]
        model = reader()  # (its init draws from the generator)
        torch.manual_seed(2)
        robust_flags(model, X, Y, ["probe"], 0.125, batch_size=2)
        assert probe["draws"][2:] == expected
        # and the caller's generator is left where it was
        assert torch.rand(1).tolist() == torch.rand(1, generator=torch.Generator().manual_seed(2)).tolist()


def test_default_batch_size_512(probe):
    x = torch.tensor([[0.9, 0.1, 0.0]] * 513)  # 513 clean-correct points: batches of 512 and 1
    y = torch.zeros(513, dtype=torch.long)
    robust_flags(reader(), x, y, ["probe"], 0.1)
    assert probe["sizes"] == [512, 1]
    evaluate(reader(), x, y, ["probe"], 0.1, [5, 1])
    assert probe["sizes"][2:] == [512, 1]


def test_clean_is_not_attacked_and_seconds_from_the_clock(probe, monkeypatch):
    ticks = iter([100.0, 102.5])
    monkeypatch.setattr(ev, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    details = {}
    flags = robust_flags(reader(), X, Y, ["clean", "probe"], 0.1, details=details)
    assert set(details) == {"probe"} and details["probe"]["seconds"] == 2.5  # 102.5 - 100.0
    assert flags["clean"].tolist() == [True, True, False, False, True]


def test_unknown_attack_and_norm_without_an_l2_version(probe, monkeypatch):
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        robust_flags(reader(), X, Y, ["nope"], 0.1)

    def plain(model, x, y, eps):  # no settings: an L-inf-only attack that moves nothing
        return x

    monkeypatch.setitem(ATTACKS, "plain", plain)
    flags = robust_flags(reader(), X, Y, ["plain"], 0.1)  # L-inf: runs, without a settings argument
    assert flags["plain"].tolist() == [True, True, False, False, True]
    with pytest.raises(ValueError, match="^attack plain has no l2 version$"):
        robust_flags(reader(), X, Y, ["plain"], 0.1, settings=SimpleNamespace(norm="l2"))
    flags = robust_flags(reader(), X, Y, ["probe"], 0.1, settings=SimpleNamespace(norm="l2"))
    assert flags["probe"].tolist() == [False, True, False, False, True]
    assert probe["settings"] == [AttackSettings(norm="l2")]


def test_cascade_gets_its_arguments_and_later_attacks_still_run(probe, monkeypatch, tmp_path):
    got = {}

    def cascade(model, x, y, eps, settings=None):
        raise AssertionError("evaluation must use flags_fn")

    def flags_fn(model, x, y, eps, correct, batch_size, progress, state_path, shard, norm="linf"):
        got.update(model=model, x=x, y=y, eps=eps, correct=correct.tolist(), batch_size=batch_size,
                   progress=progress, state_path=state_path, shard=shard, norm=norm)
        return {"flags": correct & torch.tensor([False, False, False, True, True]), "seconds": 0.5, "stages": {}}

    cascade.flags_fn = flags_fn
    monkeypatch.setitem(ATTACKS, "casc", cascade)
    monkeypatch.setattr(ev.Shard, "combine", lambda self, values, owned: values)  # no process group
    model, shard = reader(), ev.Shard(1, 2)
    flags = robust_flags(model, X, Y, ["casc", "probe"], 0.25, batch_size=3, progress=True, state_dir=tmp_path,
                         fast=False, settings=SimpleNamespace(norm="l2"), shard=shard)
    assert got["model"] is model and got["x"] is X and got["y"] is Y and got["eps"] == 0.25
    # rank 1 of 2 predicted only its batch [3, 4] of the clean pass (the combine is stubbed out)
    assert got["correct"] == [False, False, False, False, True] and got["batch_size"] == 3
    assert got["progress"] is True and got["shard"] is shard and got["norm"] == "l2"
    assert got["state_path"] == tmp_path / "casc.rank1-of-2.pt"
    assert flags["casc"].tolist() == [False, False, False, False, True]
    assert "probe" in flags  # the attack after the cascade ran too
    got.clear()
    robust_flags(model, X, Y, ["casc"], 0.25, state_dir=str(tmp_path))
    assert got["state_path"] == tmp_path / "casc.pt" and got["norm"] == "linf" and got["progress"] is False
    got.clear()
    robust_flags(model, X, Y, ["casc"], 0.25)
    assert got["state_path"] is None


# Seven points, three features as above; clean-correct: 0, 1, 3, 5, 6; the probe breaks the marked 0, 3, 6
X7 = torch.tensor([[0.9, 0.1, 1.0], [0.2, 0.8, 0.0], [0.3, 0.7, 1.0], [0.1, 0.9, 1.0],
                   [0.6, 0.4, 0.0], [0.8, 0.2, 0.0], [0.35, 0.65, 1.0]])
Y7 = torch.tensor([0, 1, 0, 1, 1, 0, 1])


def test_two_ranks_own_their_batches_and_combine_to_the_whole(probe, monkeypatch):
    """Rank r of 2 attacks batches r, r + 2, ... and marks exactly their points as owned. The process group
    is emulated: the other rank contributes the single process's flags at the entries it does not own."""
    whole = robust_flags(reader(), X7, Y7, ["probe"], 0.1, batch_size=2)
    assert whole["clean"].tolist() == [True, True, False, True, False, True, True]
    assert whole["probe"].tolist() == [False, True, False, False, False, True, False]
    reference = [whole["clean"], whole["probe"]]
    calls = {0: [], 1: []}

    def combine(self, values, owned):
        calls[self.rank].append(owned.clone())
        return torch.where(owned, values, reference[len(calls[self.rank]) - 1])

    monkeypatch.setattr(ev.Shard, "combine", combine)
    for r in (0, 1):
        flags = robust_flags(reader(), X7, Y7, ["probe"], 0.1, batch_size=2, shard=ev.Shard(r, 2))
        assert {k: v.tolist() for k, v in flags.items()} == {k: v.tolist() for k, v in whole.items()}
    # clean: batches of the 7 points [0 1] [2 3] [4 5] [6]; probe: batches of the correct [0 1] [3 5] [6]
    owned = {r: [o.nonzero().flatten().tolist() for o in calls[r]] for r in (0, 1)}
    assert owned == {0: [[0, 1, 4, 5], [0, 1, 6]], 1: [[2, 3, 6], [3, 5]]}


@pytest.fixture
def slow_clock(monkeypatch):
    """Progress sees 30 s pass between two readings of its clock (so it prints a line at every update),
    and no terminal."""
    from ltadv import progress as progress_mod

    ticks = iter(range(30, 10_000, 30))
    monkeypatch.setattr(progress_mod, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    monkeypatch.setattr(progress_mod, "on_terminal", lambda: False)


def test_progress_lines(probe, slow_clock, monkeypatch, capsys):
    x, y = X.repeat(40, 1), Y.repeat(40)  # 200 points, 120 clean-correct: 2 batches of 60
    robust_flags(reader(), x, y, ["probe"], 0.1, batch_size=60)
    evaluate(reader(), x, y, ["probe"], 0.1, [3, 1], batch_size=60)
    assert capsys.readouterr().out == ""  # no progress unless asked for
    robust_flags(reader(), x, y, ["probe"], 0.1, batch_size=60, progress=True)
    # one batch per 30 s: 1/30 batch/s x 60 images = 2 img/s; 1 batch left -> ETA 30 s
    assert capsys.readouterr().out.splitlines() == ["probe on 120 points: 1/2 batches, 2 img/s, ETA 0:00:30",
                                                    "probe on 120 points: 2/2 batches, 2 img/s"]
    monkeypatch.setattr(ev.Shard, "combine", lambda self, values, owned: values)
    robust_flags(reader(), x, y, ["probe"], 0.1, batch_size=60, progress=True, shard=ev.Shard(0, 2))
    # the stubbed combine keeps this rank's clean batches 0 and 2 only (points 0-59, 120-179): 72 clean-correct
    # points in 2 batches of 60, batch 0 here
    assert capsys.readouterr().out.splitlines() == ["probe on 72 points (1 of 2 batches here): 1/1 batches, 2 img/s"]


def test_fast_view_is_the_default(probe):
    """By default the attack gets the BN-folded channels_last view; with fast=False the model itself.
    Both give the same flags."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 2), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    net.eval()
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        net[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 1.5]))
    x = torch.rand(6, 3, 2, 2)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    fast = robust_flags(net, x, y, ["probe"], 0.1)
    slow = robust_flags(net, x, y, ["probe"], 0.1, fast=False)
    assert fast["clean"].tolist() == slow["clean"].tolist() and fast["probe"].tolist() == slow["probe"].tolist()
    assert len(probe["models"]) == 2  # one batch per run
    view = probe["models"][0]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in view.modules())  # folded into the conv
    conv = next(m for m in view.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not net[0].weight.is_contiguous(memory_format=torch.channels_last)  # the live model is untouched
    assert view.channels_last is True
    assert probe["models"][1] is net


def test_evaluate_passes_its_arguments_and_fractions(monkeypatch, tmp_path):
    got = {}
    # per class: c0 (T, F) 1/2, c1 1, c2 0, c3 0, c4 (T, F) 1/2
    y = torch.tensor([0, 1, 2, 3, 4, 0, 4])
    canned = {"clean": torch.tensor([True, True, False, False, True, False, False]),
              "probe": torch.tensor([True, False, False, False, False, False, False])}

    def fake_flags(model, x, y, attacks, eps, batch_size, progress, state_dir, details, settings, shard):
        got.update(model=model, x=x, attacks=attacks, eps=eps, batch_size=batch_size, progress=progress,
                   state_dir=state_dir, settings=settings, shard=shard)
        return dict(canned)

    monkeypatch.setattr(ev, "robust_flags", fake_flags)
    opts, shard = SimpleNamespace(norm="l2"), ev.Shard(0, 1)
    # counts 3, 9, 1, 4, 2: by count 1, 3, 0, 4, 2; head 0.2 -> round(1.0) = 1 class, tail 0.6 -> round(3.0) = 3
    res = evaluate("m", X, y, ["probe", "clean"], 0.2, [3, 9, 1, 4, 2], head_frac=0.2, tail_frac=0.6,
                   state_dir=tmp_path, settings=opts, shard=shard)
    assert list(res) == ["clean", "probe"]  # clean first
    assert res["clean"]["head"] == 1.0 and res["clean"]["medium"] == 0.0  # head [1], medium [3]
    assert res["clean"]["tail"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)  # tail [0, 2, 4]
    assert got == {"model": "m", "x": X, "attacks": ["probe", "clean"], "eps": 0.2, "batch_size": 512,
                   "progress": False, "state_dir": tmp_path, "settings": opts, "shard": shard}
    evaluate("m", X, y, ["probe"], 0.2, [3, 9, 1, 4, 2], batch_size=7, progress=True)
    assert got["batch_size"] == 7 and got["progress"] is True and got["state_dir"] is None
    assert got["settings"] is None and got["shard"] is None


def test_eps_sweep_passes_shard_settings_and_norm(monkeypatch):
    seen = []
    opts, shard = SimpleNamespace(norm="l2"), ev.Shard(0, 1)

    def fake_flags(model, x, y, attacks, eps, batch_size=512, shard=None, settings=None):
        seen.append((batch_size, shard, settings))
        return {attacks[0]: torch.tensor([False, False])}

    monkeypatch.setattr(ev, "robust_flags", fake_flags)
    out = ev.eps_sweep("model", X, Y, 0.5, factors=(1, 2), batch_size=7, shard=shard, settings=opts)
    assert out["norm"] == "l2" and out["eps"] == [0.5, 1.0] and out["warnings"] == []
    assert all(s[0] == 7 and s[1] is shard and s[2] is opts for s in seen)
    assert "norm" not in ev.eps_sweep("model", X, Y, 0.5, factors=(1,), settings=SimpleNamespace(norm="linf"))
    assert "norm" not in ev.eps_sweep("model", X, Y, 0.5, factors=(1,))


def test_sanity_square_with_one_white_box_stage_and_the_exact_gap():
    base = {"clean": torch.tensor([True, True]), "pgd20": torch.tensor([True, False])}
    out = sanity_warnings(base, {"aa": {"stages": {"apgd-ce": 0.5, "square": 0.4}}})
    assert out == ["the black-box Square attack lowered AutoAttack accuracy by 0.100 after the white-box attacks: "
                   "gradient masking likely"]
    # 0.5 - 0.002 == 0.498 exactly in double: a drop of exactly SQUARE_GAIN is no warning
    assert sanity_warnings(base, {"aa": {"stages": {"apgd-ce": 0.5, "square": 0.498}}}) == []
