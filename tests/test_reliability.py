"""Crash-safe resume, determinism, input validation and safe loading (issue 8)."""

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import ltadv
from conftest import write_cifar10
from ltadv import reproducibility
from ltadv.checkpoint import CheckpointError, load_state
from ltadv.cli import main
from ltadv.config import load_config
from ltadv.data import build_data
from ltadv.distributed import DistContext, DistributedError
from ltadv.export import load_exported
from ltadv.models import build_model
from ltadv.train import train

FAST = {"data.name": "digits-lt", "train.epochs": 2, "train.progress": False, "attack.steps": 2,
        "eval.n": 100, "method.name": "at"}
# Fields of result.json that measure the machine rather than the training.
MACHINE = {"train_seconds", "eval_seconds", "images_per_second", "peak_mem_mb", "eval_peak_mem_mb", "commit", "device"}


def quiet(*a, **k):
    pass


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): equal snapshots mean nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def strip_machine(obj):
    if isinstance(obj, dict):
        return {k: strip_machine(v) for k, v in obj.items() if k not in MACHINE}
    if isinstance(obj, list):
        return [strip_machine(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "at"
    train(load_config(overrides=FAST), out, log=quiet)
    return out


# ---------------------------------------------------------------- RNG, sharding, determinism


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    reproducibility.seed_everything(3)
    torch.save({"rng": reproducibility.capture_rng()}, tmp_path / "s.pt")
    first = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(5)  # move every generator on
    reproducibility.restore_rng(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_shards_are_disjoint_equal_and_cover_the_permutation():
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(DistContext().shard(order), order)
    for world in (2, 3, 4):
        parts = [DistContext(rank=r, world_size=world).shard(order) for r in range(world)]
        assert len({len(p) for p in parts}) == 1  # every rank runs the same number of steps
        seen = torch.cat(parts).tolist()
        assert set(seen) == set(order.tolist())
        assert len(seen) - len(set(seen)) == (-len(order)) % world  # only the wrap-around padding repeats
    assert DistContext(world_size=4).local_batch(128) == 32
    with pytest.raises(DistributedError, match="divisible"):
        DistContext(world_size=3).local_batch(128)


def test_same_config_and_seed_give_the_same_record(run_dir, tmp_path):
    train(load_config(overrides=FAST), tmp_path / "again", log=quiet)
    a = json.loads((run_dir / "result.json").read_text())
    b = json.loads((tmp_path / "again" / "result.json").read_text())
    assert strip_machine(a) == strip_machine(b)
    wa = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    wb = load_file(str(tmp_path / "again" / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_holds_every_generator_and_loads_weights_only(run_dir):
    state = load_state(run_dir / "checkpoints" / "last.pt")
    assert {"torch", "python", "numpy"} <= set(state["rng"])
    assert state["epoch"] == 2 and state["config"]["method"]["name"] == "at"


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing touched


def run_cli(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


def assert_one_error_line(rc, err, expected):
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ltadv: error: ") and expected in err, err


BASE = ["train", "--data", "digits-lt", "--epochs", "2", "--quiet", "--attack.steps", "2"]


@pytest.mark.parametrize("argv, expected", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--aug", "nope"], "unknown augmentation 'nope'"),
    (["--eps", "-0.1"], "attack.eps must be >= 0"),
    (["--attack.steps", "0"], "attack.steps must be >= 1"),
    (["--imbalance-ratio", "0.5"], "data.imbalance_ratio must be >= 1"),
    (["--data.num_classes", "20"], "has only 10 classes"),
    (["--optim.batch_size", "0"], "optim.batch_size must be >= 1"),
])
def test_bad_setting_leaves_an_existing_run_untouched(run_dir, capsys, argv, expected):
    before = snapshot(run_dir)
    rc, err = run_cli(capsys, [*BASE, *argv, "--out", str(run_dir), "--force"])  # --force: the risky case
    assert_one_error_line(rc, err, expected)
    assert snapshot(run_dir) == before


def test_unknown_dataset(run_dir, capsys):
    before = snapshot(run_dir)
    rc, err = run_cli(capsys, ["train", "--data", "nope", "--out", str(run_dir), "--force"])
    assert_one_error_line(rc, err, "unknown dataset 'nope'")
    assert snapshot(run_dir) == before


def test_missing_and_corrupt_data_folder(run_dir, capsys, tmp_path):
    before = snapshot(run_dir)
    argv = ["train", "--data", "cifar10-lt", "--quiet", "--out", str(run_dir), "--force", "--data-root"]
    rc, err = run_cli(capsys, [*argv, str(tmp_path / "nowhere")])
    assert_one_error_line(rc, err, "data folder not found")
    write_cifar10(tmp_path / "data")
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])  # truncated download
    rc, err = run_cli(capsys, [*argv, str(tmp_path / "data")])
    assert_one_error_line(rc, err, "corrupt dataset file")
    shutil.rmtree(tmp_path / "data")
    write_cifar10(tmp_path / "data")
    (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").unlink()
    rc, err = run_cli(capsys, [*argv, str(tmp_path / "data")])
    assert_one_error_line(rc, err, "missing dataset file")
    assert snapshot(run_dir) == before


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    rc, err = run_cli(capsys, [*BASE, "--out", str(blocker / "run")])  # root can't make a folder under a file
    assert_one_error_line(rc, err, "is not writable")
    rc, err = run_cli(capsys, [*BASE, "--out", str(blocker), "--force"])
    assert_one_error_line(rc, err, "is not a folder")
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("argv, expected", [
    (["--model", "resnet18"], "model.name is 'small_cnn' in the run, 'resnet18' given"),
    (["--epochs", "5"], "train.epochs is 2 in the run, 5 given"),
    (["--method", "at_bsl"], "method.name is 'at'"),
])
def test_resume_with_settings_that_change_the_training_is_refused(run_dir, capsys, argv, expected):
    before = snapshot(run_dir)
    rc, err = run_cli(capsys, ["train", "--resume", str(run_dir), *argv])
    assert_one_error_line(rc, err, expected)
    assert snapshot(run_dir) == before


def test_resume_may_change_device_and_progress(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    rc = main(["train", "--resume", str(copy), "--device", "cpu", "--quiet", "--eval.n", "50"])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads((copy / "result.json").read_text())
    assert rec["config"]["train"]["device"] == "cpu" and rec["eval"]["n"] == 50
    assert rec["epochs"] == json.loads((run_dir / "result.json").read_text())["epochs"]


def test_resume_needs_something_to_resume(capsys, tmp_path):
    rc, err = run_cli(capsys, ["train", "--resume", str(tmp_path / "nothing")])
    assert_one_error_line(rc, err, "nothing to resume")
    assert not (tmp_path / "nothing").exists()


def damaged_copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(run_dir, copy)
    return copy


def test_truncated_checkpoint_is_an_error_and_destroys_nothing(run_dir, tmp_path, capsys):
    copy = damaged_copy(run_dir, tmp_path)
    last = copy / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = snapshot(copy)
    rc, err = run_cli(capsys, ["train", "--resume", str(copy)])
    assert_one_error_line(rc, err, "cannot load checkpoint")
    assert snapshot(copy) == before


class Hostile:
    """Unpickling this runs os.mkdir(marker): a stand-in for arbitrary code in a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("kind", ["torch.save", "plain pickle"])
def test_hostile_checkpoint_is_refused_without_running_it(run_dir, tmp_path, capsys, kind):
    copy = damaged_copy(run_dir, tmp_path)
    marker = tmp_path / "pwned"
    last = copy / "checkpoints" / "last.pt"
    payload = {"model": Hostile(marker)}
    if kind == "torch.save":
        torch.save(payload, last)
    else:
        last.write_bytes(pickle.dumps(payload, protocol=2))
    before = snapshot(copy)
    rc, err = run_cli(capsys, ["train", "--resume", str(copy)])
    assert_one_error_line(rc, err, "refusing checkpoint")
    assert "posix.mkdir" in err  # names what it refused to run
    assert not marker.exists()
    assert snapshot(copy) == before
    with pytest.raises(CheckpointError):
        load_state(last)
    assert not marker.exists()


def test_checkpoint_from_another_model_or_class_count(run_dir, tmp_path, capsys):
    copy = damaged_copy(run_dir, tmp_path)
    last = copy / "checkpoints" / "last.pt"
    good = torch.load(last, weights_only=True)
    other = build_model("small_cnn", 5, 1, [0.5], [0.5]).state_dict()  # five classes, not ten
    torch.save({**good, "model": other}, last)
    before = snapshot(copy)
    rc, err = run_cli(capsys, ["train", "--resume", str(copy)])
    assert_one_error_line(rc, err, "from another model or class count")
    assert snapshot(copy) == before

    torch.save({**good, "class_counts": good["class_counts"][:5]}, last)
    before = snapshot(copy)
    rc, err = run_cli(capsys, ["train", "--resume", str(copy)])
    assert_one_error_line(rc, err, "other class counts")
    assert snapshot(copy) == before

    torch.save({**good, "config": {**good["config"], "model": {**good["config"]["model"], "name": "resnet18"}}}, last)
    rc, err = run_cli(capsys, ["train", "--resume", str(copy)])  # result.json and last.pt disagree
    assert_one_error_line(rc, err, "model.name is 'resnet18' in the run, 'small_cnn' given")

    save_file(other, str(copy / "checkpoints" / "best.safetensors"))
    before = snapshot(copy)
    rc, err = run_cli(capsys, ["eval", str(copy), "--which", "best", "--n", "10"])
    assert_one_error_line(rc, err, "from another model or class count")
    assert snapshot(copy) == before


def test_missing_checkpoint_of_a_trained_run_is_not_restarted(run_dir, tmp_path, capsys):
    copy = damaged_copy(run_dir, tmp_path)
    (copy / "checkpoints" / "last.pt").unlink()
    before = snapshot(copy)
    rc, err = run_cli(capsys, ["train", "--resume", str(copy)])
    assert_one_error_line(rc, err, "last.pt is missing")
    assert snapshot(copy) == before


# ---------------------------------------------------------------- export


def test_export_round_trip(run_dir, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    assert main(["export", str(run_dir), "--which", "last", "--out", str(out)]) == 0
    model, meta = load_exported(out)
    assert meta["which"] == "last" and meta["epoch"] == 2 and meta["config"]["model"]["name"] == "small_cnn"
    saved = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(ltadv.load_model(out)(x), ltadv.load_model(run_dir, "last")(x))
    rc, err = run_cli(capsys, ["export", str(run_dir), "--out", str(out)])
    assert_one_error_line(rc, err, "already exists")


# ---------------------------------------------------------------- SIGKILL mid-epoch, then --resume


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(ltadv.__file__).parents[1]), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # same kernels in every process, and no oversubscribed cores
    return env


KILL_RUN = ["--data", "digits-lt", "--method", "at", "--epochs", "3", "--quiet", "--attack.steps", "2",
            "--optim.batch_size", "16", "--eval.n", "50", "--eval.checkpoints", "last"]


def epochs_done(run: Path) -> list:
    try:
        return json.loads((run / "result.json").read_text())["epochs"]
    except (OSError, ValueError, KeyError):
        return []


def kill_mid_epoch(cmd: list[str], run: Path, total_epochs: int) -> int:
    """Start ``cmd``, wait for the first checkpoint, SIGKILL it part-way into the next epoch."""
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: torchrun and its workers die together
    try:
        deadline = time.monotonic() + 300
        while not epochs_done(run) or not (run / "checkpoints" / "last.pt").is_file():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        done = epochs_done(run)
        time.sleep(0.3 * done[-1]["train_seconds"])  # part-way into the next epoch
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_after = len(epochs_done(run))
    assert 1 <= killed_after < total_epochs, "the kill must land before the run finished"
    return killed_after


def assert_same_run(a: Path, b: Path) -> None:
    wa = load_file(str(a / "checkpoints" / "last.safetensors"))
    wb = load_file(str(b / "checkpoints" / "last.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"
    ra = json.loads((a / "result.json").read_text())
    rb = json.loads((b / "result.json").read_text())
    assert strip_machine(ra["epochs"]) == strip_machine(rb["epochs"])
    assert ra["metrics"] == rb["metrics"] and ra["class_counts"] == rb["class_counts"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    ltadv_cmd = [sys.executable, "-m", "ltadv", "train", *KILL_RUN]
    full = subprocess.Popen([*ltadv_cmd, "--out", str(tmp_path / "full")], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cut = tmp_path / "cut"
    kill_mid_epoch([*ltadv_cmd, "--out", str(cut)], cut, 3)
    r = subprocess.run([sys.executable, "-m", "ltadv", "train", "--resume", str(cut)], env=cli_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    assert full.wait() == 0, full.stderr.read()
    assert_same_run(tmp_path / "full", cut)


# ---------------------------------------------------------------- DDP: 2 processes on gloo


def torchrun(nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "ltadv",
            "train"]


@pytest.mark.slow
def test_ddp_two_processes_train_resume_and_match_class_counts(tmp_path):
    full = tmp_path / "ddp-full"
    r = subprocess.run([*torchrun(), *KILL_RUN, "--out", str(full)], env=cli_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((full / "result.json").read_text())
    assert rec["world_size"] == 2 and rec["status"] == "complete" and len(rec["epochs"]) == 3
    single = build_data(load_config(overrides={"data.name": "digits-lt"}).data, 0)
    assert rec["class_counts"] == single.class_counts  # counts of the whole data set, not of one shard
    # Images per epoch: the whole training set (+ wrap-around padding), split over two processes.
    assert rec["epochs"][0]["images_per_second"] * rec["epochs"][0]["train_seconds"] == pytest.approx(
        len(single.y_train) + len(single.y_train) % 2)
    files = sorted(snapshot(full))  # no stray files of rank 1 (eval_state/ holds rank 0's per-sample flags)
    assert [f for f in files if not f.startswith("eval_state/")] == [
        "checkpoints/best.safetensors", "checkpoints/last.pt", "checkpoints/last.safetensors", "result.json",
        "subset.npz"]
    assert all(f.startswith(("eval_state/best/", "eval_state/last/")) for f in files if f.startswith("eval_state/"))
    assert r.stdout.count("run record:") == 1  # only rank 0 talks

    cut = tmp_path / "ddp-cut"
    kill_mid_epoch([*torchrun(), *KILL_RUN, "--out", str(cut)], cut, 3)
    r = subprocess.run([*torchrun(), "--resume", str(cut)], env=cli_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(full, cut)
