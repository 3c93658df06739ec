"""The findings study (benchmarks/findings.py, benchmarks/findings_page.py): its verdict rule on hand-made
numbers, the page from hand-made multi-seed records, and a 1-seed, 1-epoch miniature of the whole study."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import findings  # noqa: E402
import findings_page as fp  # noqa: E402

from ltadv.config import load_config, to_dict  # noqa: E402
from ltadv.evaluate import class_groups, summarize  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def seeds(*accs):
    """{seed: (accuracy, k, n)} with k and n unknown (a multi-seed comparison needs only the accuracies)."""
    return {s: (a, None, None) for s, a in enumerate(accs)}


# --- the verdict rule on hand-made numbers ------------------------------------------------------------------

def test_clear_paired_gain_is_supported():
    # per-seed differences 0.10, 0.11, 0.12: mean 0.11, sd 0.01, t(0.975, 2) = 4.3027 -> half-width 0.02484
    iv = fp.contrast([seeds(0.80, 0.82, 0.81)], [seeds(0.70, 0.71, 0.69)])
    assert (iv.est, iv.lo, iv.hi) == pytest.approx((0.11, 0.08516, 0.13484), abs=1e-5)
    assert fp.verdict_gain(iv) == fp.SUPPORTED


def test_overlapping_runs_are_inconclusive():
    # differences +0.06, -0.06, 0.00: mean 0, sd 0.06 -> [-0.149, +0.149]: straddles 0 and DELTA
    iv = fp.contrast([seeds(0.80, 0.70, 0.75)], [seeds(0.74, 0.76, 0.75)])
    assert (iv.lo, iv.hi) == pytest.approx((-0.14905, 0.14905), abs=1e-5)
    assert fp.verdict_gain(iv) == fp.INCONCLUSIVE
    assert fp.verdict_match(iv) == fp.INCONCLUSIVE


def test_a_gain_too_small_to_matter_is_not_supported_and_a_loss_is_not_supported():
    # differences 0.001, 0.002, 0.000: [-0.0015, +0.0035], all of it below DELTA = 0.02
    small = fp.contrast([seeds(0.701, 0.702, 0.700)], [seeds(0.70, 0.70, 0.70)])
    assert small.hi < fp.DELTA and small.lo < 0
    assert fp.verdict_gain(small) == fp.NOT_SUPPORTED
    loss = fp.contrast([seeds(0.60, 0.61, 0.59)], [seeds(0.70, 0.71, 0.69)])
    assert fp.verdict_gain(loss) == fp.NOT_SUPPORTED


def test_one_seed_uses_newcombes_interval():
    # Newcombe (Statistics in Medicine 1998), Table II example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339
    iv = fp.contrast([{0: (56 / 70, 56, 70)}], [{0: (48 / 80, 48, 80)}])
    assert (iv.est, iv.lo, iv.hi) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)
    assert fp.verdict_gain(iv) == fp.SUPPORTED
    # tail gain - head gain = (56/70 - 48/80) - (48/80 - 48/80): MOVER adds the squared half-widths; the
    # Wilson interval of 48/80 is [0.49045, 0.70039], so lo = 0.2 - sqrt(0.1476^2 + 0.10955^2 + 0.10039^2)
    # = -0.0094 and hi = 0.2 + sqrt(0.1339^2 + 0.10039^2 + 0.10955^2) = 0.4000
    p = {0: (48 / 80, 48, 80)}
    both = fp.contrast([{0: (56 / 70, 56, 70)}, p], [p, p])
    assert (both.est, both.lo, both.hi) == pytest.approx((0.2, -0.0094, 0.4000), abs=5e-4)
    assert fp.verdict_gain(both) == fp.INCONCLUSIVE


def test_matches_and_cost_and_combination():
    assert fp.verdict_match(fp.Interval(-0.01, -0.015, -0.005)) == fp.SUPPORTED  # worse, but within 2 points
    assert fp.verdict_match(fp.Interval(-0.05, -0.06, -0.03)) == fp.NOT_SUPPORTED
    assert fp.verdict_match(fp.Interval(-0.01, -0.04, 0.02)) == fp.INCONCLUSIVE
    # seconds per epoch 1.0 / 1.2, 1.1 / 1.2, 0.9 / 1.2 -> ratios 0.8333, 0.9167, 0.75: [0.6263, 1.0404]
    iv = fp.ratio_interval({0: 1.0, 1: 1.1, 2: 0.9}, {0: 1.2, 1: 1.2, 2: 1.2})
    assert (iv.est, iv.lo, iv.hi) == pytest.approx((0.83333, 0.62628, 1.04039), abs=1e-4)
    assert fp.verdict_below(iv) == fp.INCONCLUSIVE
    assert fp.verdict_below(fp.ratio_interval({0: 1.0, 1: 1.0, 2: 1.1}, {0: 2.0, 1: 2.1, 2: 2.0})) == fp.SUPPORTED
    assert fp.combine([fp.SUPPORTED, fp.SUPPORTED]) == fp.SUPPORTED
    assert fp.combine([fp.SUPPORTED, fp.INCONCLUSIVE]) == fp.INCONCLUSIVE
    assert fp.combine([fp.INCONCLUSIVE, fp.NOT_SUPPORTED, fp.SUPPORTED]) == fp.NOT_SUPPORTED
    assert fp.combine([]) == fp.INCONCLUSIVE


def test_slope_interval_by_hand():
    # (0,0), (1,1), (2,1), (3,3): slope 4.5 / 5 = 0.9; SSE 0.70, s^2 0.35, se sqrt(0.35 / 5) = 0.26458,
    # t(0.975, 2) = 4.3027 -> 0.9 -/+ 1.1384
    iv = fp.slope_interval([(0, 0.0), (1, 1.0), (2, 1.0), (3, 3.0)])
    assert (iv.est, iv.lo, iv.hi) == pytest.approx((0.9, -0.2384, 2.0384), abs=1e-4)
    flat = fp.slope_interval([(0, 0.5), (1, 0.5), (2, 0.5)])
    assert (flat.est, flat.lo, flat.hi) == (0.0, 0.0, 0.0)
    assert fp.verdict_gain(flat, fp.DELTA / 5) == fp.NOT_SUPPORTED
    assert fp.slope_interval([(1, 0.5), (1, 0.6), (1, 0.7)]) is None  # one x: no slope


def test_run_key_shares_runs_across_parts_only_for_the_same_experiment():
    a = to_dict(load_config(overrides={"data.name": "digits-lt", "method.name": "at_bsl", "seed": 1,
                                       "eval.attacks": ["clean", "pgd20", "cw"]}))
    b = to_dict(load_config(overrides={"data.name": "digits-lt", "method.name": "at_bsl", "seed": 1,
                                       "method.tau_b": 1.0, "data.aug": [], "eval.attacks": ["clean", "pgd20"]}))
    other_seed = to_dict(load_config(overrides={"data.name": "digits-lt", "method.name": "at_bsl", "seed": 2}))
    other_tau = to_dict(load_config(overrides={"data.name": "digits-lt", "method.name": "at_bsl", "seed": 1,
                                               "method.tau_b": 1.5}))
    assert findings.run_key(a) == findings.run_key(b)
    assert findings.run_key(a) != findings.run_key(other_seed)
    assert findings.run_key(a) != findings.run_key(other_tau)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args in (["--seeds", "x"], ["--jobs", "0"], ["--tau-b", "a,b"], ["--no-such-flag", "1"]):
        r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "findings.py"), "--out", str(tmp_path / "s"),
                            *args], capture_output=True, text=True)
        assert r.returncode == 2, args
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


# --- the page from hand-made records (several seeds: the paired t path) ------------------------------------

COUNTS = [114, 88, 68, 52, 41, 31, 24, 19, 14, 11]  # a long-tailed profile (IR 10.4)


def fake_run(run_dir: Path, overrides: dict, per_class: list[float], seed: int, train_s: float,
             attacks=("clean", "pgd20")) -> None:
    """A complete run record whose accuracy per class is ``per_class`` (robust) under every attack but clean
    (0.95 for every class), measured on 20 test images per class."""
    cfg = to_dict(load_config(overrides={"data.name": "digits-lt", "seed": seed, **overrides}))
    y = torch.arange(10).repeat_interleave(20)
    groups = class_groups(COUNTS)
    metrics = {}
    for a in attacks:
        acc = [0.95] * 10 if a == "clean" else per_class
        flags = torch.cat([torch.arange(20) < round(p * 20) for p in acc])
        metrics[a] = summarize(flags, y, 10, groups)
    epochs = [{"epoch": e, "train_loss": 1.0, "train_seconds": train_s, "eval_seconds": 0.1, "peak_mem_mb": 900.0,
               "val_clean": 0.9, "val_robust": sum(per_class) / 10, "forward_passes": 88, "batches": 8}
              for e in (1, 2)]
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({
        "config": cfg, "status": "complete", "class_counts": COUNTS, "groups": groups, "metrics": metrics,
        "epochs": epochs, "best_epoch": 2}))


def test_page_from_hand_made_records(tmp_path):
    out = tmp_path / "study"
    base = [0.85, 0.85, 0.85, 0.8, 0.8, 0.75, 0.7, 0.6, 0.55, 0.5]
    for s in range(3):
        jitter = [0.05 * (s - 1)] + [0.0] * 9  # seeds differ a little (one class)
        b = [p + j for p, j in zip(base, jitter)]
        # ra: +10 points in every class, +20 in the three rarest (7, 8, 9): a clear gain, largest in the tail
        up = [p + (0.2 if c >= 7 else 0.1) for c, p in enumerate(b)]
        fake_run(out / "methods" / f"at_bsl__seed={s}", {"method.name": "at_bsl"}, b, s, 1.0, ("clean", "pgd20", "cw"))
        fake_run(out / "methods" / f"robal__seed={s}", {"method.name": "robal"}, b, s, 1.5, ("clean", "pgd20", "cw"))
        for m in ("at", "at_bsl"):
            fake_run(out / "aug" / f"{m}__none__seed={s}", {"method.name": m}, b, s, 1.0)
            fake_run(out / "aug" / f"{m}__ra__seed={s}", {"method.name": m, "data.aug": ["ra"]}, up, s, 1.1)
            fake_run(out / "aug" / f"{m}__cutout__seed={s}", {"method.name": m, "data.aug": ["cutout"]}, b, s, 1.1)
        for t in (0.0, 1.0):
            fake_run(out / "tau_b" / f"tau_b={t}__seed={s}", {"method.name": "at_bsl", "method.tau_b": t}, b, s, 1.0)
            fake_run(out / "tau_b_aug" / f"tau_b={t}__seed={s}",
                     {"method.name": "at_bsl", "method.tau_b": t, "data.aug": ["ra"]}, up, s, 1.1)
        fake_run(out / "final" / f"at__seed={s}", {"method.name": "at"}, b, s, 1.0, ("clean", "pgd20", "cw", "aa"))
        fake_run(out / "final" / f"at_bsl__seed={s}", {"method.name": "at_bsl"}, b, s, 1.0,
                 ("clean", "pgd20", "cw", "aa"))
        fake_run(out / "final" / f"at_bsl+aug__seed={s}", {"method.name": "at_bsl", "data.aug": ["ra"]}, up, s, 1.0,
                 ("clean", "pgd20", "cw", "aa"))
    meta = {"best_aug": ["ra"], "seconds": 600.0, "sessions": 1, "jobs": 2, "threads": 1, "seeds": [0, 1, 2],
            "epochs": 2, "estimate_min": 1, "command": "python benchmarks/findings.py --out X"}
    page = fp.write_page(out, tmp_path / "docs" / "findings.md", tmp_path / "docs" / "figures" / "findings", meta,
                         log=lambda _m: None)
    text = page.read_text()
    assert "generated by `python benchmarks/findings.py --out X`" in text
    sections = {n: text.split(f"## Claim {n}:")[1].split("\n## ")[0] for n in (1, 2, 3, 4)}
    # claim 1: same accuracies (difference 0 +/- 0 inside the margin), 1.0 vs 1.5 s/epoch -> cheaper
    assert "**Verdict: supported.**" in sections[1]
    # without part (e) the runs' own wall-clock seconds decide (a ratio: no sign)
    assert "training seconds per epoch, AT-BSL / RoBal (part a): 0.67 [0.67, 0.67] x" in sections[1]
    # claim 2: overall +13 points under AA (7 classes +10, 3 classes +20), the tail 10 points more than the head
    assert "AA overall: AT-BSL + ra - AT-BSL (final table): +13.0 [+13.0, +13.0] points" in sections[2]
    assert "tail gain - head gain of ra: +10.0 [+10.0, +10.0]" in sections[2]
    assert "**Verdict: supported.**" in sections[2]
    # claim 3: none (0) -> ra (1) grows by 13 points per augmentation; ra beats the other single (cutout)
    assert "**Verdict: supported.**" in sections[3] and "best other single (cutout)" in sections[3]
    # claim 4: +13 at both tau_b
    assert sections[4].count("-> **supported**") == 2 and "**Verdict: supported.**" in sections[4]
    assert "| 1. AT-BSL matches RoBal" in text and "| **supported** |" in text
    for name in ("claim1_cost", "claim2_classwise", "claim3_stack", "claim3_singles", "claim4_tau_b"):
        png = tmp_path / "docs" / "figures" / "findings" / f"{name}.png"
        assert png.stat().st_size > 10_000 and f"(figures/findings/{name}.png)" in text


def test_cost_part_decides_claim_1s_time_from_interleaved_cpu_seconds(tmp_path):
    # part (e) on hand numbers: per round AT-BSL / RoBal = 2/4, 4/4 -> 0.5, 1.0: mean 0.75, sem 0.25,
    # t(0.975, 1 df) = 12.7062 -> 0.75 -/+ 3.1766 = [-2.43, 3.93]: the interval straddles 1 -> inconclusive
    cost = {"rounds": 2, "baseline": "at", "threads": 1,
            "cpu_s": {"at": [1.0, 2.0], "at_bsl": [2.0, 4.0], "robal": [4.0, 4.0]}}
    iv = fp.cost_ratio(cost, "at_bsl", "robal")
    assert (iv.est, iv.lo, iv.hi) == pytest.approx((0.75, 0.75 - 12.7062047 * 0.25, 0.75 + 12.7062047 * 0.25))
    assert fp.verdict_below(iv) == fp.INCONCLUSIVE
    assert fp.cost_ratio(cost, "at_bsl", "mart") is None and fp.cost_ratio(None, "at_bsl", "robal") is None
    # the table: robal / at per round 4, 2 -> 3.00; CPU s/epoch means 1.50, 3.00, 4.00
    table = fp.cost_table(cost, [])
    assert "| at | 1.50 | 1.00 [1.00, 1.00] | - | - |" in table
    assert "| robal | 4.00 | 3.00 [" in table and "| at_bsl | 3.00 | 2.00 [2.00, 2.00] |" in table
    # read from the study folder; a missing or broken file is "not measured"
    assert fp.read_cost(tmp_path) is None
    (tmp_path / "cost.json").write_text("{not json")
    assert fp.read_cost(tmp_path) is None
    (tmp_path / "cost.json").write_text(json.dumps(cost))
    assert fp.read_cost(tmp_path)["cpu_s"]["robal"] == [4.0, 4.0]


def test_cost_decides_claim_1_on_the_page(tmp_path):
    out = tmp_path / "study"
    b = [0.9, 0.8, 0.8, 0.7, 0.7, 0.6, 0.6, 0.5, 0.5, 0.4]
    for s in range(2):  # equal accuracies; the runs' wall clock says AT-BSL is the slower (a loaded machine)
        fake_run(out / "methods" / f"at_bsl__seed={s}", {"method.name": "at_bsl"}, b, s, 3.0, ("clean", "pgd20", "cw"))
        fake_run(out / "methods" / f"robal__seed={s}", {"method.name": "robal"}, b, s, 1.0, ("clean", "pgd20", "cw"))
    # part (e) in one process: AT-BSL / RoBal = 0.80, 0.82, 0.78 per round (mean 0.80, interval below 1)
    (out / "cost.json").write_text(json.dumps({"rounds": 3, "baseline": "at_bsl", "threads": 1, "cpu_s": {
        "at_bsl": [0.8, 0.82, 0.78], "robal": [1.0, 1.0, 1.0]}}))
    meta = {"best_aug": [], "seconds": 60.0, "sessions": 1, "jobs": 1, "threads": 1, "seeds": [0, 1], "epochs": 1,
            "estimate_min": 1}
    text = fp.write_page(out, tmp_path / "findings.md", tmp_path / "figures" / "findings", meta,
                         log=lambda _m: None).read_text()
    claim1 = text.split("## Claim 1:")[1].split("\n## ")[0]
    assert "training CPU seconds per epoch, AT-BSL / RoBal (part e): 0.80 [" in claim1
    assert "seconds per epoch, AT-BSL / RoBal (part a)" not in claim1  # the loaded wall clock no longer decides
    assert "### Part (e): training cost in one process" in claim1 and "train s/epoch" not in claim1
    assert "**Verdict: supported.**" in claim1  # same accuracies, cheaper


def test_best_augmentation_is_chosen_on_validation(tmp_path):
    # ra is better on test (per_class) but cutout on validation (val_robust): the validation decides
    fake_run(tmp_path / "at_bsl__ra__seed=0", {"method.name": "at_bsl", "data.aug": ["ra"]}, [0.9] * 10, 0, 1.0)
    fake_run(tmp_path / "at_bsl__cutout__seed=0", {"method.name": "at_bsl", "data.aug": ["cutout"]}, [0.5] * 10, 0, 1.0)
    fake_run(tmp_path / "at__ra__seed=0", {"method.name": "at", "data.aug": ["ra"]}, [0.99] * 10, 0, 1.0)
    for d, val in (("at_bsl__ra__seed=0", 0.6), ("at_bsl__cutout__seed=0", 0.7), ("at__ra__seed=0", 0.9)):
        rec = json.loads((tmp_path / d / "result.json").read_text())
        for e in rec["epochs"]:
            e["val_robust"] = val if e["epoch"] == 2 else 0.0
        (tmp_path / d / "result.json").write_text(json.dumps(rec))
    assert findings.best_augmentation(tmp_path) == ["cutout"]
    assert findings.best_augmentation(tmp_path, "at") == ["ra"]


# --- the whole study in miniature ------------------------------------------------------------------------

@pytest.mark.slow
def test_miniature_study_end_to_end(tmp_path):
    """All four parts at 1 seed, 1 epoch of 2 batches, 20 test images; the final table runs the official
    AutoAttack (the full study's code path) on those 20 images."""
    out, page = tmp_path / "study", tmp_path / "docs" / "findings.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "findings.py"), "--out", str(out), "--page", str(page),
           "--figures", str(tmp_path / "docs" / "figures" / "findings"), "--seeds", "0", "--epochs", "1",
           "--methods", "at,at_bsl,robal", "--augs", "none,ra,ra+cutmix", "--tau-b", "1",
           "--train.max_batches", "2", "--attack.steps", "2", "--eval.n", "20", "--eval.val_n", "10",
           "--cost-rounds", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    # (a), (b), (c) trained once per distinct experiment: at / at_bsl without augmentation and both tau_b 1
    # cells are copies, not runs of their own
    assert "7 run(s) to train, 3 shared with another part" in r.stdout
    assert (out / "tau_b" / "tau_b=1.0__seed=0" / "result.json").is_file()
    meta = json.loads((out / "meta.json").read_text())
    best = meta["best_aug"]
    assert best in (["ra"], ["ra", "cutmix"])
    assert (out / "tau_b_aug" / "tau_b=1.0__seed=0" / "result.json").is_file()
    for part in ("methods", "aug", "tau_b", "tau_b_aug"):  # each part is an `ltadv sweep` folder with its report
        assert (out / part / "summary.md").is_file() and (out / part / "report" / "report.md").is_file()
    for row in ("at", "at_bsl", "at_bsl+aug"):  # (d): official AutoAttack, its four stages, the run's 20 images
        rec = json.loads((out / "final" / f"{row}__seed=0" / "result.json").read_text())
        aa = rec["metrics"]["aa"]
        assert aa["n"] == 20 and list(aa["stages"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
        assert aa["overall"] <= rec["metrics"]["pgd20"]["overall"] + 1e-9 or aa["overall"] <= rec["metrics"][
            "clean"]["overall"]
        assert "cw" in rec["metrics"]
    text = page.read_text()
    for n in (1, 2, 3, 4):
        assert f"## Claim {n}:" in text and text.split(f"## Claim {n}:")[1].split("\n## ")[0].count("**Verdict: ") == 1
    assert "generated by `python benchmarks/findings.py --out" in text
    assert json.loads((out / "study.json").read_text())["sessions"][0]["seconds"] > 0
    # (e): every method of (a), 2 interleaved rounds, AT the baseline (ratio 1 in every round)
    cost = json.loads((out / "cost.json").read_text())
    assert sorted(cost["cpu_s"]) == ["at", "at_bsl", "robal"] and all(len(v) == 2 for v in cost["cpu_s"].values())
    assert cost["ratio"]["at"]["per_round"] == [1.0, 1.0] and min(min(v) for v in cost["cpu_s"].values()) > 0
    assert "### Part (e): training cost in one process" in text and not (out / "cost").exists()
    # a second call finds everything done and trains nothing
    r2 = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert r2.returncode == 0 and "0 run(s) to train, 0 shared with another part, 10 finished earlier" in r2.stdout
    assert "cost: measured earlier" in r2.stdout


def test_claim_4_reading_follows_the_verdicts():
    cs = [fp.Comparison("t0", None, fp.NOT_SUPPORTED), fp.Comparison("t1", None, fp.SUPPORTED),
          fp.Comparison("t2", None, fp.INCONCLUSIVE), fp.Comparison("t3", None, fp.SUPPORTED)]
    text = fp.tau_b_reading(cs, [0.0, 1.0, 1.5, 2.0], "ra", fp.SUPPORTED)
    assert text.startswith("the PGD-20 gain of ra over no augmentation is supported at tau_b 1, 2; "
                           "inconclusive at tau_b 1.5; not supported at tau_b 0.")
    assert "Claim 4 rests on claim 2" not in text
    text = fp.tau_b_reading(cs, [0.0, 1.0, 1.5, 2.0], "ra", fp.NOT_SUPPORTED, "AA", "AA gain +0.0 [-1.9, +1.8]")
    assert "final table finds no AA gain (AA gain +0.0 [-1.9, +1.8])" in text


def test_a_pgd_gain_that_autoattack_does_not_confirm_is_named(tmp_path):
    b = [0.9, 0.8, 0.8, 0.7, 0.7, 0.6, 0.6, 0.5, 0.5, 0.4]
    up = [p + 0.1 for p in b]  # +10 points under PGD-20 in every class
    for s in range(3):
        fake_run(tmp_path / f"bsl__seed={s}", {"method.name": "at_bsl"}, b, s, 1.0, ("clean", "pgd20", "aa"))
        fake_run(tmp_path / f"aug__seed={s}", {"method.name": "at_bsl", "data.aug": ["mixup"]}, up, s, 1.0,
                 ("clean", "pgd20", "aa"))
        bsl_aa = json.loads((tmp_path / f"bsl__seed={s}" / "result.json").read_text())["metrics"]["aa"]
        rec = json.loads((tmp_path / f"aug__seed={s}" / "result.json").read_text())
        rec["metrics"]["aa"] = bsl_aa  # ... but no gain under AutoAttack
        (tmp_path / f"aug__seed={s}" / "result.json").write_text(json.dumps(rec))
    groups = fp.group_runs(fp.load_records(tmp_path, log=lambda _m: None))
    aug, bsl = fp.find(groups, data__aug=("mixup",)), fp.find(groups, data__aug=())
    text = fp.weaker_attack_gain(aug, bsl, "aa", fp.NOT_SUPPORTED)
    assert text.startswith("The same runs gain +10.0 [+10.0, +10.0] points under PGD-20 (paired t, 3 seeds)")
    assert "AA does not confirm" in text
    assert fp.weaker_attack_gain(aug, bsl, "aa", fp.SUPPORTED) == ""  # AA confirms: nothing to explain
    assert fp.weaker_attack_gain(bsl, bsl, "aa", fp.NOT_SUPPORTED) == ""  # no PGD-20 gain either
