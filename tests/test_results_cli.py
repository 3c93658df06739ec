"""Results integrity and the command line around it: keyed evaluations, eval flags, progress without a
terminal, smoke-test limits, `ltadv list` and `ltadv config`."""

from __future__ import annotations

import json

import pytest
import yaml

from ltadv.catalog import describe, registries
from ltadv.cli import main
from ltadv.config import load_config
from ltadv.progress import Progress

RUN = ["--data", "digits-lt", "--epochs", "1", "--attack.steps", "1", "--eval.attacks", "clean,pgd20", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("r") / "run"
    assert main(["train", *RUN, "--out", str(out)]) == 0
    return out


def test_subset_and_other_eps_evals_keep_the_headline_numbers(run_dir, capsys):
    before = json.loads((run_dir / "result.json").read_text())
    headline = json.dumps([before["metrics"], before["metrics_by_checkpoint"], before["eval"]], sort_keys=True)
    assert before["eval"]["n"] == 500 and before["evaluations"]["best n=500 eps=0.1"]["headline"] is True
    assert main(["eval", str(run_dir), "--n", "50", "--which", "best"]) == 0
    assert main(["eval", str(run_dir), "--n", "20", "--which", "best"]) == 0
    assert main(["eval", str(run_dir), "--eps", "0.05", "--which", "last", "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "50 test images" in out and "its own entry" in out and "eps 0.05" in out
    after = json.loads((run_dir / "result.json").read_text())
    assert json.dumps([after["metrics"], after["metrics_by_checkpoint"], after["eval"]], sort_keys=True) == headline
    ev = after["evaluations"]
    assert {"best n=50 eps=0.1", "best n=20 eps=0.1", "last n=500 eps=0.05"} <= set(ev)
    assert ev["best n=20 eps=0.1"]["n"] == 20 and ev["best n=20 eps=0.1"]["headline"] is False
    assert ev["last n=500 eps=0.05"]["eps"] == 0.05
    # a smaller eps cannot lower robust accuracy below the run's eps on the same points (same model, PGD-20)
    assert ev["last n=500 eps=0.05"]["metrics"]["pgd20"]["overall"] >= \
        after["metrics_by_checkpoint"]["last"]["pgd20"]["overall"] - 0.05


def test_rerunning_the_headline_eval_updates_the_headline(run_dir):
    assert main(["eval", str(run_dir), "--which", "best", "--attacks", "clean,fgsm"]) == 0
    rec = json.loads((run_dir / "result.json").read_text())
    assert "fgsm" in rec["metrics"] and "fgsm" in rec["evaluations"]["best n=500 eps=0.1"]["metrics"]
    assert "pgd20" in rec["metrics"]  # merged, not replaced


def test_eval_flags_are_not_abbreviations(run_dir, capsys):
    assert main(["eval", str(run_dir), "--eps-s"]) == 2  # no prefix matching of --eps-sweep
    assert main(["eval", str(run_dir), "--eps", "nan"]) == 2
    assert "--eps" in capsys.readouterr().err


def test_progress_lines_without_a_terminal(tmp_path, capsys):
    # pytest's captured stderr is not a terminal: the epoch's progress comes as lines, within the first batches
    out = tmp_path / "p"
    assert main(["train", "--data", "digits-lt", "--epochs", "1", "--attack.steps", "1", "--eval.attacks", "clean",
                 "--train.log_every", "0", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"ltadv training {out}"
    assert any(line.startswith("  data    digits-lt: 10 classes, 461 training images") for line in lines)
    progress = [line for line in lines if line.startswith("epoch 1/1: ")]
    assert progress[0].startswith("epoch 1/1: 1/8 batches, ") and "img/s" in progress[0] and "ETA" in progress[0]
    assert progress[-1].startswith("epoch 1/1: 8/8 batches")


def test_progress_line_rate_and_eta():
    logged = []
    p = Progress(4, "stage", enabled=True, log=logged.append, every=0, images_per_step=10)
    p.lines = True  # as without a terminal
    p.update(1)
    p.update(3)
    assert len(logged) == 2 and logged[0].startswith("stage: 1/4 batches, ") and "img/s" in logged[0]
    assert "ETA" in logged[0] and logged[1].startswith("stage: 4/4 batches") and "ETA" not in logged[1]
    slow = []
    q = Progress(4, "x", enabled=True, log=slow.append, every=1e9)
    q.lines = True
    q.update(4)  # a loop shorter than `every`: no line (the caller's summary follows)
    off = []
    r = Progress(3, "x", enabled=False, log=off.append, every=0)
    r.update(3)
    assert slow == [] and off == []


def test_max_batches_smoke_test(tmp_path):
    out = tmp_path / "m"
    assert main(["train", "--data", "digits-lt", "--epochs", "1", "--attack.steps", "1", "--eval.attacks", "clean",
                 "--quiet", "--train.max_batches", "2", "--eval.max_batches", "1", "--eval.batch_size", "30",
                 "--out", str(out)]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["epochs"][0]["batches"] == 2
    assert rec["selection"]["n"] == 30 and rec["eval"]["n"] == 30 and rec["eval"]["test_set"] == 500
    assert main(["train", "--data", "digits-lt", "--train.max_batches", "0", "--out", str(tmp_path / "z")]) == 2


def test_list_describes_every_registered_name(capsys):
    for kind, reg in registries().items():
        for name in reg:
            assert describe(kind, name), (kind, name)
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "at_la " in out and "logit-adjusted" in out and "arXiv 2007.07314" in out


def test_config_prints_a_resolvable_config(tmp_path, capsys):
    assert main(["config", "--protocol", "at-bsl-cifar10", "--optim.lr", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "# protocol at-bsl-cifar10: optim.lr 0.1 -> 0.05" in out
    f = tmp_path / "c.yaml"
    f.write_text(out)
    cfg = load_config(f)
    assert cfg == load_config(overrides={"protocol": "at-bsl-cifar10", "optim.lr": 0.05})
    assert yaml.safe_load(out)["optim"]["milestones"] == [75.0, 90.0, 100.0]
    assert not (tmp_path / "runs").exists()
