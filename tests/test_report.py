"""`ltadv report`, the figures and the sweep's restart, on fabricated run records (and one real sweep)."""

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from ltadv.cli import main
from ltadv.config import load_config, to_dict
from ltadv.data import long_tail_counts
from ltadv.evaluate import class_groups
from ltadv.report import group_runs, load_records, make_labels, write_report
from ltadv.report_figures import aug_stack_curve, classwise_bars, overfitting_curves, tau_b_curve
from ltadv.sweep import run_sweep

ATTACKS = ("clean", "fgsm", "pgd20", "cw", "aa")


def fake_record(overrides: dict, rng: np.random.Generator, n_epochs: int = 6, attacks=ATTACKS,
                status: str = "complete") -> dict:
    """A run record shaped exactly like train.train's, with random but consistent numbers."""
    cfg = load_config(overrides={"data.name": "digits-lt", "train.epochs": n_epochs, **overrides})
    counts = long_tail_counts(100, 10, 10)
    groups = class_groups(counts)
    epochs = []
    for e in range(1, n_epochs + 1):
        clean = float(rng.uniform(0.6, 0.95))
        epochs.append({"epoch": e, "lr": 0.1 if e <= n_epochs - 2 else 0.01, "train_loss": float(rng.uniform(0.5, 2)),
                       "train_robust_acc": float(rng.uniform(0.3, 0.6)) * e / n_epochs,
                       "train_seconds": float(rng.uniform(1, 2)), "eval_seconds": float(rng.uniform(0.1, 0.3)),
                       "peak_mem_mb": float(rng.uniform(100, 200)), "val_clean": clean,
                       "val_robust": float(clean * rng.uniform(0.3, 0.8)), "val_robust_balanced": 0.5,
                       "val_robust_tail": 0.4})
    best = max(epochs, key=lambda r: r["val_robust"])["epoch"]
    metrics = {}
    for a in attacks:  # 50 test images per class, as digits-lt's test split
        per_class = [int(k) / 50 for k in rng.integers(10, 46, size=10)]
        metrics[a] = {"overall": float(np.mean(per_class)), "per_class": per_class,
                      "balanced": float(np.mean(per_class)), "worst": min(per_class),
                      **{k: float(np.mean([per_class[c] for c in groups[k]])) for k in ("head", "medium", "tail")},
                      "n": 500, "per_class_n": [50] * 10}
    return {"ltadv_record": 1, "status": status, "config": to_dict(cfg), "class_counts": counts, "groups": groups,
            "epochs": epochs, "best_epoch": best, "metrics": metrics,
            "metrics_by_checkpoint": {"best": metrics, "last": metrics}}


def write_run(root, name, rec):
    d = root / name
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(rec))
    return d


@pytest.fixture
def runs(tmp_path):
    """at (seeds 0 and 1), at_bsl with tau_b 1 and 2 (seed 0), one unfinished run, one corrupt file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "runs"
    recs = {
        "at_s0": fake_record({"method.name": "at", "seed": 0}, rng),
        "at_s1": fake_record({"method.name": "at", "seed": 1}, rng),
        "nested/bsl1": fake_record({"method.name": "at_bsl", "method.tau_b": 1.0}, rng),
        "nested/bsl2": fake_record({"method.name": "at_bsl", "method.tau_b": 2.0}, rng),
    }
    for name, rec in recs.items():
        write_run(root, name, rec)
    write_run(root, "unfinished", fake_record({"method.name": "at", "seed": 5}, rng, status="running"))
    (write_run(root, "broken", {}) / "result.json").write_text('{"config": {"seed": 0}, "metr')
    return root, recs


def test_load_records_skips_unfinished_and_corrupt(runs):
    root, recs = runs
    bad = fake_record({}, np.random.default_rng(3))
    bad["metrics"] = {"pgd20": 0.5}
    write_run(root, "badmetrics", bad)
    notes = []
    found = load_records(root, log=notes.append)
    assert sorted(d.relative_to(root).as_posix() for d, _ in found) == sorted(recs)
    assert len([n for n in notes if n.startswith("warning:") and "broken" in n]) == 1
    assert len([n for n in notes if n.startswith("warning:") and "badmetrics" in n]) == 1
    assert any(n.startswith("note:") and "unfinished" in n for n in notes)
    assert all("\n" not in n for n in notes)


def test_groups_and_labels(runs):
    root, _ = runs
    groups = group_runs(load_records(root, log=lambda m: None))
    # tau_b tells the at_bsl rows apart; AT has one value, which its name already implies
    assert [g.label for g in groups] == ["at", "at_bsl, tau_b=1", "at_bsl, tau_b=2"]
    assert [len(g.runs) for g in groups] == [2, 1, 1]
    assert sorted(groups[0].seeds) == [0, 1]
    # seeds evaluated with other attacks (or on another device) still average together
    rng = np.random.default_rng(2)
    a = fake_record({"seed": 0, "eval.attacks": ["clean", "pgd20"]}, rng)
    b = fake_record({"seed": 1, "eval.attacks": ["clean", "pgd20", "aa"], "train.device": "cpu"}, rng)
    (g,) = group_runs([(root / "a", a), (root / "b", b)])
    assert g.label == "at_bsl" and len(g.runs) == 2
    assert make_labels([{"method.name": "at", "data.aug": ()}, {"method.name": "at", "data.aug": ("ra", "cutmix")}]) \
        == ["aug=none", "aug=ra+cutmix"]
    assert make_labels([{"attack.eps": 0.1, "eval.eps": 0.1}, {"attack.eps": 0.2, "eval.eps": 0.3}]) \
        == ["attack.eps=0.1, eval.eps=0.1", "attack.eps=0.2, eval.eps=0.3"]
    # a method's preset is not spelled out (lt_baselines: at_rs is sampler=balanced); tau_p splits the at rows
    cfgs = [{"method.name": "at", "data.sampler": "uniform", "method.tau_p": 0.0},
            {"method.name": "at", "data.sampler": "uniform", "method.tau_p": 1.0},
            {"method.name": "at_rs", "data.sampler": "balanced", "method.tau_p": 0.0}]
    assert make_labels(cfgs) == ["at, tau_p=0", "at, tau_p=1", "at_rs"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_files_and_numbers(runs, tmp_path):
    root, recs = runs
    out = tmp_path / "rep"
    rep = write_report(root, out, relative_to="at_s0", log=lambda m: None)
    for stem in ("methods", "groups", "cost", "classwise"):
        for ext in ("md", "csv", "tex"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0
    for stem in ("overfitting", "classwise", "tau_b"):  # runs differ in tau_b; not in data.aug
        for ext in ("png", "pdf"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000
    assert not (out / "aug_stack.png").exists()
    assert (out / "report.md").is_file() and set(rep.paths) >= {out / "methods.csv", out / "tau_b.png"}

    # method table: mean and sample std over the two seeds of `at`, plain values for one seed; the
    # test set is balanced (50 images per class), so no balanced-accuracy columns
    rows = {r["run"]: r for r in read_csv(out / "methods.csv")}
    at = [recs["at_s0"]["metrics"], recs["at_s1"]["metrics"]]
    for a in ATTACKS:
        vals = [m[a]["overall"] for m in at]
        assert float(rows["at"][f"{a}_overall"]) == pytest.approx(statistics.fmean(vals))
        assert float(rows["at"][f"{a}_overall_std"]) == pytest.approx(statistics.stdev(vals))
        single = recs["nested/bsl2"]["metrics"][a]["overall"]
        assert float(rows["at_bsl, tau_b=2"][f"{a}_overall"]) == pytest.approx(single)
        assert rows["at_bsl, tau_b=2"][f"{a}_overall_std"] == ""
        assert f"{a}_balanced" not in rows["at"]
    assert rows["at"]["seeds"] == "2" and rows["at"]["test_images"] == "500"
    md = (out / "methods.md").read_text()
    v = [m["pgd20"]["overall"] for m in at]
    # two seeds: mean ± half-width of the 95% t interval, t(0.975, 1 df) = 12.7062 (t tables); 500 images: 1 decimal
    half = 12.7062 * statistics.stdev(v) / 2 ** 0.5
    assert f"{100 * statistics.fmean(v):.1f} ± {100 * half:.1f}" in md
    for title in ("Clean", "FGSM", "PGD-20", "CW", "AA"):
        assert title in md
    tex = (out / "methods.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and r"at\_bsl, tau\_b=2" in tex and "+-" not in tex

    # group table: head / medium / tail per run and attack with their test images (3, 4, 3 classes x 50)
    grows = [r for r in read_csv(out / "groups.csv") if r["run"] == "at_bsl, tau_b=2" and r["attack"] == "PGD-20"]
    m = recs["nested/bsl2"]["metrics"]["pgd20"]
    for k, images in (("head", "150"), ("medium", "200"), ("tail", "150")):
        assert float(grows[0][k]) == pytest.approx(m[k]) and grows[0][f"{k}_images"] == images

    # cost table: per-epoch means over epochs, then over seeds; ratios to the reference row
    cost_rows = {r["run"]: r for r in read_csv(out / "cost.csv")}
    per_run = [statistics.fmean(e["train_seconds"] for e in recs[n]["epochs"]) for n in ("at_s0", "at_s1")]
    assert float(cost_rows["at"]["train_s_per_epoch"]) == pytest.approx(statistics.fmean(per_run))
    bsl = statistics.fmean(e["train_seconds"] for e in recs["nested/bsl1"]["epochs"])
    assert float(cost_rows["at_bsl, tau_b=1"]["time_ratio"]) == pytest.approx(bsl / statistics.fmean(per_run))
    assert float(cost_rows["at"]["time_ratio"]) == pytest.approx(1.0)
    peak = max(e["peak_mem_mb"] for e in recs["nested/bsl2"]["epochs"])
    assert float(cost_rows["at_bsl, tau_b=2"]["peak_mem_mb"]) == pytest.approx(peak)

    # class-wise table: one row per run and attack, per-class means
    cw = [r for r in read_csv(out / "classwise.csv") if r["run"] == "at" and r["attack"] == "PGD-20"]
    assert len(cw) == 1 and len(read_csv(out / "classwise.csv")) == 3 * len(ATTACKS)
    for c in range(10):
        assert float(cw[0][f"class_{c}"]) == pytest.approx(statistics.fmean(m["pgd20"]["per_class"][c] for m in at))


def test_figures_have_expected_artists(runs):
    root, _ = runs
    groups = group_runs(load_records(root, log=lambda m: None))
    fig = overfitting_curves(groups)
    robust_ax, clean_ax = fig.axes
    robust = [ln for ln in robust_ax.lines if ln.get_linestyle() == "-"]
    train = [ln for ln in robust_ax.lines if ln.get_linestyle() == "--"]
    stars = [ln for ln in robust_ax.lines if ln.get_marker() == "*"]
    assert len(robust) == len(train) == len(stars) == len(groups)
    assert [len(line.get_xdata()) for line in robust] == [6, 6, 6]
    # values in %: the single-seed group's selection curve and training-robustness curve
    rec = groups[1].records[0]
    assert list(robust[1].get_ydata()) == pytest.approx([100 * e["val_robust"] for e in rec["epochs"]])
    assert list(train[1].get_ydata()) == pytest.approx([100 * e["train_robust_acc"] for e in rec["epochs"]])
    # the single-seed group's star sits at its recorded best epoch
    assert stars[1].get_xdata()[0] == rec["best_epoch"]
    assert "validation" in robust_ax.get_title()

    fig = classwise_bars(groups)
    ax_g, ax_c, ax2 = fig.axes
    assert len(ax_g.patches) == len(groups) * 3  # head, medium, tail per group
    assert [p.get_height() for p in ax_g.patches[3:6]] == pytest.approx(
        [100 * rec["metrics"]["aa"][k] for k in ("head", "medium", "tail")])  # strongest shared: AA
    assert list(ax_c.lines[1].get_ydata()) == pytest.approx([100 * v for v in rec["metrics"]["aa"]["per_class"]])
    assert ax2.get_yscale() == "log" and list(ax2.lines[0].get_ydata()) == groups[0].class_counts()

    fig = tau_b_curve(groups)
    # one series per method (the other differing key): overall + tail lines each; the two-seed `at`
    # at its one tau_b gets its ± 1 std as error bars (a band needs two points)
    assert len([ln for ln in fig.axes[0].lines if ln.get_marker() == "o"]) == 2 * 2
    assert len(fig.axes[0].containers) == 2

    fig = aug_stack_curve(groups)  # no aug differences: every group is its own series at x = 0
    assert len([ln for ln in fig.axes[0].lines if ln.get_marker() == "o"]) == 2 * len(groups)


def test_aug_stack_figure_and_relative_to_error(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "aug"
    for i, aug in enumerate([[], ["ra"], ["cutmix"], ["ra", "cutmix"]]):
        rec = fake_record({"method.name": "at_bsl"}, rng)
        rec["config"]["data"]["aug"] = aug  # aug names need not be registered for a report
        write_run(root, f"a{i}", rec)
    out = tmp_path / "rep"
    write_report(root, out, formats=["csv"], log=lambda m: None)
    assert (out / "aug_stack.png").is_file() and not (out / "tau_b.png").exists()
    assert not (out / "methods.md").exists() and (out / "methods.csv").is_file()
    groups = group_runs(load_records(root, log=lambda m: None))
    assert [g.label for g in groups] == ["aug=none", "aug=cutmix", "aug=ra", "aug=ra+cutmix"]  # by length, then name
    ax = aug_stack_curve(groups).axes[0]
    assert len(ax.lines) == 2  # one series: overall + tail
    assert list(ax.lines[0].get_xdata()) == [0, 1, 2]
    # x = 1 averages the two one-augmentation sets (in %)
    mean1 = 100 * statistics.fmean(g.records[0]["metrics"]["aa"]["overall"] for g in groups[1:3])
    assert ax.lines[0].get_ydata()[1] == pytest.approx(mean1)

    with pytest.raises(ValueError, match="matches no run"):
        write_report(root, tmp_path / "rep2", relative_to="nope", log=lambda m: None)
    assert not (tmp_path / "rep2").exists()


def test_cli_report(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "cli"
    assert main(["report", str(root), "--out", str(out), "--format", "md,tex", "--relative-to", "at_bsl, tau_b=1"]) == 0
    cap = capsys.readouterr()
    assert "time x at_bsl, tau_b=1" in cap.out and "ltadv: warning: skipping" in cap.err
    assert (out / "cost.tex").is_file() and not (out / "cost.csv").exists()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(root), "--format", "xlsx"]) == 2
    err = capsys.readouterr().err
    assert "ltadv: error: runs folder not found" in err and "unknown report format 'xlsx'" in err


TINY_SWEEP = {
    "name": "tiny",
    "base": {"data.name": "digits-lt", "method.name": "at_bsl", "train.epochs": 1, "attack.steps": 2,
             "optim.batch_size": 128, "eval.n": 50, "eval.val_n": 30},
    "grid": {"method.tau_b": [0.0, 2.0]},
}


class Interrupt(Exception):
    pass


@pytest.fixture
def one_thread(monkeypatch):
    # the cells run as subprocesses; one thread each keeps them quick on a busy 2-core machine
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_sweep_interrupted_after_one_cell_resumes_missing_only(tmp_path, one_thread):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_SWEEP))
    out = tmp_path / "sweep"

    def stop_after_first(msg):
        lines.append(msg)
        if ": done" in msg:
            raise Interrupt

    lines = []
    with pytest.raises(Interrupt):
        run_sweep(str(spec), out, log=stop_after_first)
    assert [m.split(" in ")[0] for m in lines] == ["[1/2] tau_b=0.0: training", "[1/2] tau_b=0.0: done"]
    first = out / "tau_b=0.0" / "result.json"
    mtime = first.stat().st_mtime_ns
    assert not (out / "tau_b=2.0").exists() and not (out / "report").exists()

    lines = []
    records = run_sweep(str(spec), out, log=lines.append)
    starts = [m for m in lines if m.startswith("[") and ": done" not in m]
    assert starts == ["[1/2] tau_b=0.0: complete, skipped", "[2/2] tau_b=2.0: training"]
    assert first.stat().st_mtime_ns == mtime
    assert [r["config"]["method"]["tau_b"] for r in records.values()] == [0.0, 2.0]
    # the sweep ends with the report on the grid
    rows = read_csv(out / "report" / "methods.csv")
    assert [r["run"] for r in rows] == ["tau_b=0", "tau_b=2"]
    assert (out / "report" / "tau_b.png").is_file() and (out / "summary.md").is_file()


@pytest.mark.slow
def test_sweep_killed_mid_cell_resumes_that_cell(tmp_path, one_thread):
    spec = {**TINY_SWEEP, "base": {**TINY_SWEEP["base"], "train.epochs": 4}, "grid": {"method.tau_b": [1.0]}}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "ltadv", "sweep", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = out / "tau_b=1.0" / "result.json"  # rewritten after each epoch's checkpoint

    def epochs_on_disk():
        try:
            return len(json.loads(record.read_text())["epochs"])
        except (OSError, ValueError, KeyError):
            return 0

    deadline = time.time() + 300
    while epochs_on_disk() < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its training process, mid-run
    proc.wait()
    done = json.loads(record.read_text())
    assert done["status"] == "running" and 1 <= len(done["epochs"]) < 4

    lines = []
    records = run_sweep(str(path), out, log=lines.append)
    assert "[1/1] tau_b=1.0: resuming" in lines
    rec = records["tau_b=1.0"]
    assert rec["status"] == "complete" and [e["epoch"] for e in rec["epochs"]] == [1, 2, 3, 4]
    # epochs finished before the kill are kept, not retrained
    assert rec["epochs"][: len(done["epochs"])] == done["epochs"]


def test_report_layers_have_no_import_circle():
    """report_data is below report and report_figures; the figures never load the tables' module, and
    the data layer loads neither (a fresh interpreter, so no earlier import hides a circle)."""
    code = ("import sys, ltadv.report_figures; "
            "print('ltadv.report' in sys.modules, 'ltadv.report_data' in sys.modules); "
            "import ltadv.report_data as d; "
            "print(sorted(m for m in sys.modules if m.startswith('ltadv.report')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "False True"
    code = "import sys, ltadv.report_data; print(sorted(m for m in sys.modules if m.startswith('ltadv.report')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['ltadv.report_data']"


def test_report_keeps_the_data_layer_names():
    """`ltadv.report.load_records / group_runs / Group ...` stay the documented names (SPEC section 7's
    Python API and the README): they are the data layer's objects, not copies."""
    import ltadv.report as report
    import ltadv.report_data as data

    for name in ("load_records", "group_runs", "make_labels", "Group", "Stat", "ReportError", "record_accuracy",
                 "accuracy_stat", "main_attack", "differing_keys", "ATTACK_TITLES", "GROUP_KEYS"):
        assert getattr(report, name) is getattr(data, name), name
