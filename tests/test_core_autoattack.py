"""The resumable AutoAttack cascade (ltadv.attacks.autoattack), fast enough for mutation testing.

Most tests drive ``run_cascade`` with crafted fake stages on a model whose logits are the first three
input features, so which point each stage breaks, sees and returns is known by hand. A fake clock makes
the attack time and the progress lines exact. A few tests run the official pyautoattack sub-attacks at
the smallest budgets on a linear model over 1x2x2 images whose L-inf / L2 margins are known.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn as nn

from ltadv import progress as progress_mod
from ltadv.attacks import ATTACKS, AttackSettings
from ltadv.attacks import autoattack as aa_mod
from ltadv.attacks.autoattack import (
    AttackUnavailable,
    _agree,
    _load_state,
    _save_atomic,
    _valid_state,
    aa_apgd_flags,
    aa_flags,
    autoattack_stages,
    cascade_key,
    frozen,
    run_cascade,
)


def quiet(*a, **k):
    pass


def reader(n_features: int = 5) -> nn.Linear:
    """Logits = the first three features (a parameter, so the model has a device and can be frozen)."""
    m = nn.Linear(n_features, 3, bias=False)
    with torch.no_grad():
        m.weight.zero_()
        m.weight[0, 0] = m.weight[1, 1] = m.weight[2, 2] = 1.0
    return m


class FlatReader(nn.Module):
    """The same logits without any parameter (the cascade then runs on the CPU)."""

    def forward(self, x):
        return x[:, :3]


# features: (logit 0, logit 1, logit 2, point id, stage mark)
X = torch.tensor([
    [0.9, 0.0, 0.1, 0, 0],  # 0: y 0, correct
    [0.1, 0.8, 0.0, 1, 0],  # 1: y 1, correct
    [0.2, 0.1, 0.7, 2, 0],  # 2: y 2, correct
    [0.6, 0.3, 0.1, 3, 0],  # 3: y 1, misclassified clean (predicts 0): never attacked
    [0.5, 0.1, 0.4, 4, 0],  # 4: y 0, correct
    [0.0, 0.6, 0.3, 5, 0],  # 5: y 1, correct
    [0.3, 0.2, 0.5, 6, 0],  # 6: y 2, correct
    [0.4, 0.35, 0.25, 7, 0],  # 7: y 0, correct
])
Y = torch.tensor([0, 1, 2, 1, 0, 1, 2, 0])
# which point ids each stage can break (3 and 4 again: never offered to it)
BREAKS = {"s1": {1, 3, 4}, "s2": {0, 4, 6}, "s3": {2, 6}}
# the cascade with batch_size 2: s1 gets the clean-correct points 0 1 2 4 5 6 7, breaks 1 and 4; s2 gets
# 0 2 5 6 7, breaks 0 and 6; s3 gets 2 5 7, breaks 2; 5 and 7 stay robust
CALLS = [("s1", [0, 1]), ("s1", [2, 4]), ("s1", [5, 6]), ("s1", [7]),
         ("s2", [0, 2]), ("s2", [5, 6]), ("s2", [7]),
         ("s3", [2, 5]), ("s3", [7])]
BROKEN_BY = [2, 1, 3, 0, 1, -1, 2, -1]
FLAGS = [False, False, False, False, False, True, False, True]


class Clock:
    """A fake perf_counter: only the fake stages advance it (10 s per batch)."""

    def __init__(self):
        self.t = 1000.0

    def perf_counter(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    fake_time = types.SimpleNamespace(perf_counter=c.perf_counter)
    monkeypatch.setattr(aa_mod, "time", fake_time)
    monkeypatch.setattr(progress_mod, "time", fake_time)
    monkeypatch.setattr(progress_mod, "on_terminal", lambda: False)  # progress as plain log lines
    return c


class Stop(Exception):
    """A job killed in the middle of a batch."""


def make_stages(calls, clock=None, stop_at=None, names=("s1", "s2", "s3"), breaks=BREAKS):
    """Fake stages: each breaks the points of BREAKS[name] by raising the logit of class (y + 1) % 3 to
    the true class's logit + 0.5, and writes its number into the mark feature of every image it returns."""

    def stage(k, name):
        def fn(x, y):
            if stop_at is not None and len(calls) == stop_at:
                raise Stop
            calls.append((name, [int(i) for i in x[:, 3]], y.tolist()))
            out = x.clone()
            for r in range(len(x)):
                if int(x[r, 3]) in breaks[name]:
                    out[r, (int(y[r]) + 1) % 3] = x[r, int(y[r])] + 0.5
            out[:, 4] = k + 1
            if clock is not None:
                clock.t += 10.0
            return out
        return fn

    return [(name, stage(k, name)) for k, name in enumerate(names)]


def ids(calls):
    return [(name, points) for name, points, _ in calls]


# ---- the cascade with fake stages ----------------------------------------------------------------------------

def test_each_stage_sees_only_the_points_still_robust_and_keeps_their_images():
    calls = []
    res = run_cascade(reader(), X, Y, make_stages(calls), batch_size=2, return_adv=True, log=quiet)
    assert ids(calls) == CALLS
    assert all(labels == Y[points].tolist() for _, points, labels in calls)  # each image with its own label
    assert res["broken_by"].tolist() == BROKEN_BY and res["broken_by"].dtype == torch.int16
    assert res["flags"].tolist() == FLAGS
    # robust accuracy after each stage: points neither misclassified nor broken by it or an earlier stage
    # s1: 0 2 5 6 7 -> 5/8; s2: 2 5 7 -> 3/8; s3: 5 7 -> 2/8
    assert res["stages"] == {"s1": 5 / 8, "s2": 3 / 8, "s3": 2 / 8}
    # a broken point keeps the image of the stage that broke it: logit (y+1)%3 = logit y + 0.5, stage mark
    expected = X.clone()
    expected[1] = torch.tensor([0.1, 0.8, 1.3, 1, 1])  # y 1 -> logit 2 = 0.8 + 0.5, by s1
    expected[4] = torch.tensor([0.5, 1.0, 0.4, 4, 1])  # y 0 -> logit 1 = 0.5 + 0.5, by s1
    expected[0] = torch.tensor([0.9, 1.4, 0.1, 0, 2])  # y 0 -> logit 1 = 0.9 + 0.5, by s2
    expected[6] = torch.tensor([1.0, 0.2, 0.5, 6, 2])  # y 2 -> logit 0 = 0.5 + 0.5, by s2
    expected[2] = torch.tensor([1.2, 0.1, 0.7, 2, 3])  # y 2 -> logit 0 = 0.7 + 0.5, by s3
    # the robust 5 and 7 and the misclassified 3 keep the clean image (no stage mark)
    assert torch.allclose(res["x_adv"], expected)
    assert X[:, 4].abs().sum() == 0  # the caller's images are not written into


def test_given_correct_flags_decide_which_points_are_attacked():
    calls = []
    correct = torch.tensor([1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.uint8)  # 2 and 7 declared wrong, 3 declared right
    res = run_cascade(reader(), X, Y, make_stages(calls, names=("s1", "s2")), correct=correct, batch_size=3,
                      log=quiet)
    # s1 on 0 1 3 4 5 6: 3 is misclassified by the model, so any image of it counts as broken
    assert ids(calls) == [("s1", [0, 1, 3]), ("s1", [4, 5, 6]), ("s2", [0, 5, 6])]
    assert res["broken_by"].tolist() == [2, 1, 0, 1, 1, -1, 2, 0]
    assert res["stages"] == {"s1": 3 / 8, "s2": 1 / 8}


def test_clean_pass_batches_and_uint8_pixels():
    # 5 uint8 points; logits = pixel / 255; the clean pass runs in batches of 2 (2 + 2 + 1)
    xu = torch.tensor([[200, 10, 30, 0, 0], [10, 200, 0, 1, 0], [90, 60, 30, 2, 0], [0, 5, 250, 3, 0],
                       [100, 120, 90, 4, 0]], dtype=torch.uint8)
    yu = torch.tensor([0, 1, 1, 2, 1])  # point 2 predicts 0: misclassified
    seen = []

    def s1(x, y):
        seen.append(x.clone())
        out = x.clone()
        out[:, 2] = 1.0  # every point now predicts class 2: 0, 1, 4 broken; 3 (y 2) stays robust
        return out

    res = run_cascade(FlatReader(), xu, yu, [("s1", s1)], batch_size=2, return_adv=True, log=quiet)
    assert res["broken_by"].tolist() == [1, 1, 0, -1, 1]
    assert res["stages"] == {"s1": 1 / 5}
    # the stage got float pixels in [0, 1]: points 0 1 then 3 4
    assert torch.allclose(seen[0], xu[[0, 1]].float() / 255) and torch.allclose(seen[1], xu[[3, 4]].float() / 255)
    assert res["x_adv"].dtype == torch.float32
    assert res["x_adv"][2].tolist() == pytest.approx([90 / 255, 60 / 255, 30 / 255, 2 / 255, 0])
    assert res["x_adv"][0].tolist() == pytest.approx([200 / 255, 10 / 255, 1.0, 0, 0])


def test_default_batches_hold_500_points():
    x, y = many_points(1001)
    calls = []
    run_cascade(reader(), x, y, make_stages(calls, names=("s1",)), log=quiet)
    assert [len(p) for _, p, _ in calls] == [500, 500, 1]


def test_empty_and_single_point_sets():
    calls = []
    res = run_cascade(reader(), X[:0], Y[:0], make_stages(calls), correct=torch.zeros(0, dtype=torch.bool),
                      log=quiet)
    assert calls == [] and res["stages"] == {"s1": 0.0, "s2": 0.0, "s3": 0.0} and res["flags"].tolist() == []
    res = run_cascade(reader(), X[5:6], Y[5:6], make_stages(calls), log=quiet)  # point 5: never broken
    assert res["stages"] == {"s1": 1.0, "s2": 1.0, "s3": 1.0} and res["broken_by"].tolist() == [-1]


def test_model_mode_and_parameters_restored_and_frozen_during_the_attack():
    model = reader()
    model.train()
    during = []

    def s1(x, y):
        during.append((model.training, model.weight.requires_grad))
        return x

    run_cascade(model, X, Y, [("s1", s1)], batch_size=8, log=quiet)
    assert during == [(False, False)] and model.training and model.weight.requires_grad

    def boom(x, y):
        raise Stop

    with pytest.raises(Stop):
        run_cascade(model, X, Y, [("s1", boom)], log=quiet)
    assert model.training and model.weight.requires_grad  # restored after an error too
    model.eval()
    with frozen(model):
        assert not model.weight.requires_grad
    assert not model.training and model.weight.requires_grad


def test_a_stage_reseeding_the_generator_leaves_the_callers_stream_alone():
    def reseeds(x, y):
        torch.manual_seed(123)
        torch.rand(3)
        return x

    model = reader()  # its initialisation draws from the generator
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    run_cascade(model, X, Y, [("s1", reseeds), ("s2", reseeds)], batch_size=3, log=quiet)
    assert torch.equal(torch.rand(4), expected)


def test_progress_lines_and_attack_seconds_from_the_clock(clock):
    calls, logs = [], []
    res = run_cascade(reader(), X, Y, make_stages(calls, clock), batch_size=2, progress=True, log=logs.append)
    assert res["seconds"] == 90.0  # 9 batches of 10 s
    # a line every 30 s within a stage (3 batches): s1 after 30 s at 3 of 4 batches (0.1 batch/s x 2 images,
    # 10 s left), s2 after its 3rd batch; then one line per finished stage
    assert logs == ["s1 on 7 points: 3/4 batches, 0 img/s, ETA 0:00:10",
                    "s1: 5 of 8 points still robust (62.5%) after 40 s",
                    "s2 on 5 points: 3/3 batches, 0 img/s",
                    "s2: 3 of 8 points still robust (37.5%) after 70 s",
                    "s3: 2 of 8 points still robust (25.0%) after 90 s"]
    logs.clear()
    run_cascade(reader(), X, Y, make_stages([], clock), batch_size=2, log=logs.append)
    assert logs == []  # without progress: silent


# ---- saved state and resume ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stop_at", range(1, len(CALLS)))
def test_resume_after_a_kill_at_any_batch_equals_one_run(tmp_path, clock, stop_at):
    path = tmp_path / "aa.pt"
    first = []
    with pytest.raises(Stop):
        run_cascade(reader(), X, Y, make_stages(first, clock, stop_at), batch_size=2, state_path=path, key="k",
                    log=quiet)
    assert ids(first) == CALLS[:stop_at]
    second, logs = [], []
    res = run_cascade(reader(), X, Y, make_stages(second, clock), batch_size=2, state_path=path, key="k",
                      log=logs.append)
    assert ids(second) == CALLS[stop_at:]  # no batch twice, none left out, the same batches
    assert res["broken_by"].tolist() == BROKEN_BY and res["flags"].tolist() == FLAGS
    assert res["seconds"] == 90.0  # summed over both sessions
    assert res["stages"] == {"s1": 5 / 8, "s2": 3 / 8, "s3": 2 / 8}
    stage = ["s1", "s2", "s3"].index(CALLS[stop_at][0])
    batch = stop_at - [n for n, _ in CALLS].index(CALLS[stop_at][0]) + 1
    assert logs == [f"resuming s1+s2+s3 at s{stage + 1}, batch {batch}"]


def test_resume_with_progress_counts_the_batches_done_before(tmp_path, clock):
    path = tmp_path / "aa.pt"
    with pytest.raises(Stop):
        run_cascade(reader(), X, Y, make_stages([], clock, 1), batch_size=2, state_path=path, key="k", log=quiet)
    logs = []
    run_cascade(reader(), X, Y, make_stages([], clock), batch_size=2, state_path=path, key="k", progress=True,
                log=logs.append)
    # s1 resumes at its batch 2: 3 batches (30 s) in this session, 4 of 4 done; 10 s of session 1 + 30 s
    assert logs[:3] == ["resuming s1+s2+s3 at s1, batch 2", "s1 on 7 points: 4/4 batches, 0 img/s",
                        "s1: 5 of 8 points still robust (62.5%) after 40 s"]


def test_state_file_after_each_batch_and_a_finished_state_is_reused(tmp_path, clock):
    path = tmp_path / "aa.pt"
    with pytest.raises(Stop):
        run_cascade(reader(), X, Y, make_stages([], clock, 5), batch_size=2, state_path=path, key="k", log=quiet)
    state = torch.load(path, weights_only=True)
    # killed in s2's batch 2: s1 broke 1 and 4, s2's batch 1 broke 0; s2 started from the s1 survivors
    assert state["key"] == "k" and state["stages"] == ["s1", "s2", "s3"]
    assert state["stage"] == 1 and state["batches_done"] == 1 and state["seconds"] == 50.0
    assert state["flags"].tolist() == [False, False, True, False, False, True, True, True]
    assert state["start_flags"].tolist() == [True, False, True, False, False, True, True, True]
    assert state["broken_by"].tolist() == [2, 1, -1, 0, 1, -1, -1, -1]
    run_cascade(reader(), X, Y, make_stages([], clock), batch_size=2, state_path=path, key="k", log=quiet)
    done = torch.load(path, weights_only=True)
    assert done["stage"] == 3 and done["batches_done"] == 0 and done["broken_by"].tolist() == BROKEN_BY
    assert [p.name for p in tmp_path.iterdir()] == ["aa.pt"]  # no temporary file left behind
    logs, calls = [], []
    again = run_cascade(reader(), X, Y, make_stages(calls), batch_size=2, state_path=path, key="k",
                        log=logs.append)
    assert calls == [] and again["broken_by"].tolist() == BROKEN_BY and again["seconds"] == 90.0
    assert logs == ["resuming s1+s2+s3 at end, batch 1"]


def test_a_state_of_other_settings_or_a_damaged_one_starts_again(tmp_path):
    path = tmp_path / "aa.pt"
    run_cascade(reader(), X, Y, make_stages([]), batch_size=2, state_path=path, key="k", log=quiet)
    logs, calls = [], []
    res = run_cascade(reader(), X, Y, make_stages(calls), batch_size=2, state_path=path, key="other",
                      log=logs.append)
    assert ids(calls) == CALLS and res["broken_by"].tolist() == BROKEN_BY
    assert logs == [f"attack state {path} belongs to other weights, data or settings; starting again"]
    # the same key but a state for 7 points, or past the last of 2 stages: damaged
    full = torch.load(path, weights_only=True)
    short = {**full, "stage": 1, **{k: full[k][:7] for k in ("flags", "start_flags", "broken_by")}}
    for bad in ({**short, "key": "k"}, {**full, "key": "k", "stage": 3}):
        torch.save(bad, path)
        logs, calls = [], []
        run_cascade(reader(), X, Y, make_stages(calls, names=("s1", "s2")), batch_size=2, state_path=path,
                    key="k", log=logs.append)
        assert logs == [f"attack state {path} is damaged (fields of the wrong type or length); starting again"]
        assert ids(calls) == CALLS[:7]


def test_return_adv_needs_one_process_without_state_file(tmp_path):
    msg = r"^return_adv is only available without a state file, in one process$"
    with pytest.raises(ValueError, match=msg):
        run_cascade(reader(), X, Y, make_stages([]), state_path=tmp_path / "aa.pt", return_adv=True, log=quiet)
    with pytest.raises(ValueError, match=msg):
        run_cascade(reader(), X, Y, make_stages([]), return_adv=True, log=quiet, shard=OtherRanks(0, 2, []))


def test_load_state_checks(tmp_path):
    logs = []
    assert _load_state(None, "k", logs.append) is None
    assert _load_state(tmp_path / "missing.pt", "k", logs.append) is None and logs == []
    path = tmp_path / "s.pt"
    good = {"key": "k", "flags": torch.ones(2, dtype=torch.bool), "start_flags": torch.ones(2, dtype=torch.bool),
            "broken_by": torch.zeros(2, dtype=torch.int16), "stage": 1, "batches_done": 0, "seconds": 0}
    torch.save(good, path)
    assert _load_state(path, "k", logs.append)["stage"] == 1 and logs == []
    assert _load_state(path, "k", logs.append, 2, 1)["stage"] == 1
    assert _load_state(path, "k", logs.append, 3) is None
    torch.save([good], path)  # not a dict
    assert _load_state(path, "k", logs.append) is None
    torch.save({**good, "extra": Opaque()}, path)  # a pickled object: not loaded with weights_only
    assert _load_state(path, "k", logs.append) is None
    path.write_bytes(b"not a torch file")
    assert _load_state(path, "k", logs.append) is None
    assert logs == [f"attack state {path} is damaged (fields of the wrong type or length); starting again",
                    f"attack state {path} belongs to other weights, data or settings; starting again",
                    f"ignoring unreadable attack state {path} (UnpicklingError); starting again",
                    f"ignoring unreadable attack state {path} (UnpicklingError); starting again"]


class Opaque:
    pass


class Unpicklable:
    def __reduce__(self):
        raise Stop


def test_valid_state_fields():
    good = {"flags": torch.ones(3, dtype=torch.bool), "start_flags": torch.zeros(3, dtype=torch.bool),
            "broken_by": torch.full((3,), -1, dtype=torch.int16), "stage": 0, "batches_done": 0, "seconds": 0}
    assert _valid_state(good, 3, 2) and _valid_state(good, None, None)
    assert _valid_state({**good, "stage": 2, "batches_done": 4, "seconds": 1.5}, 3, 2)
    assert _valid_state({**good, "stage": 7}, None, None)  # no stage count given: any stage >= 0
    assert _valid_state({k: v[:2] if isinstance(v, torch.Tensor) else v for k, v in good.items()}, None, 2)
    for bad in ({**good, "stage": 3}, {**good, "stage": -1}, {**good, "stage": 1.0}, {**good, "batches_done": -1},
                {**good, "batches_done": 0.0}, {**good, "seconds": "0"}, {**good, "flags": torch.ones(3)},
                {**good, "start_flags": torch.ones(3)}, {**good, "broken_by": torch.zeros(3)},
                {**good, "broken_by": [-1, -1, -1]}, {**good, "flags": torch.ones(1, 3, dtype=torch.bool)},
                {**good, "start_flags": torch.ones(4, dtype=torch.bool)},
                {**good, "broken_by": torch.zeros(2, dtype=torch.int16)},
                {k: v for k, v in good.items() if k != "seconds"}, {k: v for k, v in good.items() if k != "flags"}):
        assert not _valid_state(bad, 3, 2), bad
    assert not _valid_state(None, 3, 2)


def test_save_atomic_creates_folders_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "a" / "b" / "aa.pt"
    _save_atomic(path, {"stage": 1})
    _save_atomic(path, {"stage": 2})  # the folder exists now: fine
    assert torch.load(path, weights_only=True) == {"stage": 2}
    renames = []
    real_replace = aa_mod.os.replace
    monkeypatch.setattr(aa_mod.os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b)))
    _save_atomic(path, {"stage": 3})
    (tmp, dst), = renames  # written beside the target (same file system), then renamed over it
    assert dst == path and tmp != str(path) and str(tmp).startswith(str(path.parent / ".aa.pt."))
    with pytest.raises(Stop):
        _save_atomic(path, {"stage": Unpicklable()})
    assert [p.name for p in path.parent.iterdir()] == ["aa.pt"]
    assert torch.load(path, weights_only=True) == {"stage": 3}

    def interrupted_after_rename(a, b):
        real_replace(a, b)
        raise Stop  # e.g. a signal right after the rename: the temporary file is already gone

    monkeypatch.setattr(aa_mod.os, "replace", interrupted_after_rename)
    with pytest.raises(Stop):  # the interruption itself, not a FileNotFoundError from the clean-up
        _save_atomic(path, {"stage": 5})
    assert torch.load(path, weights_only=True) == {"stage": 5}


def test_cascade_key_depends_on_every_input():
    m = reader()
    base = cascade_key(m, X, Y, 0.1, ["a", "b"], 2, 0)
    assert cascade_key(reader(), X.clone(), Y, 0.1, ["a", "b"], 2, 0) == base
    renamed = nn.Sequential(reader())  # the same weights under another parameter name
    other = [cascade_key(renamed, X, Y, 0.1, ["a", "b"], 2, 0), cascade_key(m, X * 0.5, Y, 0.1, ["a", "b"], 2, 0),
             cascade_key(m, X, Y.roll(1), 0.1, ["a", "b"], 2, 0), cascade_key(m, X, Y, 0.2, ["a", "b"], 2, 0),
             cascade_key(m, X, Y, 0.1, ["b", "a"], 2, 0), cascade_key(m, X, Y, 0.1, ["a", "b"], 3, 0),
             cascade_key(m, X, Y, 0.1, ["a", "b"], 2, 1)]
    with torch.no_grad():
        m.weight[2, 0] = 0.25
    other.append(cascade_key(m, X, Y, 0.1, ["a", "b"], 2, 0))
    assert len(set(other + [base])) == len(other) + 1


# ---- several processes (the shard's collectives played by a fake) -----------------------------------------------

class OtherRanks:
    """Rank ``rank`` of ``world_size``; ``others[i]`` is what the other ranks hold at their entries after the
    i-th combine (the test computes them by hand); gather/broadcast answer from ``stages`` / ``shared``."""

    def __init__(self, rank, world_size, others, stages=None, shared=None):
        self.rank, self.world_size, self.enabled = rank, world_size, True
        self.others, self.stages, self.shared = list(others), stages, shared
        self.owned, self.broadcasts = [], []

    def mine(self, n_batches):
        return range(self.rank, n_batches, self.world_size)

    def combine(self, values, owned):
        self.owned.append(owned.clone())
        return torch.where(owned, values, self.others.pop(0).to(values.dtype))

    def gather_objects(self, obj):
        return [obj] * self.world_size if self.stages is None else list(self.stages)

    def broadcast_object(self, obj, src):
        self.broadcasts.append((obj, src))
        return obj if src == self.rank else self.shared


def test_one_rank_attacks_its_batches_and_takes_the_others_results():
    # rank 1 of 2, batch_size 2: s1's batches [0 1] [2 4] [5 6] [7] -> rank 1 runs [2 4] and [7], breaks 4;
    # rank 0 (scripted) ran [0 1] [5 6] and broke 1 and 6. s2 then gets 0 2 5 7: batches [0 2] [5 7], rank 1
    # runs [5 7] and breaks nothing; rank 0 broke 0.
    after_s1 = torch.tensor([True, False, True, False, False, True, False, True])
    bb_s1 = torch.tensor([-1, 1, -1, 0, 1, -1, 1, -1])
    after_s2 = after_s1.clone()
    after_s2[0] = False
    bb_s2 = bb_s1.clone()
    bb_s2[0] = 2
    shard = OtherRanks(1, 2, [after_s1, bb_s1, after_s2, bb_s2])
    calls = []
    res = run_cascade(reader(), X, Y, make_stages(calls, names=("s1", "s2")), batch_size=2, log=quiet, shard=shard)
    assert ids(calls) == [("s1", [2, 4]), ("s1", [7]), ("s2", [5, 7])]
    s1_owned = [False, False, True, False, True, False, False, True]
    s2_owned = [False, False, False, False, False, True, False, True]
    assert [o.tolist() for o in shard.owned] == [s1_owned, s1_owned, s2_owned, s2_owned]
    assert res["broken_by"].tolist() == [2, 1, -1, 0, 1, -1, 1, -1]
    assert res["flags"].tolist() == [False, False, True, False, False, True, False, True]
    assert res["stages"] == {"s1": 4 / 8, "s2": 3 / 8}


def test_a_rank_behind_resumes_at_the_stage_another_rank_finished(tmp_path):
    path = tmp_path / "aa.rank1.pt"
    # rank 1 was killed after its s1 batches, before the combine; rank 0 (process 0) finished s1 and s2
    behind = {"key": "k", "stages": ["s1", "s2", "s3"], "flags": torch.tensor([True] * 3 + [False] + [True] * 4),
              "start_flags": torch.tensor([True] * 3 + [False] + [True] * 4), "stage": 1, "batches_done": 2,
              "broken_by": torch.tensor([-1, -1, -1, 0, -1, -1, -1, -1], dtype=torch.int16), "seconds": 5.0}
    behind["flags"][4] = False
    behind["broken_by"][4] = 1
    torch.save(behind, path)
    flags = torch.tensor([True, False, True, False, False, True, True, True])
    shared = {"flags": flags, "start_flags": flags.clone(),
              "broken_by": torch.tensor([-1, 1, -1, 0, 1, -1, -1, -1], dtype=torch.int16)}
    shard = OtherRanks(1, 2, [], stages=[2, 1], shared=shared)
    logs = []
    with pytest.raises(Stop):
        run_cascade(reader(), X, Y, make_stages([], stop_at=0), batch_size=2, state_path=path, key="k",
                    log=logs.append, shard=shard)
    assert logs == ["resuming the cascade after its stage 2, which process 0 finished",
                    "resuming s1+s2+s3 at s3, batch 1"]
    assert shard.broadcasts == [(None, 0)]
    saved = torch.load(path, weights_only=True)  # the agreed state is saved before any batch runs
    assert saved["stage"] == 2 and saved["batches_done"] == 0 and saved["seconds"] == 5.0
    assert saved["flags"].tolist() == flags.tolist() and saved["broken_by"].tolist() == [-1, 1, -1, 0, 1, -1, -1, -1]


def test_a_rank_told_it_is_behind_without_a_state_file_takes_the_shared_flags():
    # fresh ranks all start at stage 0; should another rank report a later stage, this one follows it and
    # (with no state file) writes nothing
    flags = torch.tensor([True, False, True, False, False, True, True, True])
    shared = {"flags": flags, "start_flags": flags.clone(),
              "broken_by": torch.tensor([-1, 1, -1, 0, 1, -1, -1, -1], dtype=torch.int16)}
    calls = []
    shard = OtherRanks(0, 2, [torch.tensor(FLAGS), torch.tensor(BROKEN_BY)], stages=[0, 2], shared=shared)
    res = run_cascade(reader(), X, Y, make_stages(calls), batch_size=2, log=quiet, shard=shard)
    # s3 on 0 2 5 6 7: batches [0 2] [5 6] [7], rank 0 runs [0 2] and [7] and breaks 2
    assert ids(calls) == [("s3", [0, 2]), ("s3", [7])]
    assert res["broken_by"].tolist()[:3] == [-1, 1, 3]  # 0 robust in the shared flags, 2 broken here


def test_agree_takes_the_furthest_stage_from_its_process():
    def state(stage, done, flags):
        f = torch.tensor(flags)
        return {"stage": stage, "batches_done": done, "flags": f, "start_flags": ~f,
                "broken_by": torch.where(f, -1, 3).to(torch.int16), "seconds": 2.0}

    lead = state(3, 1, [True, False, False])
    shared = {k: lead[k] for k in ("flags", "broken_by", "start_flags")}
    logs = []
    behind = state(1, 4, [True, True, False])
    shard = OtherRanks(2, 3, [], stages=[1, 3, 1], shared=shared)
    got = _agree(behind, shard, logs.append)
    assert got["stage"] == 3 and got["batches_done"] == 0 and got["seconds"] == 2.0
    assert got["flags"].tolist() == [True, False, False] and got["start_flags"].tolist() == [False, True, True]
    assert behind["stage"] == 1 and behind["flags"].tolist() == [True, True, False]  # not changed in place
    assert shard.broadcasts == [(None, 1)]
    assert logs == ["resuming the cascade after its stage 3, which process 1 finished"]
    # the leader sends its own flags and keeps its progress
    shard = OtherRanks(1, 3, [], stages=[1, 3, 1], shared=None)
    got = _agree(lead, shard, logs.append)
    assert got is lead and got["batches_done"] == 1 and len(logs) == 1
    (sent, src), = shard.broadcasts
    assert src == 1 and sent["flags"] is lead["flags"] and sorted(sent) == ["broken_by", "flags", "start_flags"]
    # all at the same stage: nothing sent
    shard = OtherRanks(0, 3, [], stages=[2, 2, 2])
    assert _agree(state(2, 1, [True, True, True]), shard, logs.append)["batches_done"] == 1
    assert shard.broadcasts == [] and len(logs) == 1


# ---- the AutoAttack wiring with fake sub-attacks ---------------------------------------------------------------

AA_BREAKS = {"apgd-ce": {1}, "apgd-t": {4}, "fab-t": {6}, "square": {0, 2}}


@pytest.fixture
def fake_aa(monkeypatch):
    """autoattack_stages replaced by four fake stages that record the settings they were built with."""
    built = []

    def fake(model, eps, num_classes, seed=0, n_iter=100, n_queries=5000, norm="linf"):
        built.append({"eps": eps, "num_classes": num_classes, "seed": seed, "n_iter": n_iter,
                      "n_queries": n_queries, "norm": norm})
        return make_stages(built, names=("apgd-ce", "apgd-t", "fab-t", "square"), breaks=AA_BREAKS)

    monkeypatch.setattr(aa_mod, "autoattack_stages", fake)
    return built


def test_aa_and_aa_apgd_flags_run_their_sub_attacks_with_a_key_of_their_settings(fake_aa, tmp_path, clock):
    res = aa_flags(reader(), X, Y, 0.25, batch_size=3, state_path=tmp_path / "aa.pt", log=quiet)
    settings, *calls = fake_aa
    assert settings == {"eps": 0.25, "num_classes": 3, "seed": 0, "n_iter": 100, "n_queries": 5000, "norm": "linf"}
    # apgd-ce on 0 1 2 4 5 6 7 in batches of 3 breaks 1; apgd-t on 0 2 4 5 6 7 breaks 4; fab-t on 0 2 5 6 7
    # breaks 6; square on 0 2 5 7 breaks 0 and 2
    assert [(n, p) for n, p, _ in calls] == [
        ("apgd-ce", [0, 1, 2]), ("apgd-ce", [4, 5, 6]), ("apgd-ce", [7]), ("apgd-t", [0, 2, 4]),
        ("apgd-t", [5, 6, 7]), ("fab-t", [0, 2, 5]), ("fab-t", [6, 7]), ("square", [0, 2, 5]), ("square", [7])]
    assert res["broken_by"].tolist() == [4, 1, 4, 0, 2, -1, 3, -1]
    assert res["stages"] == {"apgd-ce": 6 / 8, "apgd-t": 5 / 8, "fab-t": 4 / 8, "square": 2 / 8}
    # the key of a saved L-inf state: the sub-attacks and the budget (states saved before stay valid)
    names = ["apgd-ce", "apgd-t", "fab-t", "square", "n_iter=100", "n_queries=5000"]
    state = torch.load(tmp_path / "aa.pt", weights_only=True)
    assert state["key"] == cascade_key(reader(), X, Y, 0.25, names, 3, 0)
    fake_aa.clear()
    logs = []
    res = aa_apgd_flags(reader(), X, Y, 0.5, correct=torch.tensor([True] * 8), batch_size=4,
                        state_path=tmp_path / "apgd.pt", progress=True, log=logs.append, norm="l2")
    settings, *calls = fake_aa
    assert settings["norm"] == "l2" and settings["eps"] == 0.5
    assert [(n, p) for n, p, _ in calls] == [("apgd-ce", [0, 1, 2, 3]), ("apgd-ce", [4, 5, 6, 7]),
                                             ("apgd-t", [0, 2, 4, 5]), ("apgd-t", [6, 7])]
    assert res["broken_by"].tolist() == [-1, 1, -1, 1, 2, -1, -1, -1]  # 3 given as correct: broken at once
    assert logs == ["apgd-ce: 6 of 8 points still robust (75.0%) after 0 s",
                    "apgd-t: 5 of 8 points still robust (62.5%) after 0 s"]
    key = cascade_key(reader(), X, Y, 0.5, ["apgd-ce", "apgd-t", "n_iter=100", "n_queries=5000", "norm=l2"], 4, 0)
    assert torch.load(tmp_path / "apgd.pt", weights_only=True)["key"] == key


def test_aa_flags_key_names_the_rank_and_the_budget(fake_aa, tmp_path, monkeypatch):
    monkeypatch.setattr(aa_mod, "AA_BUDGET", {"n_queries": 7, "n_iter": 2})
    shard = OtherRanks(1, 2, [torch.tensor(FLAGS), torch.tensor(BROKEN_BY)] * 4)
    aa_flags(reader(), X, Y, 0.1, batch_size=2, state_path=tmp_path / "aa.pt", log=quiet, shard=shard)
    assert fake_aa[0]["n_iter"] == 2 and fake_aa[0]["n_queries"] == 7
    names = ["apgd-ce", "apgd-t", "fab-t", "square", "n_iter=2", "n_queries=7", "rank=1/2"]
    assert torch.load(tmp_path / "aa.pt", weights_only=True)["key"] == cascade_key(reader(), X, Y, 0.1, names, 2, 0)
    # rank 1 ran only its batches of apgd-ce ([0 1] [2 4] [5 6] [7] -> [2 4] and [7]) and combined each stage
    assert [(n, p) for n, p, _ in fake_aa[1:3]] == [("apgd-ce", [2, 4]), ("apgd-ce", [7])] and len(shard.owned) == 8


def many_points(n):
    """n clean-correct points: the rows 0 1 2 4 5 6 7 of X in turn, with ids 0..n-1."""
    rows = torch.tensor([0, 1, 2, 4, 5, 6, 7])[torch.arange(n) % 7]
    x = X[rows].clone()
    x[:, 3] = torch.arange(n)
    return x, Y[rows]


@pytest.mark.parametrize("flags_fn, expected", [(aa_flags, [4, 1, 4, -1, 2, -1, 3]),
                                                 (aa_apgd_flags, [-1, 1, -1, -1, 2, -1, -1])])
def test_flags_defaults_and_options_reach_the_cascade(fake_aa, flags_fn, expected, tmp_path, clock):
    x, y = many_points(501)
    logs = []
    res = flags_fn(reader(), x, y, 0.1, log=logs.append)
    settings, *calls = fake_aa
    assert settings["norm"] == "linf" and logs == []  # L-inf, no progress lines
    # batches of 500: 501 points -> 500 + 1; by id: apgd-ce breaks 1, apgd-t 4, fab-t 6, square 0 and 2
    assert [len(p) for n, p, _ in calls if n == "apgd-ce"] == [500, 1]
    assert res["broken_by"][:7].tolist() == expected
    fake_aa.clear()
    correct = torch.ones(8, dtype=torch.bool)
    correct[0] = False
    res = flags_fn(reader(), X, Y, 0.1, correct=correct, batch_size=8, state_path=tmp_path / "s.pt",
                   progress=True, log=logs.append, norm="l2")
    settings, *calls = fake_aa
    assert settings["norm"] == "l2" and (tmp_path / "s.pt").is_file()
    assert calls[0][:2] == ("apgd-ce", [1, 2, 3, 4, 5, 6, 7])  # 0 declared misclassified, 3 declared correct
    assert res["broken_by"].tolist()[:2] == [0, 1] and res["broken_by"].tolist()[3:5] == [1, 2]
    assert logs[0] == "apgd-ce: 5 of 8 points still robust (62.5%) after 0 s"


def test_registered_attacks_return_the_cascades_images(fake_aa):
    x_adv = ATTACKS["aa"](FlatReader(), X, Y, 0.3)
    settings, *calls = fake_aa
    assert settings["norm"] == "linf" and settings["eps"] == 0.3 and settings["num_classes"] == 3
    assert [(n, p) for n, p, _ in calls][:2] == [("apgd-ce", [0, 1, 2, 4, 5, 6, 7]), ("apgd-t", [0, 2, 4, 5, 6, 7])]
    # broken points: the image of the stage that broke them (stage mark 1..4), others clean
    assert x_adv[:, 4].tolist() == [4, 1, 4, 0, 2, 0, 3, 0] and torch.equal(x_adv[5], X[5])
    fake_aa.clear()
    x_adv = ATTACKS["aa_apgd"](FlatReader(), X, Y, 0.3, AttackSettings(norm="l2"))
    assert fake_aa[0]["norm"] == "l2" and [n for n, _, _ in fake_aa[1:]] == ["apgd-ce", "apgd-t"]
    assert x_adv[:, 4].tolist() == [0, 1, 0, 0, 2, 0, 0, 0]
    assert ATTACKS["aa"].flags_fn is aa_flags and ATTACKS["aa_apgd"].flags_fn is aa_apgd_flags


def test_registered_attacks_take_the_callers_batch_whole(fake_aa):
    x, y = many_points(501)
    ATTACKS["aa"](reader(), x, y, 0.1)
    assert [len(p) for n, p, _ in fake_aa[1:] if n == "apgd-ce"] == [501]  # one batch, not 500 + 1
    fake_aa.clear()
    x_adv = ATTACKS["aa_apgd"](FlatReader(), X[1:2], Y[1:2], 0.1)  # a single point: 3 classes all the same
    assert fake_aa[0]["num_classes"] == 3 and x_adv[0].tolist() == pytest.approx([0.1, 0.8, 1.3, 1, 1])


# ---- the official sub-attacks (pyautoattack) at the smallest budgets --------------------------------------------

PIXELS = [(0, 0), (1, 3), (3, 1), (4, 4)]  # logit k reads pixel PIXELS[k] of a 1x5x5 image


def pixel_reader():
    """4 classes on 1x5x5 images, logit k = one pixel (the targeted DLR loss needs at least 4 classes,
    Square's L2 squares at least 5 pixels a side)."""
    w = torch.zeros(4, 1, 5, 5)
    for k, (i, j) in enumerate(PIXELS):
        w[k, 0, i, j] = 1.0
    m = nn.Sequential(nn.Flatten(), nn.Linear(25, 4, bias=False))
    with torch.no_grad():
        m[1].weight.copy_(w.view(4, 25))
    return m


def images(z):
    """Grey images whose pixel PIXELS[k] holds z[:, k] (so the logits are z)."""
    x = torch.full((len(z), 1, 5, 5), 0.5)
    for k, (i, j) in enumerate(PIXELS):
        x[:, 0, i, j] = z[:, k]
    return x


# distance to the nearest other class: L-inf gap / ||e_y - e_j||_1 = gap / 2; L2 gap / ||e_y - e_j||_2 = gap / 1.41
XP = images(torch.tensor([
    [0.50, 0.47, 0.10, 0.15],  # y 0: gap 0.03 to class 1 -> L-inf 0.015, L2 0.021: breakable at eps 0.1
    [0.10, 0.20, 0.60, 0.15],  # y 2: smallest gap 0.40 -> 0.2 / 0.28: robust
    [0.30, 0.75, 0.20, 0.25],  # y 1: smallest gap 0.45 -> robust
    [0.40, 0.30, 0.38, 0.10],  # y 2: misclassified clean (predicts 0)
    [0.20, 0.31, 0.33, 0.25]]))  # y 2: gap 0.02 -> 0.01 / 0.014: breakable
YP = torch.tensor([0, 2, 1, 2, 2])


def test_crafted_images_have_the_intended_logits():
    assert pixel_reader()(XP)[3].tolist() == pytest.approx([0.40, 0.30, 0.38, 0.10])
    assert XP[4, 0, 1].tolist() == pytest.approx([0.5, 0.5, 0.5, 0.31, 0.5])


def test_official_cascade_breaks_exactly_the_points_within_eps(monkeypatch):
    monkeypatch.setattr(aa_mod, "AA_BUDGET", {"n_iter": 2, "n_queries": 4})
    m = pixel_reader()
    res = aa_flags(m, XP, YP, 0.1, batch_size=5, log=quiet)
    assert res["broken_by"].tolist() == [1, -1, -1, 0, 1]  # APGD-CE breaks both breakable points


def test_official_l2_attack_returns_images_within_the_l2_ball(monkeypatch):
    monkeypatch.setattr(aa_mod, "AA_BUDGET", {"n_iter": 2, "n_queries": 4})
    m = pixel_reader()
    x_adv = ATTACKS["aa_apgd"](m, XP, YP, 0.1, AttackSettings(norm="l2"))
    assert float((x_adv - XP).flatten(1).norm(dim=1).max()) <= 0.1 + 1e-5
    assert torch.equal(x_adv[[1, 2, 3]], XP[[1, 2, 3]])  # robust and misclassified points: clean images
    with torch.no_grad():
        assert m(x_adv).argmax(1)[[0, 4]].tolist() == [1, 1]  # the nearest other class of both


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_each_official_sub_attack_breaks_a_point_within_eps(norm):
    m = pixel_reader()
    stages = autoattack_stages(m, 0.1, 4, seed=3, n_iter=2, n_queries=20, norm=norm)
    assert [n for n, _ in stages] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    x, y = XP[[0, 3, 4]], YP[[0, 3, 4]]
    for name, fn in stages:
        adv = fn(x, y).detach()
        d = (adv - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert float(size.max()) <= 0.1 + 1e-5, name
        with torch.no_grad():
            assert bool((m(adv).argmax(1)[[0, 2]] != y[[0, 2]]).all()), name
        # the point already misclassified for its label y = 2 comes back as it was (the label is the one
        # given, not the prediction: attacking predicted class 0 would move it, class 2 is 0.02 away)
        assert torch.equal(adv[1], x[1]), name
    aa = next(c.cell_contents for c in stages[0][1].__closure__ if hasattr(c.cell_contents, "apgd"))
    official = {"linf": "Linf", "l2": "L2"}[norm]
    assert aa.norm == official and aa.apgd.norm == official and aa.apgd_targeted.norm == official
    assert aa.fab.norm == official and aa.square.norm == official
    assert aa.apgd.loss == "ce" and aa.fab.targeted and aa.fab.n_restarts == 1
    assert aa.apgd.seed == aa.apgd_targeted.seed == aa.fab.seed == aa.square.seed == 3


def test_official_stage_settings():
    m = pixel_reader()
    stages = autoattack_stages(m, 0.1, 4, seed=5, n_iter=3, n_queries=20)
    aa = next(c.cell_contents for c in stages[0][1].__closure__ if hasattr(c.cell_contents, "apgd"))
    assert aa.epsilon == 0.1 and aa.seed == 5 and aa.device == torch.device("cpu") and not aa.verbose
    for atk in (aa.apgd, aa.apgd_targeted):
        assert atk.n_iter == 3 and atk.n_restarts == 1 and atk.eps == 0.1 and atk.norm == "Linf"
        assert atk.eot_iter == 1 and atk.thr_decr == 0.75 and atk.seed == 5 and not atk.verbose
        assert atk.device == torch.device("cpu") and atk.logger is aa.logger
    assert aa.fab.n_iter == 3 and aa.square.n_queries == 20
    assert aa.apgd_targeted.n_target_classes == 3 and aa.fab.n_target_classes == 3  # C - 1 with 4 classes
    # the standard budget: the official objects as AutoAttack(version="standard") set them
    for n_classes, targets in ((11, 9), (10, 9), (2, 1)):
        aa = next(c.cell_contents for c in autoattack_stages(m, 0.1, n_classes)[0][1].__closure__
                  if hasattr(c.cell_contents, "apgd"))
        assert aa.apgd.n_iter == 100 and aa.apgd.n_restarts == 1 and aa.apgd_targeted.n_restarts == 1
        assert aa.fab.n_iter == 100 and aa.square.n_queries == 5000 and aa.seed == 0
        assert aa.apgd_targeted.n_target_classes == targets and aa.fab.n_target_classes == targets


# ---- torchattacks ------------------------------------------------------------------------------------------------

def test_aa_torchattacks_builds_the_standard_attack(monkeypatch):
    torchattacks = pytest.importorskip("torchattacks")
    built = []

    class Recorder:
        def __init__(self, model, **kw):
            built.append(kw)
            self.model = model

        def __call__(self, x, y):
            built.append((self.model.training, any(p.requires_grad for p in self.model.parameters())))
            return x + 0.5

    monkeypatch.setattr(torchattacks, "AutoAttack", Recorder)
    m = pixel_reader().train()
    out = ATTACKS["aa_torchattacks"](m, XP, YP, 0.25, AttackSettings(norm="l2"))
    assert torch.equal(out, XP + 0.5) and m.training
    assert built == [{"norm": "L2", "eps": 0.25, "version": "standard", "n_classes": 4, "seed": 0}, (False, False)]
    ATTACKS["aa_torchattacks"](m, XP, YP, 0.25)
    assert built[2]["norm"] == "Linf"


def test_aa_torchattacks_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(AttackUnavailable, match=r"^attack aa_torchattacks needs the torchattacks package; install "
                                                r"it with `pip install --no-deps torchattacks==3\.5\.1` \(its pinned "
                                                r"requests 2\.25\.1 is not needed\)$"):
        ATTACKS["aa_torchattacks"].check()
