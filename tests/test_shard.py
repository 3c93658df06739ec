"""Sharded evaluation (ltadv.shard): W processes give the flags of one process, point for point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ltadv.attacks import ATTACKS, autoattack
from ltadv.attacks.autoattack import _agree
from ltadv.distributed import DistContext, DistributedError
from ltadv.evaluate import robust_flags
from ltadv.shard import Shard, batch_seed, rng_scope

pytestmark = pytest.mark.usefixtures("one_thread")

EPS, BS, N = 0.05, 16, 75  # 75 points in batches of 16: 5 batches, the last one short, 3 on rank 0 and 2 on rank 1
AA_TEST_BUDGET = {"n_iter": 5, "n_queries": 20}  # a reduced AutoAttack (never a product option)
ATTACK_LIST = ["pgd20", "coin", "aa"]


def coin(model, x, y, eps, settings=None):
    """A test attack whose outcome is its random draw: each point is pushed far off the image (and so
    misclassified) with probability 1/2. Its flags equal another process's only if both drew the same
    numbers for the same points, i.e. if the randomness follows the batch, not the process."""
    push = (torch.rand(len(x), 1, 1, 1, device=x.device) < 0.5).float()
    return x + 10.0 * push


def tiny_cnn() -> torch.nn.Module:
    """Two conv + BN layers (folded by the evaluation's fast view) and a linear head: cheap to attack."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def _model_and_points(path):
    saved = torch.load(path, weights_only=True)
    model = tiny_cnn()
    model.load_state_dict(saved["model"])
    return model.eval(), saved["x"], saved["y"]


def _worker(rank: int, world: int, init_file: str, model_path: str, out: str, state_dir: str) -> None:
    torch.set_num_threads(1)  # the kernels of the single-process run
    autoattack.AA_BUDGET.update(AA_TEST_BUDGET)  # this child process only
    ATTACKS["coin"] = coin
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, x, y = _model_and_points(model_path)
        flags = robust_flags(model, x, y, ATTACK_LIST, EPS, BS, state_dir=state_dir, shard=Shard(rank, world))
        torch.save(flags, f"{out}.rank{rank}")
    finally:
        dist.destroy_process_group()


def _run_sharded(tmp, model_path, state_dir, tag: str, world: int = 2) -> list[dict]:
    out = tmp / f"flags-{tag}"
    mp.spawn(_worker, args=(world, str(tmp / f"init-{tag}"), str(model_path), str(out), str(state_dir)),
             nprocs=world, join=True)
    return [torch.load(f"{out}.rank{r}", weights_only=True) for r in range(world)]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny CNN trained for a few steps on digits-lt; flags of one process and of two gloo processes."""
    from ltadv.data import load_split

    tmp = tmp_path_factory.mktemp("shard")
    x, y = load_split("digits-lt", "train")
    xt, yt = load_split("digits-lt", "test")
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        i = torch.randint(len(y), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model_path = tmp / "model.pt"
    torch.save({"model": model.state_dict(), "x": xt[:N], "y": yt[:N]}, model_path)

    mp_ = pytest.MonkeyPatch()
    mp_.setitem(ATTACKS, "coin", coin)
    mp_.setattr(autoattack, "AA_BUDGET", dict(AA_TEST_BUDGET))
    try:
        model, xs, ys = _model_and_points(model_path)
        torch.manual_seed(123)  # any state: the flags must not depend on it
        single = robust_flags(model, xs, ys, ATTACK_LIST, EPS, BS, state_dir=tmp / "state-1")
    finally:
        mp_.undo()
    sharded = _run_sharded(tmp, model_path, tmp / "state-2", "a")
    return {"tmp": tmp, "model_path": model_path, "y": ys, "single": single, "sharded": sharded}


def test_two_gloo_processes_give_the_single_process_flags_point_for_point(evaluated):
    single, (rank0, rank1) = evaluated["single"], evaluated["sharded"]
    assert set(single) == {"clean", *ATTACK_LIST}
    for name, f in single.items():
        assert len(f) == N and f.dtype == torch.bool
        assert torch.equal(rank0[name], f), name
        assert torch.equal(rank1[name], f), name  # every rank ends with every point's flag
    clean = single["clean"]
    # The check means something: each attack breaks some clean-correct points and leaves some, in both
    # ranks' batches (rank 0 holds points 0-15, 32-47, 64-74 of the clean-correct order, rank 1 the others).
    for name in ATTACK_LIST:
        broken = clean & ~single[name]
        assert 0 < int(broken.sum()) < int(clean.sum()), name
    idx = torch.nonzero(clean).flatten()
    on_rank1 = torch.cat([idx[16:32], idx[48:64]])
    assert (clean & ~single["coin"])[on_rank1].any() and single["coin"][on_rank1].any()
    assert (single["pgd20"] & ~single["aa"]).any()  # AutoAttack found points PGD-20 missed


def test_each_rank_keeps_its_own_resumable_cascade_state(evaluated):
    state = evaluated["tmp"] / "state-2"
    assert sorted(p.name for p in state.iterdir()) == ["aa.rank0-of-2.pt", "aa.rank1-of-2.pt"]
    saved = [torch.load(state / f"aa.rank{r}-of-2.pt", weights_only=True) for r in range(2)]
    assert all(s["stage"] == 4 for s in saved)
    assert torch.equal(saved[0]["flags"], evaluated["single"]["aa"])
    assert torch.equal(saved[0]["broken_by"], saved[1]["broken_by"])  # combined after every stage


def test_a_rank_that_lost_its_state_takes_the_finished_stages_of_the_other(evaluated, tmp_path):
    """Rank 1's state file is gone (or older than rank 0's): the rerun agrees on rank 0's finished
    cascade and returns the same flags."""
    import shutil

    state = tmp_path / "state"
    shutil.copytree(evaluated["tmp"] / "state-2", state)
    (state / "aa.rank1-of-2.pt").unlink()
    rank0, rank1 = _run_sharded(tmp_path, evaluated["model_path"], state, "b")
    assert torch.equal(rank0["aa"], evaluated["single"]["aa"]) and torch.equal(rank1["aa"], rank0["aa"])
    assert torch.load(state / "aa.rank1-of-2.pt", weights_only=True)["stage"] == 4


class _TwoRanks:
    """A stand-in for rank ``rank`` of two processes whose saved stages are ``stages``."""

    def __init__(self, rank, stages, other_state):
        self.rank, self.world_size, self.enabled = rank, 2, True
        self.stages, self.other = stages, other_state

    def gather_objects(self, obj):
        assert obj == self.stages[self.rank]
        return list(self.stages)

    def broadcast_object(self, obj, src):
        return obj if src == self.rank else {k: self.other[k] for k in ("flags", "broken_by", "start_flags")}


def _state(stage, batches_done, flags):
    f = torch.tensor(flags)
    return {"key": "k", "stage": stage, "batches_done": batches_done, "flags": f, "start_flags": f.clone(),
            "broken_by": torch.where(f, -1, 2).to(torch.int16), "seconds": 1.5}


def test_agree_moves_a_rank_behind_to_the_furthest_stage_and_keeps_the_leaders_progress():
    ahead = _state(2, 3, [True, False, True, False])  # after stage 2, 3 of its batches of stage 3 done
    behind = _state(1, 5, [True, True, True, False])  # finished its stage-1 batches, killed before the combine
    got = _agree(behind, _TwoRanks(1, [2, 1], ahead), log=lambda *a: None)
    assert got["stage"] == 2 and got["batches_done"] == 0 and got["seconds"] == 1.5
    assert got["flags"].tolist() == [True, False, True, False]
    assert got is not behind and behind["stage"] == 1  # the loaded state is not modified in place
    kept = _agree(ahead, _TwoRanks(0, [2, 1], behind), log=lambda *a: None)
    assert kept is ahead and kept["batches_done"] == 3


def test_shard_takes_whole_batches_round_robin_and_names_its_state():
    assert list(Shard(0, 2).mine(5)) == [0, 2, 4] and list(Shard(1, 2).mine(5)) == [1, 3]
    assert list(Shard(2, 3).mine(2)) == []
    assert list(Shard().mine(3)) == [0, 1, 2]
    assert Shard().state_name("aa") == "aa.pt" and Shard(1, 4).state_name("aa") == "aa.rank1-of-4.pt"
    with pytest.raises(ValueError):
        Shard(2, 2)


def test_batch_randomness_follows_the_batch_and_leaves_the_global_stream_alone():
    def draws(b, prior_seed):
        torch.manual_seed(prior_seed)
        before = torch.get_rng_state()
        with rng_scope("cpu", batch_seed("pgd20", b)):
            d = torch.rand(4)
        assert torch.equal(torch.get_rng_state(), before)  # the caller's stream continues as if nothing ran
        return d

    assert torch.equal(draws(3, 1), draws(3, 2))  # batch 3 draws the same whatever ran before it
    assert not torch.equal(draws(3, 1), draws(4, 1))
    assert batch_seed("pgd20", 3) != batch_seed("cw", 3)
    assert 0 <= batch_seed("aa", 10**6) < 2**63


def test_robust_flags_do_not_depend_on_or_move_the_callers_random_state(monkeypatch):
    monkeypatch.setitem(ATTACKS, "coin", coin)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.rand(20, 1, 2, 2)
    with torch.no_grad():
        y = model(x).argmax(1)  # every point clean-correct
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(robust_flags(model, x, y, ["coin"], 0.1, batch_size=8, fast=False)["coin"])
        after = torch.rand(1)
        torch.manual_seed(seed)
        assert torch.equal(after, torch.rand(1))  # the evaluation drew nothing from the global stream
    assert torch.equal(runs[0], runs[1])
    assert 0 < int(runs[0].sum()) < 20


# ---------------------------------------------------------------- SyncBatchNorm switch


def test_sync_bn_is_refused_on_cpu_with_several_processes_and_a_no_op_with_one():
    with pytest.raises(DistributedError, match="train.sync_bn needs CUDA"):
        DistContext(0, 2).check_sync_bn(True, torch.device("cpu"))
    DistContext(0, 2).check_sync_bn(False, torch.device("cpu"))
    DistContext(0, 1).check_sync_bn(True, torch.device("cpu"))
    DistContext(1, 2).check_sync_bn(True, torch.device("cuda", 1))
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    lines = []
    assert DistContext(0, 1).sync_batchnorm(model, True, lines.append) is model
    assert isinstance(model[1], torch.nn.BatchNorm2d) and "one process" in lines[0]


def test_sync_bn_converts_every_batchnorm_in_place_keeping_parameters_and_eval_outputs():
    from ltadv.models import build_model

    model = build_model("small_cnn", 10, 1, [0.5], [0.25]).eval()
    params = {n: p for n, p in model.named_parameters()}
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
    lines = []
    out = DistContext(0, 2).sync_batchnorm(model, True, lines.append)
    assert out is model
    kinds = [type(m) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert kinds == [torch.nn.SyncBatchNorm] * 3 and "3 BatchNorm layers" in lines[0]
    assert all(p is params[n] for n, p in model.named_parameters())  # the optimizer's parameters still
    with torch.no_grad():
        assert torch.equal(model(x), before)  # eval mode: running statistics, no synchronisation, on CPU too
    assert DistContext(0, 2).sync_batchnorm(model, False) is model


@pytest.mark.slow
def test_cli_refuses_sync_bn_on_cpu_under_torchrun_with_one_line(tmp_path):
    from test_reliability import cli_env

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ltadv",
           "train", "--data", "digits-lt", "--device", "cpu", "--train.sync_bn", "true", "--epochs", "1",
           "--quiet", "--out", str(tmp_path / "run")]
    r = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "ltadv: error: train.sync_bn needs CUDA devices" in r.stderr
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


@pytest.mark.slow
def test_a_run_saved_before_sync_bn_existed_resumes(tmp_path):
    """The resume check compares resolved configs: a field the saved config lacks counts as its default."""
    from ltadv import checkpoint as ckpt
    from ltadv.config import load_config
    from ltadv.session import saved_run_state
    from ltadv.train import train

    run = tmp_path / "run"
    over = {"data.name": "digits-lt", "method.name": "at", "train.epochs": 1, "train.progress": False,
            "attack.steps": 1, "optim.batch_size": 64, "eval.n": 8, "eval.select_on": "last",
            "eval.checkpoints": ["last"], "train.device": "cpu"}
    train(load_config(overrides=over), run, log=lambda *a: None)
    state = ckpt.load_state(run / "checkpoints" / "last.pt")
    del state["config"]["train"]["sync_bn"]  # as written by the version before the field
    ckpt.save_state(run / "checkpoints" / "last.pt", state)
    rec = json.loads((run / "result.json").read_text())
    del rec["config"]["train"]["sync_bn"]
    (run / "result.json").write_text(json.dumps(rec))
    state, _ = saved_run_state(run, load_config(overrides=over))
    assert state["epoch"] == 1
    with pytest.raises(ValueError, match="train.sync_bn is False in the run, True given"):  # switching it is refused
        saved_run_state(run, load_config(overrides={**over, "train.sync_bn": True}))


# ---------------------------------------------------------------- `torchrun ... ltadv eval RUN`


@pytest.mark.slow
def test_torchrun_eval_writes_one_record_equal_to_a_single_process_eval(tmp_path):
    from ltadv.config import load_config
    from ltadv.train import evaluate_run, train
    from test_reliability import cli_env

    run = tmp_path / "run"
    cfg = load_config(overrides={"data.name": "digits-lt", "method.name": "at", "train.epochs": 3,
                                 "train.progress": False, "attack.steps": 1, "optim.batch_size": 32, "eval.n": 8,
                                 "eval.select_on": "last", "eval.checkpoints": ["last"], "train.device": "cpu"})
    train(cfg, run, log=lambda *a: None)
    single = evaluate_run(run, ["clean", "pgd20"], checkpoints=["last"], n=150, batch_size=32, progress=False,
                          log=lambda *a: None)
    key = "last n=150 eps=0.1"
    flags_dir = run / "eval_state" / "last" / "n150-eps0.1"
    flags_single = torch.load(flags_dir / "flags.pt", weights_only=True)["flags"]
    (flags_dir / "flags.pt").unlink()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "ltadv", "eval", str(run), "--which", "last", "--attacks", "clean,pgd20",
                        "--first", "150", "--batch-size", "32", "--quiet"],
                       env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("-- last checkpoint") == 1  # rank 0 alone reports
    rec = json.loads((run / "result.json").read_text())
    assert rec["evaluations"][key]["metrics"] == single["evaluations"][key]["metrics"]
    flags = torch.load(flags_dir / "flags.pt", weights_only=True)["flags"]
    assert all(torch.equal(flags[k], flags_single[k]) for k in ("clean", "pgd20"))
    clean, pgd = flags_single["clean"], flags_single["pgd20"]
    assert 0 < int(pgd.sum()) < int(clean.sum())  # the attack broke some points and not all


@pytest.mark.gpu
def test_on_cuda_the_batch_seeds_drive_the_device_generator_and_restore_it():
    device = torch.device("cuda")
    before = torch.cuda.get_rng_state(device)
    with rng_scope(device, batch_seed("pgd20", 0)):
        a = torch.rand(5, device=device)
    with rng_scope(device, batch_seed("pgd20", 0)):
        b = torch.rand(5, device=device)
    assert torch.equal(a, b) and torch.equal(torch.cuda.get_rng_state(device), before)
    model = tiny_cnn().to(device).eval()
    x = torch.rand(40, 1, 8, 8, device=device)
    with torch.no_grad():
        y = model(x).argmax(1)
    ATTACKS["coin"] = coin
    try:
        runs = [robust_flags(model, x, y, ["coin"], 0.1, batch_size=16)["coin"] for _ in range(2)]
    finally:
        del ATTACKS["coin"]
    assert torch.equal(runs[0], runs[1]) and 0 < int(runs[0].sum()) < 40
