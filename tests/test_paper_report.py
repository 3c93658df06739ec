"""The report's paper rules (issue 16): intervals, n, duplicates, best marking, column order, balanced
columns, decimals, figures for a paper, and the environment in the run record."""

import csv
import json
import platform
import sys

import numpy as np
import pytest
import torch
from matplotlib.ticker import MaxNLocator

from ltadv.intervals import percent_decimals, t_interval, wilson_interval
from ltadv.report import group_runs, load_records, method_table, to_latex, to_markdown, write_report
from ltadv.report_figures import classwise_robustness, lr_changes, overfitting_curves
from ltadv.results import environment

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from test_report import fake_record, write_run  # noqa: E402


def test_wilson_interval_equals_hand_computed():
    # 7 correct of 15, z = 1.959964: centre (7 + z^2/2) / (15 + z^2) = 8.920729 / 18.841459 = 0.473463;
    # half-width z / (15 + z^2) * sqrt(7 * 8 / 15 + z^2 / 4) = 0.104024 * 2.166494 = 0.225367
    lo, hi = wilson_interval(7, 15)
    assert lo == pytest.approx(0.248096, abs=2e-6) and hi == pytest.approx(0.698830, abs=2e-6)
    # 0 of 20: the Wilson interval stays inside [0, 1] (lo 0, hi z^2 / (20 + z^2) = 3.841459 / 23.841459)
    lo, hi = wilson_interval(0, 20)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.161124, abs=2e-6)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_t_interval_equals_hand_computed():
    # mean 0.53, sample std 0.03, t(0.975, 2 df) = 4.302653 (t tables): 0.53 -+ 4.302653 * 0.03 / sqrt(3)
    lo, hi = t_interval([0.50, 0.56, 0.53])
    assert lo == pytest.approx(0.455476, abs=2e-6) and hi == pytest.approx(0.604524, abs=2e-6)
    assert t_interval([0.5]) is None


def test_percent_decimals_follow_the_test_images():
    assert [percent_decimals(n) for n in (15, 50, 100, 150, 500, 1000, 10000, 50000)] == [0, 0, 0, 1, 1, 1, 2, 2]


def one_run(overall_k: int, n: int = 500, seed: int = 0, method: str = "at", attacks=("clean", "pgd20"),
            per_class_n=None) -> dict:
    """A record whose accuracies are exact counts: ``overall_k`` of ``n`` under every attack."""
    rec = fake_record({"method.name": method, "seed": seed}, np.random.default_rng(seed), attacks=attacks)
    counts = per_class_n or [n // 10] * 10
    for m in rec["metrics"].values():
        ks = [overall_k // 10] * 10
        ks[0] += overall_k - sum(ks)
        m.update(overall=overall_k / n, n=n, per_class_n=counts, per_class=[k / c for k, c in zip(ks, counts)],
                 balanced=float(np.mean([k / c for k, c in zip(ks, counts)])))
    return rec


def groups_of(tmp_path, recs: dict):
    for name, rec in recs.items():
        write_run(tmp_path / "runs", name, rec)
    return group_runs(load_records(tmp_path / "runs", log=lambda m: None))


def test_single_run_cells_carry_their_wilson_interval(tmp_path):
    groups = groups_of(tmp_path, {"a": one_run(400), "b": one_run(300, method="at_bsl")})
    table = method_table(groups)
    st = table.rows[0][table.columns.index(next(c for c in table.columns if c.key == "pgd20_overall"))]
    # 400 / 500 by hand: centre 0.797748, half-width 0.035002
    assert (st.lo, st.hi) == pytest.approx((0.762711, 0.832715), abs=2e-6)
    assert "80.0 [76.3, 83.3]" in to_markdown(table)


def test_duplicate_run_is_not_another_seed(tmp_path):
    a0, a1 = one_run(400, seed=0), one_run(350, seed=1)
    copy = json.loads(json.dumps(a1))
    for m in copy["metrics"].values():  # a re-run of seed 1 with other numbers must not move the mean
        m["overall"] = 0.1
    notes = []
    for name, rec in {"s0": a0, "s1": a1, "zz_copy_of_s1": copy}.items():
        write_run(tmp_path / "runs", name, rec)
    rep = write_report(tmp_path / "runs", tmp_path / "rep", formats=["csv"], figures=False, log=notes.append)
    (g,) = rep.groups
    assert len(g.runs) == 2 and sorted(g.seeds) == [0, 1]
    assert [(d.name, k.name) for d, k in g.duplicates] == [("zz_copy_of_s1", "s1")]
    assert any("not counted as more seeds" in n and "zz_copy_of_s1" in n for n in notes)
    row = next(csv.DictReader(open(tmp_path / "rep" / "methods.csv")))
    assert row["seeds"] == "2" and float(row["pgd20_overall"]) == pytest.approx((0.8 + 0.7) / 2)
    assert "not counted as more seeds" in (tmp_path / "rep" / "report.md").read_text()


def bold_cells(table) -> list[str]:
    return [c for line in to_markdown(table).splitlines() for c in line.split("|") if "**" in c]


def test_best_marked_only_when_intervals_separate(tmp_path):
    # 400/500 [76.3, 83.3] vs 300/500 [55.6, 64.2]: apart, the best is bold
    apart = method_table(groups_of(tmp_path / "1", {"a": one_run(400), "b": one_run(300, method="at_bsl")}))
    assert [c.strip() for c in bold_cells(apart)] == ["**80.0 [76.3, 83.3]**"] * 2  # clean and PGD-20
    assert r"\textbf{80.0 [76.3, 83.3]}" in to_latex(apart)
    # 400/500 [76.3, 83.3] vs 390/500 [74.2, 81.4]: overlapping, nothing is bold though 80.0 > 78.0
    close = method_table(groups_of(tmp_path / "2", {"a": one_run(400), "b": one_run(390, method="at_bsl")}))
    assert bold_cells(close) == [] and r"\textbf" not in to_latex(close)
    # a tie is never bold
    tie = method_table(groups_of(tmp_path / "3", {"a": one_run(400), "b": one_run(400, method="at_bsl")}))
    assert bold_cells(tie) == []


def test_columns_in_paper_order(tmp_path):
    scrambled = ("aa", "lsa", "clean", "cw", "aa_apgd", "pgd20", "fgsm", "mim")
    table = method_table(groups_of(tmp_path, {"a": one_run(400, attacks=scrambled)}))
    assert [c.title for c in table.columns] == ["run", "seeds", "test images", "Clean", "FGSM", "PGD-20", "MIM",
                                                "CW", "LSA", "AA-apgd", "AA"]


def test_balanced_columns_only_on_imbalanced_test_sets(tmp_path):
    balanced = method_table(groups_of(tmp_path / "1", {"a": one_run(40, n=100)}))
    assert not any("bal." in c.title for c in balanced.columns)
    uneven = [5, 15, 10, 10, 10, 10, 10, 10, 10, 10]  # e.g. `ltadv eval --n 100` on a shuffled test split
    imbalanced = method_table(groups_of(tmp_path / "2", {"a": one_run(40, n=100, per_class_n=uneven)}))
    assert [c.title for c in imbalanced.columns if "bal." in c.title] == ["Clean bal.", "PGD-20 bal."]
    # a record from before per_class_n: balanced when its per-class accuracies fit 50 images per class
    old = one_run(400)
    for m in old["metrics"].values():
        del m["per_class_n"]
    assert not any("bal." in c.title for c in method_table(groups_of(tmp_path / "3", {"a": old})).columns)


def test_terminal_table_shows_balanced_only_on_imbalanced_test_sets():
    from ltadv.report import format_table

    head = format_table({"a": one_run(40, n=100)}).splitlines()[0]
    assert "balanced" not in head and "worst-class pgd20 %" in head and "tail pgd20 %" in head
    uneven = [5, 15, 10, 10, 10, 10, 10, 10, 10, 10]
    assert "balanced pgd20 %" in format_table({"a": one_run(40, n=100, per_class_n=uneven)}).splitlines()[0]


def test_group_cells_show_their_images_and_few_decimals(tmp_path):
    # 150 test images (15 per class): the tail (3 classes) holds 45 images, so whole percents
    rec = one_run(90, n=150)
    write_run(tmp_path / "runs", "a", rec)
    rep = write_report(tmp_path / "runs", tmp_path / "rep", formats=["md", "csv", "tex"], figures=False,
                       log=lambda m: None)
    row = next(r for r in csv.DictReader(open(tmp_path / "rep" / "groups.csv")) if r["attack"] == "PGD-20")
    assert row["tail_images"] == "45" and row["head_images"] == "45" and row["medium_images"] == "60"
    tail = rep.tables[2].rows[1][rep.tables[2].columns.index(next(c for c in rep.tables[2].columns if c.key == "tail"))]
    k = round(tail.mean * 45)
    lo, hi = wilson_interval(k, 45)
    assert f"{100 * k / 45:.0f} [{100 * lo:.0f}, {100 * hi:.0f}]" in (tmp_path / "rep" / "groups.md").read_text()
    for ext in ("md", "tex"):
        assert "+-" not in (tmp_path / "rep" / f"methods.{ext}").read_text()


def curve_record(seed: int, split: str = "test", select_from: int = 1, epochs: int = 8) -> dict:
    rec = fake_record({"method.name": "at", "seed": seed, "eval.select_on": split, "eval.select_from": select_from},
                      np.random.default_rng(seed), n_epochs=epochs)
    lrs = [0.1] * 5 + [0.01] * 2 + [0.001]  # milestones after epochs 5 and 7
    for e, lr in zip(rec["epochs"], lrs):
        e["lr"] = lr
        if e["epoch"] < select_from:
            e["val_robust"] = e["val_clean"] = None
    rec["selection"] = {"split": split, "n": 500, "attack": "pgd20", "from_epoch": select_from}
    return rec


def test_overfitting_figure_for_a_paper(tmp_path):
    groups = groups_of(tmp_path, {f"s{i}": curve_record(i, select_from=3) for i in range(3)})
    fig = overfitting_curves(groups)
    robust_ax, clean_ax = fig.axes
    for ax in (robust_ax, clean_ax):
        locator = ax.xaxis.get_major_locator()
        assert isinstance(locator, MaxNLocator) and locator._integer
        assert all(float(t).is_integer() for t in ax.get_xticks())
        # lr milestones: a dotted line between epochs 5 | 6 and 7 | 8
        assert sorted(ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == ":") == [5.5, 7.5]
    # the selection curve skips the epochs before eval.select_from; the training curve has them all
    solid = [ln for ln in robust_ax.lines if ln.get_linestyle() == "-"]
    dashed = [ln for ln in robust_ax.lines if ln.get_linestyle() == "--"]
    assert list(solid[0].get_xdata()) == [3, 4, 5, 6, 7, 8] and list(dashed[0].get_xdata()) == list(range(1, 9))
    assert "test" in robust_ax.get_title() and "validation" not in robust_ax.get_title()
    assert "test" in fig._suptitle.get_text()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "± 1 std over 3 seeds" in labels and "lr decay" in labels
    assert max(robust_ax.get_ylim()) > 1.5  # percent, not fractions


def test_lr_changes_mark_decays_once():
    def group_with(lrs):
        class G:
            records = [{"epochs": [{"epoch": i + 1, "lr": lr} for i, lr in enumerate(lrs)]}]
        return G()

    assert lr_changes([group_with([0.1, 0.1, 0.01, 0.01, 0.001])]) == [(3, 0.01), (5, 0.001)]
    # RoBal's compounding decay (x0.1 every epoch after the first milestone, x0.01 after the second) and
    # a warm-up (rising): a mark where the factor changes, none while it keeps falling the same way
    assert lr_changes([group_with([0.05, 0.1, 0.1, 0.01, 0.001, 1e-5])]) == [(4, 0.01), (6, 1e-5)]


def many_class_record(n_classes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    counts = sorted((int(500 * 0.01 ** (i / (n_classes - 1))) for i in range(n_classes)), reverse=True)
    rec = fake_record({"method.name": "at", "seed": seed}, rng, attacks=("clean", "pgd20"))
    rec["class_counts"] = counts
    third = round(n_classes / 3)
    rec["groups"] = {"head": list(range(third)), "medium": list(range(third, n_classes - third)),
                     "tail": list(range(n_classes - third, n_classes))}
    for m in rec["metrics"].values():
        pc = [int(k) / 50 for k in rng.integers(5, 45, size=n_classes)]
        m.update(per_class=pc, per_class_n=[50] * n_classes, n=50 * n_classes, overall=float(np.mean(pc)))
    return rec


@pytest.mark.parametrize("n_classes", [10, 200])
def test_classwise_figure_stays_readable_at_200_classes(tmp_path, n_classes):
    groups = groups_of(tmp_path, {"a": many_class_record(n_classes), "b": many_class_record(n_classes, seed=1)})
    fig = classwise_robustness(groups)
    width, height = fig.get_size_inches()
    assert width <= 12 and height <= 5  # a page width whatever the classes (was 0.55 inch per class)
    ax_g, ax_c, ax2 = fig.axes
    assert len(ax_g.patches) == 3  # head, medium, tail bars of the one group (two seeds)
    (line,) = ax_c.lines
    assert len(line.get_xdata()) == n_classes and list(line.get_xdata()) == list(range(1, n_classes + 1))
    if n_classes > 20:  # rank ticks, not 200 class labels
        assert len(ax_c.get_xticks()) < 20
    assert list(ax2.get_lines()[0].get_ydata()) == groups[0].class_counts()  # already sorted, most first


def test_environment_fields():
    env = environment()
    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    for key in ("ltadv", "torchvision", "numpy", "platform", "cpu"):
        assert isinstance(env[key], str) and env[key]
    assert isinstance(env["gpu_count"], int) and isinstance(env["cpu_count"], int)
    assert env["commit"] is None or len(env["commit"]) == 40
    assert env["commit_dirty"] in (None, True, False)
    assert env["cuda"] is None or isinstance(env["cuda"], str)
    assert env["cudnn"] is None or isinstance(env["cudnn"], int)
    assert env["pyautoattack"] is None or isinstance(env["pyautoattack"], str)
    if torch.cuda.is_available():
        assert env["gpu"] == torch.cuda.get_device_name(0) and env["gpu_count"] == torch.cuda.device_count()
    else:
        assert env["gpu"] is None and env["gpu_count"] == 0
    json.dumps(env)  # it goes into result.json


def test_training_record_holds_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from ltadv.config import load_config
    from ltadv.train import train

    cfg = load_config(overrides={"data.name": "digits-lt", "train.epochs": 1, "attack.steps": 1,
                                 "optim.batch_size": 256, "eval.n": 40, "eval.val_n": 20,
                                 "eval.checkpoints": ["last"], "train.progress": False})
    rec = train(cfg, tmp_path / "run", log=lambda *a, **k: None)
    env = json.loads((tmp_path / "run" / "result.json").read_text())["environment"]
    assert env == rec["environment"]
    assert env["torch"] == torch.__version__ and env["python"] == platform.python_version()
    # per-class test counts are recorded, so class-group intervals are exact
    m = rec["metrics"]["pgd20"]
    assert sum(m["per_class_n"]) == m["n"] == 40
