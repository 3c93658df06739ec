"""Reliability, round 2 (issue 15): no command loses data, runs are locked, NaN stops the run,
every bad input is one line (exit 2) and leaves every pre-existing file byte for byte as it was."""

import errno
import fcntl
import json
import os
import pickle
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import ltadv
import ltadv.build
import ltadv.train
from conftest import write_cifar10
from ltadv import checkpoint as ckpt
from ltadv import config as config_mod
from ltadv.checkpoint import CheckpointError
from ltadv.cli import main
from ltadv.config import ConfigError, load_config
from ltadv.data import DataError, build_data, readers
from ltadv.report import load_records
from ltadv.rundir import LOCK, RunDirError, RunLock, clear_run, lock_holder
from ltadv.sweep import expand, load_spec
from ltadv.train import train

FAST = {"data.name": "digits-lt", "train.epochs": 1, "train.progress": False, "attack.steps": 1,
        "eval.n": 40, "method.name": "at"}
BASE = ["train", "--data", "digits-lt", "--method", "at", "--epochs", "1", "--quiet", "--attack.steps", "1",
        "--eval.n", "40"]


def quiet(*a, **k):
    pass


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(capsys, argv):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip()


def assert_one_error_line(rc, err, expected):
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ltadv: error: ") and expected in err, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "at"
    train(load_config(overrides=FAST), out, log=quiet)
    return out


@pytest.fixture
def work(trained, tmp_path):
    """A folder holding a copy of the trained run ("runs/at") and a sibling file, like a user's runs/."""
    root = tmp_path / "runs"
    shutil.copytree(trained, root / "at")
    (root / "notes.txt").write_text("the user's own notes")
    return root


# ---------------------------------------------------------------- 1. writes stay in the output folder


def test_posthoc_force_onto_the_folder_holding_the_source_is_refused(work, capsys):
    before = snapshot(work)
    rc, err = run_cli(capsys, ["posthoc", work / "at", "--tau-norm", "1", "--out", work, "--force", "--n", "10"])
    assert_one_error_line(rc, err, "holds the source run")
    assert snapshot(work) == before


def test_posthoc_force_onto_a_foreign_folder_or_inside_the_source_is_refused(work, tmp_path, capsys):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8 not really")
    before, before_src = snapshot(foreign), snapshot(work)
    rc, err = run_cli(capsys, ["posthoc", work / "at", "--tau-norm", "1", "--out", foreign, "--force", "--n", "10"])
    assert_one_error_line(rc, err, "ltadv did not make")
    assert snapshot(foreign) == before
    rc, err = run_cli(capsys, ["posthoc", work / "at", "--tau-norm", "1", "--out", work / "at" / "tn", "--n", "10"])
    assert_one_error_line(rc, err, "inside the source run")
    assert snapshot(work) == before_src and not (work / "at" / "tn").exists()


def test_posthoc_force_replaces_only_ltadv_files_of_an_earlier_posthoc_run(work, capsys):
    out = work / "tn"
    assert main(["posthoc", str(work / "at"), "--tau-norm", "1", "--out", str(out), "--n", "10"]) == 0
    (out / "mine.txt").write_text("keep")
    src = snapshot(work / "at")
    rc, err = run_cli(capsys, ["posthoc", work / "at", "--tau-norm", "0.5", "--out", out, "--n", "10"])
    assert_one_error_line(rc, err, "already exists; pass --force to replace it")
    assert main(["posthoc", str(work / "at"), "--tau-norm", "0.5", "--out", str(out), "--n", "10", "--force"]) == 0
    assert (out / "mine.txt").read_text() == "keep"
    assert json.loads((out / "result.json").read_text())["posthoc"]["tau"] == 0.5
    assert snapshot(work / "at") == src and (work / "notes.txt").read_text() == "the user's own notes"


def test_train_force_deletes_only_what_ltadv_made(work, capsys):
    run = work / "at"
    (run / "my-notes.md").write_text("mine")
    (run / "checkpoints" / "mine.bin").write_bytes(b"\x00\x01")
    (run / "eval_state" / "best" / "stale.pt").write_bytes(b"old flags")  # eval_state is ltadv's: all of it goes
    deleted = clear_run(run)
    assert (run / "my-notes.md").read_text() == "mine"
    assert (run / "checkpoints" / "mine.bin").read_bytes() == b"\x00\x01"
    assert not (run / "result.json").exists() and not (run / "eval_state").exists()
    assert not (run / "checkpoints" / "last.pt").exists() and not (run / "checkpoints" / "best.safetensors").exists()
    assert {p.name for p in deleted} >= {"result.json", "eval_state", "last.pt"}
    assert (work / "notes.txt").read_text() == "the user's own notes"


def test_train_force_on_a_folder_that_is_not_a_run_is_refused(work, capsys):
    before = snapshot(work)
    rc, err = run_cli(capsys, [*BASE, "--out", work, "--force"])  # the folder holding runs, not a run
    assert_one_error_line(rc, err, "ltadv did not make")
    assert snapshot(work) == before
    with pytest.raises(RunDirError, match="did not make"):
        clear_run(work)
    assert snapshot(work) == before


def test_train_force_replaces_eval_state_and_keeps_foreign_files(work, capsys):
    run = work / "at"
    (run / "my-notes.md").write_text("mine")
    flags = run / "eval_state" / "best" / "flags.pt"
    torch.save({"key": "from deleted weights", "flags": {}}, flags)
    assert main([*BASE, "--out", str(run), "--force", "--seed", "3"]) == 0
    assert (run / "my-notes.md").read_text() == "mine"
    assert torch.load(flags, weights_only=True)["key"] != "from deleted weights"
    assert not (run / LOCK).exists()  # the lock goes with the process


@pytest.mark.parametrize("cell", ["../../../victim", "/abs/victim", "..", ".hidden", "a/b", "report"])
def test_sweep_cell_names_must_be_plain_folder_names(tmp_path, capsys, cell):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "result.json").write_text('{"config": {}}')
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"base": {"data.name": "digits-lt", "train.epochs": 1}, "cells": {cell: {}}}))
    before = snapshot(tmp_path)
    rc, err = run_cli(capsys, ["sweep", spec, "--out", tmp_path / "sw" / "a" / "b"])
    assert_one_error_line(rc, err, repr(cell))
    assert snapshot(tmp_path) == before and not (tmp_path / "sw").exists()


def test_sweep_grid_values_never_make_sub_folders():
    names = [n for n, _ in expand({"grid": {"attack.eps": ["8/255", "4/255"], "data.root": ["/x/../y"]}})]
    assert names == ["eps=8_255__root=_x_.._y", "eps=4_255__root=_x_.._y"]
    assert all("/" not in n for n in names)


@pytest.mark.parametrize("text, expected", [
    ("[1, 2]", "must hold a mapping"),
    ("cells: [a, b]", "'cells' must be a mapping"),
    ("base: 3", "'base' must be a mapping"),
    ("grid: [1]", "'grid' must be a mapping"),
    ("cells: {a: 3}", "cell 'a' must be a mapping"),
    ("name: ../../escape", "sweep name"),
    ("name: 5", "'name' must be a string"),
])
def test_wrong_typed_sweep_file_is_one_line(tmp_path, capsys, text, expected):
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    before = snapshot(tmp_path)
    rc, err = run_cli(capsys, ["sweep", spec, "--out", tmp_path / "sw"])
    assert_one_error_line(rc, err, expected)
    assert snapshot(tmp_path) == before
    with pytest.raises(ConfigError):
        load_spec(str(spec))


# ---------------------------------------------------------------- 2. one writer per run folder


def hold_lock(run: Path, pid: int = 4242):
    """Hold ``run``'s lock as another process would (a separate open file description)."""
    fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{pid}\n".encode())
    return fd


@pytest.mark.parametrize("argv", [["train", "--resume", "{run}"], [*BASE, "--out", "{run}", "--force"],
                                  ["eval", "{run}", "--n", "10"],
                                  ["posthoc", "{src}", "--tau-norm", "1", "--out", "{run}", "--force"]])
def test_a_second_writer_gets_one_line_naming_the_holder(work, tmp_path, capsys, argv):
    run = work / "at"
    src = tmp_path / "src"
    shutil.copytree(run, src)
    fd = hold_lock(run)
    try:
        assert lock_holder(run) == 4242
        before = snapshot(work)
        rc, err = run_cli(capsys, [a.format(run=run, src=src) for a in argv])
        assert_one_error_line(rc, err, "in use by PID 4242")
        assert snapshot(work) == before
    finally:
        os.close(fd)
    assert lock_holder(run) is None


def test_a_stale_lock_of_a_dead_process_is_taken_over(work, capsys):
    run = work / "at"
    (run / LOCK).write_text("999999999\n")  # a PID no process has; nobody holds the flock
    notes = []
    with RunLock(run, log=notes.append):
        assert lock_holder(run) == os.getpid()
    assert any("stale lock" in n and "999999999" in n for n in notes)
    assert not (run / LOCK).exists()
    assert main(["eval", str(run), "--n", "10", "--which", "last"]) == 0


def test_lock_is_reentrant_in_one_process_and_exclusive_across_descriptors(tmp_path):
    with RunLock(tmp_path), RunLock(tmp_path):  # train -> evaluate_run nests
        fd = os.open(tmp_path / LOCK, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    assert not (tmp_path / LOCK).exists()


# ---------------------------------------------------------------- 3. non-finite guard, failed / interrupted


def float_fields():
    """Every float-typed config field (dotted), found from the dataclasses themselves."""
    import dataclasses
    import typing

    out = []
    for section in dataclasses.fields(config_mod.Config):
        cls = section.type if isinstance(section.type, type) else getattr(config_mod, str(section.type), None)
        if not dataclasses.is_dataclass(cls):
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "float" in str(hints[f.name]):
                out.append(f"{section.name}.{f.name}")
    return out


def test_every_float_field_rejects_nan_and_inf():
    fields = float_fields()
    assert len(fields) > 20 and "optim.lr" in fields and "optim.milestones" in fields
    defaults = load_config(overrides={"data.name": "digits-lt"}).to_dict()
    for key in fields:
        group, name = key.split(".")
        for bad in (float("nan"), float("inf"), float("-inf")):
            value = [bad] if isinstance(defaults[group][name], list) else bad  # optim.milestones, attack.class_eps
            with pytest.raises(ConfigError, match=key.replace(".", r"\.") + " must be a finite number"):
                load_config(overrides={"data.name": "digits-lt", key: value})


@pytest.mark.parametrize("argv, expected", [
    (["--optim.lr", "inf"], "optim.lr must be a finite number"),
    (["--optim.lr", ".nan"], "optim.lr must be a finite number"),
    (["--method.tau_b", "inf"], "method.tau_b must be a finite number"),
    (["--optim.momentum", "nan"], "optim.momentum must be a finite number"),
    (["--eps", "8/0"], "divides by zero"),
    (["--eval.eps", "1/0"], "divides by zero"),
    (["--seed", "-1"], "seed must be in [0, 4294967295]"),
    (["--seed", "99999999999999999999"], "seed must be in [0, 4294967295]"),
    (["--optim.momentum", "-0.5"], "optim.momentum must be >= 0"),
    (["--optim.lr_decay", "0"], "optim.lr_decay must be > 0"),
    (["--device", "nonsense"], "unknown device 'nonsense'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "cuda:99"], "cuda:99"),
])
def test_bad_numbers_and_devices_leave_the_run_untouched(work, capsys, argv, expected):
    before = snapshot(work)
    rc, err = run_cli(capsys, [*BASE, *argv, "--out", work / "at", "--force"])
    assert_one_error_line(rc, err, expected)
    assert snapshot(work) == before


def test_divergence_stops_at_the_first_nonfinite_loss_and_keeps_the_last_good_epoch(tmp_path, capsys):
    run = tmp_path / "boom"
    # epoch 1 at lr 0.1, then lr x1e12 from epoch 2: the loss goes NaN/inf in epoch 2
    rc, err = run_cli(capsys, [*BASE, "--epochs", "2", "--optim.milestones", "[0.75]", "--optim.lr_decay", "1e12",
                               "--out", run])
    assert_one_error_line(rc, err, "training stopped: ")
    assert "epoch 2" in err and "likely cause" in err and "checkpoint of epoch 1 is kept" in err
    rec = json.loads((run / "result.json").read_text())
    assert rec["status"] == "failed" and "epoch 2" in rec["failure"] and len(rec["epochs"]) == 1
    state = ckpt.load_state(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    for name in ("last.safetensors", "best.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(run / "checkpoints" / name)).values())
    notes = []
    assert load_records(tmp_path, log=notes.append) == []
    assert any("failed" in n and "boom" in n and "epoch 2" in n for n in notes)


def test_divergence_in_the_first_epoch_writes_no_weights(tmp_path, capsys):
    run = tmp_path / "boom"
    rc, err = run_cli(capsys, [*BASE, "--optim.lr", "1e9", "--out", run])
    assert_one_error_line(rc, err, "is far too large")
    assert "no checkpoint was written" in err
    assert not (run / "checkpoints").exists()
    assert json.loads((run / "result.json").read_text())["status"] == "failed"
    # an identical rerun is not blocked by the half-made folder (it fails the same way, not "already exists")
    rc, err = run_cli(capsys, [*BASE, "--optim.lr", "1e9", "--out", run])
    assert_one_error_line(rc, err, "is far too large")
    rc, err = run_cli(capsys, [*BASE, "--optim.lr", "0.5", "--out", run])  # another config: refused
    assert_one_error_line(rc, err, "already exists")


@pytest.mark.parametrize("how", ["sigint", "sigterm"])
def test_interruption_is_recorded_and_resume_finishes(tmp_path, capsys, monkeypatch, how):
    run = tmp_path / "cut"
    real = ltadv.train.check_weights

    def interrupt_in_epoch_2(model, cfg, epoch):
        if epoch == 1:
            if how == "sigint":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # the handler turns it into an exception right here
        real(model, cfg, epoch)

    monkeypatch.setattr(ltadv.train, "check_weights", interrupt_in_epoch_2)
    rc = main([*BASE, "--epochs", "2", "--out", str(run)])
    err = capsys.readouterr().err
    assert rc == (130 if how == "sigint" else 128 + signal.SIGTERM)
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err
    rec = json.loads((run / "result.json").read_text())
    assert rec["status"] == "interrupted" and len(rec["epochs"]) == 1
    assert lock_holder(run) is None
    notes = []
    load_records(tmp_path, log=notes.append)
    assert any("interrupted" in n for n in notes)
    monkeypatch.setattr(ltadv.train, "check_weights", real)
    assert main(["train", "--resume", str(run)]) == 0
    rec = json.loads((run / "result.json").read_text())
    assert rec["status"] == "complete" and len(rec["epochs"]) == 2


def test_report_tells_running_stopped_interrupted_failed_and_finished_apart(trained, tmp_path):
    rec = json.loads((trained / "result.json").read_text())
    for name, status in [("done", "complete"), ("live", "running"), ("killed", "running"), ("cut", "interrupted"),
                         ("bad", "failed"), ("noeval", "trained")]:
        (tmp_path / name).mkdir()
        extra = {"failure": "training stopped: the loss is nan at epoch 3"} if status == "failed" else {}
        (tmp_path / name / "result.json").write_text(json.dumps({**rec, "status": status, **extra}))
    fd = hold_lock(tmp_path / "live")
    try:
        notes = []
        found = load_records(tmp_path, log=notes.append)
    finally:
        os.close(fd)
    assert [p.name for p, _ in found] == ["done"]
    text = "\n".join(notes)
    assert "still running" in text and "live" in text.split("still running")[1].splitlines()[0]
    assert "killed" in text.split("stopped without finishing")[1].splitlines()[0]
    assert "cut" in text.split("interrupted")[1].splitlines()[0]
    assert "loss is nan at epoch 3" in text
    assert "trained but not evaluated" in text
    assert not (tmp_path / "killed" / LOCK).exists()  # report reads only


# ---------------------------------------------------------------- 4. readers name the file and the problem


def test_out_of_range_pixels_and_labels_in_cifar_files(tmp_path, capsys):
    argv = [*BASE[:1], "--data", "cifar10-lt", "--quiet", "--out", tmp_path / "run", "--data-root"]
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_2"

    def rewrite(change=None):
        shutil.rmtree(tmp_path / "data", ignore_errors=True)
        write_cifar10(tmp_path / "data")
        with open(batch, "rb") as f:
            d = pickle.load(f)
        d.update(change or {})
        with open(batch, "wb") as f:
            pickle.dump(d, f, protocol=2)

    rewrite()
    x = pickle.load(open(batch, "rb"))[b"data"].astype(np.int16)
    x[0, 0] = 300
    rewrite({b"data": x})
    rc, err = run_cli(capsys, [*argv, tmp_path / "data"])
    assert_one_error_line(rc, err, "pixel values from 0 to 300")
    assert "data_batch_2" in err
    x[0, 0] = -1
    rewrite({b"data": x})
    rc, err = run_cli(capsys, [*argv, tmp_path / "data"])
    assert_one_error_line(rc, err, "pixel values from -1")
    y = pickle.load(open(batch, "rb"))[b"labels"]
    rewrite({b"labels": [10] + y[1:]})
    rc, err = run_cli(capsys, [*argv, tmp_path / "data"])
    assert_one_error_line(rc, err, "labels from 0 to 10, expected 0..9")
    rewrite({b"labels": [-3] + y[1:]})
    rc, err = run_cli(capsys, [*argv, tmp_path / "data"])
    assert_one_error_line(rc, err, "labels from -3")
    assert not (tmp_path / "run").exists()


def test_test_labels_outside_the_training_classes_are_an_error(tmp_path):
    write_cifar10(tmp_path / "data")
    folder = tmp_path / "data" / "cifar-10-batches-py"
    for i in range(1, 6):  # no training image of class 9
        p = folder / f"data_batch_{i}"
        d = pickle.load(open(p, "rb"))
        keep = np.array(d[b"labels"]) != 9
        d[b"data"], d[b"labels"] = d[b"data"][keep], np.array(d[b"labels"])[keep].tolist()
        pickle.dump(d, open(p, "wb"), protocol=2)
    cfg = load_config(overrides={"data.name": "cifar10-lt", "data.root": str(tmp_path / "data"),
                                 "data.val_per_class": 1})
    with pytest.raises(DataError, match="test labels go up to 9 but the training split has classes 0..8"):
        build_data(cfg.data, 0)


def write_tiny(root: Path, sizes=None) -> Path:
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids))
    rng = np.random.default_rng(0)
    ann = []
    for c, w in enumerate(wnids):
        (folder / "train" / w / "images").mkdir(parents=True)
        for i in range(4):
            size = (sizes or {}).get((w, i), 64)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                folder / "train" / w / "images" / f"{w}_{i}.png")
        name = f"val_{c}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "val" / "images" / name)
        ann.append(f"{name}\t{w}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(ann))
    return folder


def test_tiny_imagenet_wrong_image_size_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("LTADV_CACHE", str(tmp_path / "cache"))
    write_tiny(tmp_path / "data", sizes={("n02", 1): 32})
    with pytest.raises(DataError, match=r"n02_1\.png is 32x32, Tiny-ImageNet images are 64x64"):
        readers.read_tiny_imagenet(str(tmp_path / "data"))


def test_tiny_imagenet_cache_is_rebuilt_when_an_image_changes(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("LTADV_CACHE", str(tmp_path / "cache"))
    folder = write_tiny(tmp_path / "data")
    xtr, *_ = readers.read_tiny_imagenet(str(tmp_path / "data"))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    img = folder / "train" / "n01" / "images" / "n01_0.png"
    Image.fromarray(np.full((64, 64, 3), 7, dtype=np.uint8)).save(img)  # same name, same listing, new pixels
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as a later edit would stamp it
    xtr2, *_ = readers.read_tiny_imagenet(str(tmp_path / "data"))
    assert not np.array_equal(xtr, xtr2)
    assert (xtr2 == 7).all(axis=(1, 2, 3)).sum() == 1  # the edited image, read afresh


# ---------------------------------------------------------------- 5. loaders check the header before allocating


def test_load_model_refuses_an_export_claiming_millions_of_classes(trained, tmp_path):
    out = tmp_path / "w.safetensors"
    assert main(["export", str(trained), "--which", "last", "--out", str(out)]) == 0
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(out))
    mm = json.loads(meta["model_meta"])
    for classes, expected in [(10_000_000, "num_classes must be an integer in [1, 100000]"),
                              (50_000, "shape of head.weight")]:
        save_file(tensors, str(out), metadata={**meta, "model_meta": json.dumps({**mm, "num_classes": classes})})
        with pytest.raises(CheckpointError, match=re.escape(expected)):
            ltadv.load_model(out)
    save_file(tensors, str(out), metadata={**meta, "config": "{not json"})
    with pytest.raises(CheckpointError, match="metadata 'config' is not valid JSON"):
        ltadv.load_model(out)


def test_models_are_first_built_on_the_meta_device(trained, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    rec = json.loads((run / "result.json").read_text())
    rec["model_meta"]["num_classes"] = 50_000  # the record lies; the weights have 10 classes
    (run / "result.json").write_text(json.dumps(rec))
    built = []
    real = ltadv.build.make_model

    def spy(cfg, meta):
        m = real(cfg, meta)
        built.append(next(m.parameters()).device.type)
        return m

    monkeypatch.setattr(ltadv.build, "make_model", spy)
    with pytest.raises(CheckpointError, match="shape of head.weight is \\(10, "):
        ltadv.load_model(run)
    assert built == ["meta"]  # the 50,000-class model was never allocated


def test_record_missing_a_field_or_with_bad_model_meta(work, capsys):
    run = work / "at"
    rec = json.loads((run / "result.json").read_text())
    for broken, expected in [({k: v for k, v in rec.items() if k != "model_meta"}, "has no 'model_meta' entry"),
                             ({k: v for k, v in rec.items() if k != "class_counts"}, "has no 'class_counts' entry"),
                             ({**rec, "model_meta": {**rec["model_meta"], "num_classes": "ten"}}, "num_classes"),
                             ({**rec, "model_meta": {**rec["model_meta"], "std": [0.0]}}, "std must be > 0"),
                             ([1, 2], "holds a list")]:
        (run / "result.json").write_text(json.dumps(broken))
        before = snapshot(work)
        for argv in (["eval", run, "--n", "10"], ["export", run, "--out", work / "x.safetensors"],
                     ["posthoc", run, "--tau-norm", "1", "--out", work / "tn"]):
            rc, err = run_cli(capsys, argv)
            assert_one_error_line(rc, err, expected)
            assert snapshot(work) == before


def test_export_onto_a_directory_is_one_line(work, capsys):
    target = work / "model.safetensors"
    target.mkdir()
    (target / "keep").write_text("x")
    before = snapshot(work)
    for extra in ([], ["--force"]):
        rc, err = run_cli(capsys, ["export", work / "at", "--out", target, *extra])
        assert_one_error_line(rc, err, "is a folder")
        assert snapshot(work) == before


def test_tampered_flags_and_attack_state_files_are_not_trusted(work, capsys):
    run = work / "at"
    flags = run / "eval_state" / "best" / "flags.pt"
    key = torch.load(flags, weights_only=True)["key"]
    torch.save({"key": key, "flags": {"clean": torch.zeros(3, dtype=torch.bool), "pgd20": [1, 2], 7: "x"}}, flags)
    rc = main(["eval", str(run), "--n", "40", "--which", "best"])
    err = capsys.readouterr().err
    assert rc == 0, err
    saved = torch.load(flags, weights_only=True)["flags"]
    assert set(saved) == {"clean", "pgd20"} and all(len(v) == 40 for v in saved.values())
    torch.save({"key": key, "flags": "garbage"}, flags)
    assert main(["eval", str(run), "--n", "40", "--which", "best"]) == 0


# ---------------------------------------------------------------- 6. disk full while saving


def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "full"
    calls = []
    real = ckpt.save_file

    def filling_disk(state, path, *a, **k):
        calls.append(path)
        if len(calls) > 2:  # epoch 1 (best + last) fits; epoch 2 hits a full disk half-way through a file
            Path(path).write_bytes(b"\x00" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(state, path, *a, **k)

    monkeypatch.setattr(ckpt, "save_file", filling_disk)
    rc, err = run_cli(capsys, [*BASE, "--epochs", "2", "--out", run])
    assert_one_error_line(rc, err, "No space left on device; the previous version of the file is intact")
    assert "checkpoints/" in err and "safetensors" in err
    monkeypatch.setattr(ckpt, "save_file", real)
    weights = load_file(str(run / "checkpoints" / "last.safetensors"))  # epoch 1's, whole
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert ckpt.load_state(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp file left
    rec = json.loads((run / "result.json").read_text())
    assert rec["status"] == "failed" and "No space left" in rec["failure"]
    assert main(["train", "--resume", str(run)]) == 0  # room again: the run continues from epoch 1


def test_unwritable_result_is_one_line(tmp_path, capsys, monkeypatch):
    import ltadv.results as results

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(results.tempfile, "mkstemp", denied)
    rc, err = run_cli(capsys, [*BASE, "--out", tmp_path / "run"])
    assert_one_error_line(rc, err, "Permission denied")


@pytest.mark.parametrize("damage, expected", [
    (lambda r: r["epochs"][0].pop("train_seconds"), "epochs[0].train_seconds is None"),
    (lambda r: r["epochs"][0].update(epoch="a"), "epochs[0].epoch is 'a'"),
    (lambda r: r["metrics"]["pgd20"].update(overall="x"), "metrics.pgd20.overall is 'x'"),
    (lambda r: r["metrics"]["clean"].update(per_class="x"), "metrics.clean.per_class is not a list"),
    (lambda r: r.update(class_counts={"a": 1}), "'class_counts' is not a list"),
])
def test_report_skips_a_record_with_wrong_typed_values_with_one_warning(trained, tmp_path, capsys, damage, expected):
    for name in ("good", "bad"):
        shutil.copytree(trained, tmp_path / "runs" / name)
    rec = json.loads((tmp_path / "runs" / "bad" / "result.json").read_text())
    damage(rec)
    (tmp_path / "runs" / "bad" / "result.json").write_text(json.dumps(rec))
    before = snapshot(tmp_path / "runs")
    rc = main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"), "--no-figures"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0
    assert len(err) == 1 and "skipping" in err[0] and "bad" in err[0] and expected in err[0], err
    assert snapshot(tmp_path / "runs") == before


def test_selection_subset_must_not_be_empty_or_negative(work, capsys):
    before = snapshot(work)
    for n in ("0", "-5"):
        rc, err = run_cli(capsys, [*BASE, "--eval.val_n", n, "--out", work / "at", "--force"])
        assert_one_error_line(rc, err, f"eval.val_n must be >= 1, got {n}")
    assert snapshot(work) == before


def test_a_run_made_between_the_check_and_the_lock_is_not_overwritten(trained, tmp_path, capsys, monkeypatch):
    import ltadv.rundir as rundir

    out = tmp_path / "race"
    real_enter = rundir.RunLock.__enter__

    def other_process_finishes_first(self):
        shutil.copytree(trained, out, dirs_exist_ok=True)  # the other `ltadv train` wrote its whole run
        return real_enter(self)

    monkeypatch.setattr(rundir.RunLock, "__enter__", other_process_finishes_first)
    rc, err = run_cli(capsys, [*BASE, "--out", out])
    assert_one_error_line(rc, err, "already exists")
    assert snapshot(out) == snapshot(trained)


def test_a_symlinked_checkpoints_folder_is_refused(work, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    (work / "at" / "checkpoints").rename(elsewhere)
    (work / "at" / "checkpoints").symlink_to(elsewhere)
    before, outside = snapshot(work), snapshot(elsewhere)
    rc, err = run_cli(capsys, [*BASE, "--out", work / "at", "--force"])
    assert_one_error_line(rc, err, "is a symbolic link")
    assert snapshot(work) == before and snapshot(elsewhere) == outside


@pytest.mark.slow
def test_two_real_processes_one_lock_and_sigterm_records_interrupted(tmp_path, capsys):
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(ltadv.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ltadv", *[str(a) for a in BASE[:-1]], "200", "--epochs", "50", "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "last.pt").is_file():  # under way: locked, one epoch done
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert lock_holder(run) == proc.pid
        rc, err = run_cli(capsys, [*BASE, "--out", run, "--force"])
        assert_one_error_line(rc, err, f"in use by PID {proc.pid}")
        rc, err = run_cli(capsys, ["eval", run, "--n", "10"])
        assert_one_error_line(rc, err, f"in use by PID {proc.pid}")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    assert rc == 128 + signal.SIGTERM
    assert proc.stderr.read().strip().splitlines()[-1].startswith("ltadv: interrupted")
    rec = json.loads((run / "result.json").read_text())
    assert rec["status"] == "interrupted" and lock_holder(run) is None and not (run / LOCK).exists()


def test_export_force_replaces_only_an_earlier_export(work, capsys):
    target = work / "model.safetensors"
    target.write_bytes(b"someone else's file")
    before = snapshot(work)
    rc, err = run_cli(capsys, ["export", work / "at", "--out", target, "--force"])
    assert_one_error_line(rc, err, "is not an ltadv export")
    assert snapshot(work) == before
    target.unlink()
    assert main(["export", str(work / "at"), "--out", str(target)]) == 0
    assert main(["export", str(work / "at"), "--which", "last", "--out", str(target), "--force"]) == 0


def test_report_never_overwrites_a_folder_it_did_not_write(trained, tmp_path, capsys):
    shutil.copytree(trained, tmp_path / "runs" / "at")
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "methods.md").write_text("my hand-written table")
    before = snapshot(tmp_path)
    rc, err = run_cli(capsys, ["report", tmp_path / "runs", "--out", mine, "--no-figures"])
    assert_one_error_line(rc, err, "holds no earlier ltadv report")
    assert snapshot(tmp_path) == before
    out = tmp_path / "rep"
    for _ in range(2):  # its own earlier report is rewritten
        assert main(["report", str(tmp_path / "runs"), "--out", str(out), "--no-figures"]) == 0


def test_sweep_into_a_folder_that_is_not_a_sweep_is_refused(work, tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"base": {"data.name": "digits-lt", "train.epochs": 1}, "cells": {"at": {}}}))
    before = snapshot(work)
    rc, err = run_cli(capsys, ["sweep", spec, "--out", work])  # the user's runs folder holding "at"
    assert_one_error_line(rc, err, "is not an earlier sweep's folder")
    assert snapshot(work) == before


def test_tiny_imagenet_edited_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LTADV_CACHE", str(tmp_path / "cache"))
    write_tiny(tmp_path / "data")
    good = readers.read_tiny_imagenet(str(tmp_path / "data"))
    (cache,) = (tmp_path / "cache").glob("*.npz")
    np.savez(cache, xtr=good[0][:1], ytr=np.array([99]), xte=good[2], yte=good[3])  # wrong length, bad label
    again = readers.read_tiny_imagenet(str(tmp_path / "data"))
    assert all(np.array_equal(a, b) for a, b in zip(good, again))


@pytest.mark.parametrize("content, expected", [(b"\xff\xfe\x00binary", "cannot read config file"),
                                               (b"optim: {lr: [1, 2]}", "optim.lr: expected a number")])
def test_unreadable_config_and_sweep_files_name_the_file(work, tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    before = snapshot(work)
    rc, err = run_cli(capsys, [*BASE, "--config", bad, "--out", work / "at", "--force"])
    assert_one_error_line(rc, err, expected)
    if "config file" in expected:
        assert str(bad) in err
        rc, err = run_cli(capsys, ["sweep", bad, "--out", tmp_path / "sw"])
        assert_one_error_line(rc, err, str(bad))
    assert snapshot(work) == before
