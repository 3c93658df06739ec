"""The page ``docs/findings.md`` ("Findings on digits-lt") and its figures, from a findings study folder.

    python benchmarks/findings_page.py runs/findings      # rewrite the page from finished runs (no training)

Every number on the page is computed here from the run records of ``benchmarks/findings.py``; nothing is
typed in by hand except the paper's CIFAR numbers (SPEC section 6) it compares with.

Verdict rule (stated on the page). Each claim is one or more comparisons; each comparison is a difference of
accuracies with a 95% interval: with several seeds, the paired t interval of the per-seed differences (the
seeds pair the runs: a seed fixes the long-tailed subset and the initial weights, and every run is tested on
the same images); with one seed, the MOVER interval built from the Wilson intervals of the accuracies
(Newcombe, "Interval estimation for the difference between independent proportions", Statistics in
Medicine 1998, method 10; Zou & Donner, "Construction of confidence limits about effect measures",
Statistics in Medicine 2008, for sums of more than two). For a claimed gain: supported when the whole
interval is above 0; not supported when it is below DELTA (no gain of DELTA or more is compatible with the
data); else inconclusive (checked in that order). For "matches" (non-inferiority): supported when the
interval is above -DELTA, not supported when it is below -DELTA, else inconclusive. A claim is supported
when all its comparisons are, not supported when any is not, inconclusive otherwise.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ltadv.intervals import CONFIDENCE, t_interval, wilson_interval  # noqa: E402
from ltadv.report import (  # noqa: E402
    ATTACK_TITLES,
    Column,
    Group,
    Table,
    group_runs,
    load_records,
    record_accuracy,
    to_markdown,
)
from ltadv.report_figures import aug_stack_curve, classwise_robustness, tau_b_curve  # noqa: E402

DELTA = 0.02  # the smallest difference in accuracy (2 points) that the verdicts treat as meaningful
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
# The paper's CIFAR numbers, as SPEC section 6 gives them (third-party rerun of the AT-BSL scripts, %).
PAPER = {
    1: "AT-BSL matches full RoBal on clean and AA accuracy at a fraction of RoBal's training time and GPU memory; "
       "AT-BSL + augmentation is +6.66 points AA over RoBal (CIFAR-10-LT, WRN-34-10)",
    2: "AT-BSL + RandAugment vs no augmentation, ResNet-18 CIFAR-10-LT: PGD-20 36.93 -> 38.09 (+1.16), "
       "AA (torchattacks) 33.04 -> 33.76 (+0.72); WRN-34-10 CIFAR-100-LT with AutoAugment: PGD-20 19.99 -> "
       "25.12 (+5.13), AA 18.14 -> 21.40 (+3.26); improvement in nearly all classes, especially the tail",
    3: "robustness grows with the number and diversity of stacked augmentations, RandAugment the best single "
       "one on CIFAR-10-LT (SPEC gives no number)",
    4: "the improvement holds for every tau_b tried (SPEC gives no number)",
}
CLAIMS = {
    1: "AT-BSL matches RoBal's robustness at a fraction of its training time and memory",
    2: "Data augmentation helps adversarial training under long-tailed data, most for the tail classes",
    3: "Robustness grows with the number of stacked augmentations; RandAugment is the best single one",
    4: "The augmentation gain holds for every tau_b",
}


# --- intervals and verdicts ------------------------------------------------------------------------------

@dataclass
class Interval:
    est: float
    lo: float
    hi: float
    how: str = ""

    def text(self, scale: float = 100.0, digits: int = 1, signed: bool = True) -> str:
        sign = "+" if signed else ""  # a difference shows its sign; a ratio does not

        def num(v: float) -> str:
            return f"{round(scale * v, digits) + 0.0:{sign}.{digits}f}"  # + 0.0: no "-0.0"

        return f"{num(self.est)} [{num(self.lo)}, {num(self.hi)}]"


def wilson(acc: float, k: int | None, n: int | None) -> Interval | None:
    if k is None or not n:
        return None
    lo, hi = wilson_interval(k, n)
    return Interval(acc, lo, hi, "Wilson")


def mover_sum(terms: Sequence[tuple[int, Interval]]) -> Interval:
    """The MOVER interval of sum(sign * theta) from each term's own interval (Zou & Donner 2008)."""
    est = sum(s * t.est for s, t in terms)
    lo_sq = sum((t.est - t.lo) ** 2 if s > 0 else (t.hi - t.est) ** 2 for s, t in terms)
    hi_sq = sum((t.hi - t.est) ** 2 if s > 0 else (t.est - t.lo) ** 2 for s, t in terms)
    return Interval(est, est - math.sqrt(lo_sq), est + math.sqrt(hi_sq))


PerSeed = dict  # seed -> (accuracy, correct images k or None, images n or None), as record_accuracy returns


def contrast(plus: Sequence[PerSeed], minus: Sequence[PerSeed]) -> Interval | None:
    """sum(plus) - sum(minus) of per-seed accuracies with its 95% interval: the t interval of the per-seed
    values over the seeds all terms share (2 or more), else one seed's MOVER interval from Wilson intervals."""
    terms = [(1, p) for p in plus] + [(-1, m) for m in minus]
    seeds = sorted(set.intersection(*(set(t) for _, t in terms))) if terms else []
    if len(seeds) >= 2:
        vals = [sum(s * t[seed][0] for s, t in terms) for seed in seeds]
        lo, hi = t_interval(vals)
        return Interval(sum(vals) / len(vals), lo, hi, f"paired t, {len(seeds)} seeds")
    if len(seeds) == 1:
        ivs = [(s, wilson(*t[seeds[0]])) for s, t in terms]
        if any(iv is None for _, iv in ivs):
            return None
        iv = mover_sum(ivs)
        iv.how = "one seed: MOVER from Wilson intervals"
        return iv
    return None


def verdict_gain(iv: Interval | None, delta: float = DELTA) -> str:
    """A claimed gain: above 0 supported; below delta not supported; else inconclusive (in that order)."""
    if iv is None:
        return INCONCLUSIVE
    if iv.lo > 0:
        return SUPPORTED
    if iv.hi < delta:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def verdict_match(iv: Interval | None, delta: float = DELTA) -> str:
    """A claimed match (non-inferiority within delta): above -delta supported; below -delta not supported."""
    if iv is None:
        return INCONCLUSIVE
    if iv.lo > -delta:
        return SUPPORTED
    if iv.hi < -delta:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def verdict_below(iv: Interval | None, bound: float = 1.0) -> str:
    """A claimed ratio below ``bound`` (cheaper): interval below it supported, above it not supported."""
    if iv is None:
        return INCONCLUSIVE
    if iv.hi < bound:
        return SUPPORTED
    if iv.lo > bound:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if any(v == NOT_SUPPORTED for v in verdicts):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def ratio_interval(num: dict[int, float], den: dict[int, float]) -> Interval | None:
    """The mean over seeds of num / den (e.g. seconds per epoch) with its t interval; one seed: no interval."""
    seeds = sorted(s for s in set(num) & set(den) if den[s])
    vals = [num[s] / den[s] for s in seeds]
    if len(vals) >= 2:
        lo, hi = t_interval(vals)
        return Interval(sum(vals) / len(vals), lo, hi, f"t, {len(vals)} seeds")
    return None


def slope_interval(points: Sequence[tuple[float, float]]) -> Interval | None:
    """Least-squares slope of accuracy against the number of stacked augmentations, with its 95% t interval
    (``scipy.stats.linregress``; n - 2 degrees of freedom)."""
    from scipy import stats

    if len(points) < 3 or len({x for x, _ in points}) < 2:
        return None
    ys = [y for _, y in points]
    if len(set(ys)) == 1:  # a flat line: slope 0 exactly (linregress leaves its error undefined)
        return Interval(0.0, 0.0, 0.0, f"least squares, {len(points)} runs, all equal")
    res = stats.linregress([x for x, _ in points], ys)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(points) - 2) * res.stderr
    return Interval(res.slope, res.slope - half, res.slope + half, f"least squares, {len(points)} runs")


# --- reading the study -------------------------------------------------------------------------------------

def part_groups(out: Path, part: str, log=print) -> list[Group]:
    folder = out / part
    if not folder.is_dir():
        return []
    runs = [(d, r) for d, r in load_records(folder, log=log) if d.parent == folder]
    return group_runs(runs) if runs else []


def find(groups: Sequence[Group], **want) -> Group | None:
    """The group whose flattened config has every ``key=value`` (keys with '.' written as '__')."""
    for g in groups:
        if all(_norm(g.config.get(k.replace("__", "."))) == _norm(v) for k, v in want.items()):
            return g
    return None


def _norm(v):
    if isinstance(v, list | tuple):
        return tuple(v)
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    return v


def per_seed(g: Group | None, attack: str, key: str = "overall") -> PerSeed:
    if g is None:
        return {}
    out = {}
    for r in g.records:
        acc = record_accuracy(r, attack, key)
        if acc is not None:
            out[r["config"]["seed"]] = acc
    return out


def seconds_per_epoch(g: Group | None) -> dict[int, float]:
    if g is None:
        return {}
    return {r["config"]["seed"]: sum(e["train_seconds"] for e in r["epochs"]) / len(r["epochs"])
            for r in g.records if r.get("epochs")}


def read_cost(out: Path) -> dict | None:
    """Part (e), OUT/cost.json (benchmarks/findings.py measure_cost): CPU seconds per epoch of each method
    of (a), interleaved in one process; None when the study has not measured it."""
    path = Path(out) / "cost.json"
    try:
        cost = json.loads(path.read_text())
        return cost if cost.get("cpu_s") else None
    except (OSError, ValueError):
        return None


def cost_ratio(cost: dict | None, num: str, den: str) -> Interval | None:
    """CPU seconds of ``num`` / ``den`` per round of part (e), mean and 95% t interval over the rounds."""
    if not cost or num not in cost["cpu_s"] or den not in cost["cpu_s"]:
        return None
    iv = ratio_interval(dict(enumerate(cost["cpu_s"][num])), dict(enumerate(cost["cpu_s"][den])))
    if iv is not None:
        iv.how = f"CPU time, t over {len(cost['cpu_s'][num])} interleaved rounds"
    return iv


def passes_per_batch(g: Group) -> float | None:
    vals = [e["forward_passes"] / e["batches"] for r in g.records for e in r.get("epochs") or []
            if e.get("forward_passes") and e.get("batches")]
    return sum(vals) / len(vals) if vals else None


def aug_of(g: Group) -> tuple:
    return tuple(g.config.get("data.aug") or ())


def label(aug: Sequence[str]) -> str:
    return "+".join(aug) if aug else "none"


def describe_data(records: Sequence[dict]) -> str:
    """The setting, read from the run records (subset sizes vary with the seed: given as a range)."""
    if not records:
        return "no runs"
    totals = sorted({sum(r["class_counts"]) for r in records if r.get("class_counts")})
    ratios = sorted({max(r["class_counts"]) / min(r["class_counts"]) for r in records if r.get("class_counts")})
    tests = sorted({m["n"] for r in records for m in (r.get("metrics") or {}).values() if m.get("n")})
    cfg = records[0]["config"]
    tail = len((records[0].get("groups") or {}).get("tail") or [])
    span = (lambda v, f: f(v[0]) if len(v) == 1 else f"{f(v[0])}-{f(v[-1])}")  # noqa: E731
    return (f"long-tailed training split with {span(totals, str)} images (IR {span(ratios, '{:.1f}'.format)}), "
            f"balanced test split, {span(tests, str)} test images per attack; tail = the {tail} rarest classes), "
            f"{cfg['model']['name']}, eps {cfg['attack']['eps']:g}, PGD-{cfg['attack']['steps']} training")


def reproduces(verdict: str, why: str = "") -> str:
    """One plain sentence on whether the claim reproduces here, and (if not) what is likely the data's part."""
    if verdict == SUPPORTED:
        return "Reproduces on digits-lt.\n"
    head = ("Does not reproduce on digits-lt." if verdict == NOT_SUPPORTED else
            "Neither reproduced nor refuted on digits-lt: the intervals are too wide to tell.")
    return f"{head} Data or method: {why}\n" if why else f"{head}\n"


# --- figures -----------------------------------------------------------------------------------------------

def save_png(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def cost_figure(groups: Sequence[Group], attack: str, cost: dict | None = None):
    """Claim 1: robust accuracy (95% interval) against training cost, one point per method of part (a): the
    CPU-time ratio to AT with its 95% interval from part (e) when measured, else the runs' own wall-clock
    seconds per epoch (± 1 std over seeds; load-dependent)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, g in enumerate(groups):
        acc = g.accuracy(attack)
        name = g.records[0]["config"]["method"]["name"] if g.records else g.label
        if cost is not None:
            iv = cost_ratio(cost, name, cost.get("baseline", "at"))
            x, xerr = (iv.est, [[iv.est - iv.lo], [iv.hi - iv.est]]) if iv is not None else (None, None)
        else:
            c = g.cost()["train_s"]
            x, xerr = (c.mean, [c.std or 0.0]) if c is not None else (None, None)
        if acc is None or x is None:
            continue
        color = plt.get_cmap("tab10").colors[i % 10]
        yerr = [[100 * (acc.mean - acc.lo)], [100 * (acc.hi - acc.mean)]] if acc.lo is not None else None
        ax.errorbar([x], [100 * acc.mean], xerr=xerr, yerr=yerr, fmt="o", color=color, capsize=3)
        ax.annotate(g.label, (x, 100 * acc.mean), xytext=(5, 4), textcoords="offset points", fontsize=8)
    ax.set_xlabel("training CPU time per epoch / AT's, same process, 95% interval over rounds (part e)"
                  if cost is not None else "training seconds per epoch (mean ± 1 std over seeds)")
    ax.set_ylabel(f"{ATTACK_TITLES.get(attack, attack)} accuracy (%), 95% interval")
    ax.set_title("robustness against training cost (part a)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def singles_figure(aug_groups: Sequence[Group], attack: str):
    """Claims 2 and 3: each single augmentation's gain over no augmentation (overall and tail, paired 95%
    intervals) for AT and AT-BSL."""
    fig, ax = plt.subplots(figsize=(7.5, 4))
    singles = sorted({aug_of(g)[0] for g in aug_groups if len(aug_of(g)) == 1})
    methods = [m for m in ("at", "at_bsl") if find(aug_groups, method__name=m, data__aug=())]
    width = 0.8 / max(1, 2 * len(methods))
    colors = plt.get_cmap("tab10").colors
    j = 0
    for m in methods:
        base = find(aug_groups, method__name=m, data__aug=())
        for key, hatch in (("overall", None), ("tail", "//")):
            xs, ys, err = [], [], [[], []]
            for i, a in enumerate(singles):
                iv = contrast([per_seed(find(aug_groups, method__name=m, data__aug=(a,)), attack, key)],
                              [per_seed(base, attack, key)])
                if iv is None:
                    continue
                xs.append(i + (j - (2 * len(methods) - 1) / 2) * width)
                ys.append(100 * iv.est)
                err[0].append(100 * (iv.est - iv.lo))
                err[1].append(100 * (iv.hi - iv.est))
            ax.bar(xs, ys, width=width, yerr=err, color=colors[methods.index(m)], hatch=hatch, alpha=0.85,
                   edgecolor="black", linewidth=0.4, capsize=2, label=f"{m} {key}")
            j += 1
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(singles)))
    ax.set_xticklabels(singles)
    ax.set_ylabel(f"{ATTACK_TITLES.get(attack, attack)} gain over no augmentation (points)")
    ax.set_title("single augmentations (part b), 95% paired intervals")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- the page ----------------------------------------------------------------------------------------------

HERE = Path(__file__).resolve().parent


def run_commits(records: Sequence[dict]) -> str:
    """The commit(s) the runs' records name (ltadv writes its git commit into every record)."""
    commits = sorted({str(r.get("commit"))[:12] for r in records if r.get("commit")})
    return ", ".join(commits) if commits else "unknown"


def git_commit(cwd: Path = HERE) -> str:
    """The commit of the code that wrote the page (this file's repository), marked when it has local edits."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             cwd=cwd, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=cwd).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + (" (with uncommitted changes)" if dirty else "")


@dataclass
class Comparison:
    what: str
    iv: Interval | None
    verdict: str

    def line(self, unit: str = "points") -> str:
        if self.iv is None:
            return f"- {self.what}: no interval (too few runs) -> **{self.verdict}**"
        scale, digits = (100.0, 1) if unit == "points" else (1.0, 2)
        text = self.iv.text(scale, digits, signed=unit == "points")
        return f"- {self.what}: {text} {unit} ({self.iv.how}) -> **{self.verdict}**"


def acc_table(name: str, title: str, rows: Sequence[tuple[str, Group]], attacks: Sequence[str],
              tail_attack: str, extra: Sequence[tuple[str, str, Callable]] = ()) -> str:
    """One Markdown table: accuracy under each attack, tail and worst class, and ``extra`` (key, title,
    fn(group) -> Stat) columns of seconds."""
    cols = [Column("run", "run", "text"), Column("seeds", "seeds", "int")]
    cols += [Column(a, ATTACK_TITLES.get(a, a)) for a in attacks]
    cols += [Column("tail", f"tail {ATTACK_TITLES.get(tail_attack, tail_attack)}"),
             Column("worst", f"worst class {ATTACK_TITLES.get(tail_attack, tail_attack)}")]
    cols += [Column(k, t, "sec") for k, t, _ in extra]
    body = []
    for lab, g in rows:
        row = [lab, len(g.runs)] + [g.accuracy(a) for a in attacks]
        row += [g.accuracy(tail_attack, "tail"), g.accuracy(tail_attack, "worst")]
        row += [fn(g) for _, _, fn in extra]
        body.append(row)
    note = (f"accuracy (%) on the test split, best checkpoint; several seeds: mean ± half-width of the "
            f"{CONFIDENCE:.0%} t interval over seeds; one seed: [{CONFIDENCE:.0%} Wilson interval]; tail: the "
            f"three rarest classes' test images pooled; worst class: mean over seeds of the lowest class accuracy")
    return to_markdown(Table(name, title, cols, body, note=note))


def cost_table(cost: dict, methods: Sequence[Group]) -> str:
    """Part (e)'s table: CPU seconds per epoch (one process, interleaved rounds), the ratio to the baseline
    with its 95% t interval, forward passes per batch, and the part (a) runs' own wall-clock seconds."""
    base = cost.get("baseline", "at")
    by_name = {g.records[0]["config"]["method"]["name"]: g for g in methods if g.records}
    lines = [f"| method | CPU s/epoch | CPU time / {base} [95% interval] | forward passes / batch | "
             "wall s/epoch in (a) (load-dependent) |", "|---|---|---|---|---|"]
    for name, secs in cost["cpu_s"].items():
        iv = cost_ratio(cost, name, base)
        g = by_name.get(name)
        passes = passes_per_batch(g) if g is not None else None
        wall = g.cost()["train_s"] if g is not None else None
        cells = [name, f"{sum(secs) / len(secs):.2f}",
                 f"{iv.est:.2f} [{iv.lo:.2f}, {iv.hi:.2f}]" if iv is not None else "-",
                 f"{passes:.0f}" if passes is not None else "-",
                 f"{wall.mean:.2f}" if wall is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    rounds, threads = cost.get("rounds"), cost.get("threads")
    return ("### Part (e): training cost in one process\n\n" + "\n".join(lines) + "\n\n"
            f"*One epoch of each method's part (a) config (first seed) per round, {rounds} rounds in a rotating "
            f"order, one process, {threads} thread(s); CPU time is the process's, so other jobs on the machine "
            "barely move it, unlike the wall-clock seconds of the part (a) runs, which trained at different "
            "moments of a shared machine.*\n")


def tau_b_reading(comparisons: Sequence[Comparison], tau_values: Sequence[float], aug: str, claim2: str,
                  final_attack: str = "AA", claim2_effect: str = "-") -> str:
    """Claim 4's 'data or method' sentence, from the per-tau_b verdicts and claim 2's verdict."""
    by = {v: [f"{t:g}" for t, c in zip(tau_values, comparisons, strict=True) if c.verdict == v]
          for v in (SUPPORTED, INCONCLUSIVE, NOT_SUPPORTED)}
    parts = f"the PGD-20 gain of {aug} over no augmentation is " + "; ".join(
        f"{v} at tau_b {', '.join(ts)}" for v, ts in by.items() if ts) + "."
    if claim2 == NOT_SUPPORTED:
        return (f"{parts} Claim 4 rests on claim 2, and at tau_b 1 the final table finds no {final_attack} gain "
                f"({claim2_effect}): the PGD-20 gains here are the weaker attack's, so no tau_b shows a gain that "
                "holds; read it with claim 2's verdict.")
    return (f"{parts} Which tau_b values keep the gain is measured here, not explained: with one small data set "
            "the study cannot tell whether the pattern belongs to the data or to the method.")


def weaker_attack_gain(aug_row: Group | None, bsl: Group | None, final_attack: str, verdict: str) -> str:
    """A sentence when the augmentation's PGD-20 gain in the final table is supported but its gain under the
    final attack is not: the gain is the weaker attack's (augmentations such as Mixup are known to weaken
    gradient-based attacks without adding robustness), '' otherwise."""
    if final_attack == "pgd20" or verdict == SUPPORTED:
        return ""
    iv = contrast([per_seed(aug_row, "pgd20")], [per_seed(bsl, "pgd20")])
    if iv is None or verdict_gain(iv) != SUPPORTED:
        return ""
    fa = ATTACK_TITLES.get(final_attack, final_attack)
    return (f"The same runs gain {iv.text()} points under PGD-20 (paired t, {iv.how.split(', ')[-1]}), a gain "
            f"that {fa} does not confirm: on these runs the augmentation makes PGD-20 weaker rather than the model "
            "more robust, which is why the final table uses the stronger attack.\n")


def write_page(out: Path, page: Path, figures: Path | None, meta: dict, log=print) -> Path:
    """Compute every table, figure and verdict from ``out`` and write ``page`` (figures under ``figures``)."""
    out, page = Path(out), Path(page)
    figures = Path(figures) if figures is not None else page.parent / "figures" / "findings"
    def quiet(_message: str) -> None:
        return None

    methods = part_groups(out, "methods", quiet)
    augs = part_groups(out, "aug", quiet)
    taus = part_groups(out, "tau_b", quiet) + part_groups(out, "tau_b_aug", quiet)
    taus = group_runs([(d, r) for g in taus for d, r in g.runs]) if taus else []
    final = part_groups(out, "final", quiet)
    best_aug = tuple(meta.get("best_aug") or ())
    fig_rel = Path("figures") / figures.relative_to(page.parent / "figures") if \
        figures.is_relative_to(page.parent / "figures") else figures
    verdicts: dict[int, str] = {}
    effects: dict[int, str] = {}
    md: list[str] = []

    def fig(name: str, figure) -> str:
        save_png(figure, figures / f"{name}.png")
        return f"![{name}]({fig_rel.as_posix()}/{name}.png)\n"

    # final-table rows
    rows = {"AT": find(final, method__name="at"), "AT-BSL": find(final, method__name="at_bsl", data__aug=()),
            f"AT-BSL + {label(best_aug)}": find(final, method__name="at_bsl", data__aug=best_aug) if best_aug else None,
            }
    final_attack = "aa" if all(g is None or "aa" in g.attacks() for g in rows.values()) else "pgd20"
    fa = ATTACK_TITLES.get(final_attack, final_attack)

    # claim 1 -----------------------------------------------------------------------------------------
    bsl = rows["AT-BSL"]
    m_bsl, m_robal = find(methods, method__name="at_bsl"), find(methods, method__name="robal")
    c1: list[Comparison] = []
    for attack in ("pgd20", "cw"):
        iv = contrast([per_seed(m_bsl, attack)], [per_seed(m_robal, attack)])
        c1.append(Comparison(f"{ATTACK_TITLES[attack]}: AT-BSL - RoBal (part a)", iv, verdict_match(iv)))
    cost = read_cost(out)
    if cost is not None:
        iv = cost_ratio(cost, "at_bsl", "robal")
        c1.append(Comparison("training CPU seconds per epoch, AT-BSL / RoBal (part e)", iv, verdict_below(iv)))
    else:  # a study without part (e): the runs' own wall-clock seconds (load-dependent)
        iv = ratio_interval(seconds_per_epoch(m_bsl), seconds_per_epoch(m_robal))
        c1.append(Comparison("training seconds per epoch, AT-BSL / RoBal (part a)", iv, verdict_below(iv)))
    verdicts[1] = combine([c.verdict for c in c1])
    # the paper's +6.66: AT-BSL + augmentation over RoBal (PGD-20: RoBal is not in the AutoAttack table)
    aug_vs_robal = contrast([per_seed(find(augs, method__name="at_bsl", data__aug=best_aug), "pgd20")],
                            [per_seed(m_robal, "pgd20")]) if best_aug else None
    effects[1] = (f"PGD-20 AT-BSL - RoBal {c1[0].iv.text()} points" if c1[0].iv else "PGD-20: -") + \
        (f"; AT-BSL + {label(best_aug)} - RoBal {aug_vs_robal.text()} points" if aug_vs_robal else "") + \
        (f"; time AT-BSL / RoBal {c1[2].iv.text(1.0, 2, signed=False)}" if c1[2].iv else "")

    md.append(f"## Claim 1: {CLAIMS[1]}\n")
    wall_col = [("train_s", "train s/epoch", lambda g: g.cost()["train_s"])] if cost is None else []
    md.append(acc_table("methods", "Part (a): every method, clean / PGD-20 / CW on the test split",
                        [(g.label, g) for g in methods], ["clean", "pgd20", "cw"], "pgd20", extra=wall_col))
    if cost is not None:
        md.append(cost_table(cost, methods))
    passes = ", ".join(f"{g.label} {p:.0f}" for g in methods if (p := passes_per_batch(g)) is not None)
    mem = ", ".join(f"{g.label} {g.cost()['peak_mb'].mean:.0f}" for g in methods if g.cost()["peak_mb"])
    md.append(f"Forward passes per training batch (load-independent cost): {passes or '-'}. "
              f"Peak memory (MB; on CPU the process's peak resident set, mostly the Python + torch runtime, so "
              f"it is not part of the verdict): {mem or '-'}.\n")
    md.append(fig("claim1_cost", cost_figure(methods, "pgd20", cost)) if methods else "")
    md.append("Comparisons:\n\n" + "\n".join(c.line("x" if "seconds" in c.what else "points") for c in c1) + "\n")
    md.append(f"**Verdict: {verdicts[1]}.** Paper (CIFAR): {PAPER[1]}. Here: {effects[1]}. "
              + reproduces(verdicts[1]))
    md.append("What is the method and what is the data: ltadv's RoBal runs two forward passes per loss step "
              "(RoBal's code runs three), so the cost gap to AT-BSL is smaller here by construction than in "
              "the paper; the accuracies are the data's (8x8 images, 461 training images, a 3-conv CNN).\n")

    # claim 2 -----------------------------------------------------------------------------------------
    c2: list[Comparison] = []
    aug_row = rows.get(f"AT-BSL + {label(best_aug)}")
    iv = contrast([per_seed(aug_row, final_attack)], [per_seed(bsl, final_attack)])
    c2.append(Comparison(f"{fa} overall: AT-BSL + {label(best_aug)} - AT-BSL (final table)", iv, verdict_gain(iv)))
    iv = contrast([per_seed(aug_row, final_attack, "tail"), per_seed(bsl, final_attack, "head")],
                  [per_seed(bsl, final_attack, "tail"), per_seed(aug_row, final_attack, "head")])
    c2.append(Comparison(f"{fa}: tail gain - head gain of {label(best_aug)}", iv, verdict_gain(iv, 0.0)))
    verdicts[2] = combine([c.verdict for c in c2])
    effects[2] = f"{fa} gain {c2[0].iv.text()} points" if c2[0].iv else "-"
    md.append(f"## Claim 2: {CLAIMS[2]}\n")
    md.append(f"The best augmentation for AT-BSL, chosen on the validation split in part (b): "
              f"**{label(best_aug)}**.\n")
    final_rows = [(k, g) for k, g in rows.items() if g is not None]
    md.append(acc_table("final", f"Final table (d): clean / PGD-20 / CW / {fa} on the test split", final_rows,
                        [a for a in ("clean", "pgd20", "cw", "aa") if any(a in g.attacks() for _, g in final_rows)],
                        final_attack))
    if final_rows:
        for k, g in final_rows:
            g.label = k
        md.append(fig("claim2_classwise", classwise_robustness([g for _, g in final_rows], attack=final_attack)))
    md.append("Comparisons:\n\n" + "\n".join(c.line() for c in c2) + "\n")
    md.append(f"**Verdict: {verdicts[2]}.** Paper (CIFAR): {PAPER[2]}. Here: {effects[2]}. The half of the "
              "claim about balanced data (augmentation does not help there) is not tested: the study has no "
              "balanced arm.\n")
    md.append(reproduces(verdicts[2], "augmentation regularises, and on 461 training images of 8x8 digits trained "
                         f"for {meta.get('epochs')} epochs it can cost more fit than it buys robustness; the "
                         "augmentations were designed for 32x32 natural images. That is the data and the budget, "
                         "not the loss: the same runs separate AT from AT-BSL (parts a and c)."))
    weak = weaker_attack_gain(aug_row, bsl, final_attack, c2[0].verdict)
    if weak:
        md.append(weak)

    # claim 3 -----------------------------------------------------------------------------------------
    c3: list[Comparison] = []
    chain = [g for g in augs if label(aug_of(g)) in meta.get("growing", GROWING_DEFAULT)]
    for m in ("at_bsl", "at"):
        pts = [(len(aug_of(g)), v[0]) for g in chain if g.config.get("method.name") == m
               for v in per_seed(g, "pgd20").values()]
        iv = slope_interval(pts)
        c3.append(Comparison(f"PGD-20 slope per stacked augmentation, {m} (growing stacks)", iv,
                             verdict_gain(iv, DELTA / 5)))
    singles = [g for g in augs if len(aug_of(g)) == 1 and g.config.get("method.name") == "at_bsl"]
    if singles:
        ra = find(singles, data__aug=("ra",))
        others = [g for g in singles if aug_of(g) != ("ra",)]
        top = max(others, key=lambda g: g.accuracy("pgd20").mean if g.accuracy("pgd20") else -1, default=None)
        if ra is not None and top is not None:
            iv = contrast([per_seed(ra, "pgd20")], [per_seed(top, "pgd20")])
            c3.append(Comparison(f"PGD-20: RandAugment - best other single ({label(aug_of(top))}), at_bsl", iv,
                                 verdict_gain(iv)))
    verdicts[3] = combine([c.verdict for c in c3])
    effects[3] = f"slope {c3[0].iv.text()} points per augmentation" if c3 and c3[0].iv else "-"
    md.append(f"## Claim 3: {CLAIMS[3]}\n")
    md.append(acc_table("aug", "Part (b): augmentations for AT and AT-BSL, clean / PGD-20 on the test split",
                        [(g.label, g) for g in augs], ["clean", "pgd20"], "pgd20"))
    if chain:
        md.append(fig("claim3_stack", aug_stack_curve(chain, attack="pgd20")))
    if augs:
        md.append(fig("claim3_singles", singles_figure(augs, "pgd20")))
    md.append("Comparisons (the slope's meaningful size is DELTA over five added augmentations, "
              f"{100 * DELTA / 5:.1f} points each):\n\n" + "\n".join(c.line() for c in c3) + "\n")
    md.append(f"**Verdict: {verdicts[3]}.** Paper (CIFAR): {PAPER[3]}. Here: {effects[3]}. "
              + reproduces(verdicts[3]).strip() + " The augmentations "
              "(AutoAugment's CIFAR policy, RandAugment, TrivialAugment, AugMix) were designed for 32x32 natural "
              "images; on 8x8 digits several of their operations (flips, large shears, colour ops on grey "
              "levels) change what a digit is, so a negative result here speaks first about the data.\n")

    # claim 4 -----------------------------------------------------------------------------------------
    c4: list[Comparison] = []
    tau_values = sorted({float(g.config.get("method.tau_b")) for g in taus})
    for t in tau_values:
        with_aug, without = find(taus, method__tau_b=t, data__aug=best_aug), find(taus, method__tau_b=t, data__aug=())
        iv = contrast([per_seed(with_aug, "pgd20")], [per_seed(without, "pgd20")])
        c4.append(Comparison(f"PGD-20: {label(best_aug)} - none at tau_b {t:g}", iv, verdict_gain(iv)))
    verdicts[4] = combine([c.verdict for c in c4])
    gains = [c.iv.est for c in c4 if c.iv]
    effects[4] = (f"gain {100 * min(gains):+.1f} to {100 * max(gains):+.1f} points over tau_b" if gains else "-")
    md.append(f"## Claim 4: {CLAIMS[4]}\n")
    md.append(acc_table("tau_b", "Part (c): AT-BSL against tau_b, with and without the best augmentation",
                        [(g.label, g) for g in taus], ["clean", "pgd20"], "pgd20"))
    if taus:
        md.append(fig("claim4_tau_b", tau_b_curve(taus, attack="pgd20")))
    md.append("Comparisons:\n\n" + "\n".join(c.line() for c in c4) + "\n")
    md.append(f"**Verdict: {verdicts[4]}.** Paper (CIFAR): {PAPER[4]}. Here: {effects[4]}.\n")
    md.append(reproduces(verdicts[4], tau_b_reading(c4, tau_values, label(best_aug), verdicts[2], fa, effects[2])))

    # header and summary ------------------------------------------------------------------------------
    data = describe_data([r for g in (*methods, *augs, *taus) for r in g.records])
    minutes = meta.get("seconds", 0) / 60
    head = [
        "# Findings on digits-lt\n",
        f"*This page is generated by `{meta.get('command', 'python benchmarks/findings.py')}` "
        f"(benchmarks/findings.py and benchmarks/findings_page.py); do not edit it by hand, rerun the command. "
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at commit {git_commit()}; the runs "
        f"were trained at commit {run_commits([r for g in (*methods, *augs, *taus, *final) for r in g.records])}; "
        f"the study ran {minutes:.1f} min in {meta.get('sessions', 1)} session(s) on {meta.get('jobs')} job(s) x "
        f"{meta.get('threads')} thread(s) (estimate before the run: {meta.get('estimate_min')} min on 2 quiet "
        f"CPU cores).*\n",
        "The AT-BSL paper (Yue et al., CVPR 2024, arXiv 2403.10073) makes four claims on CIFAR-10/100-LT. This "
        "page tests each on ltadv's embedded **digits-lt** (scikit-learn's 1,797 8x8 handwritten digits; "
        f"{data}): {meta.get('epochs')} epoch(s), seeds {', '.join(map(str, meta.get('seeds') or []))}, the best "
        "epoch chosen on "
        "the validation split. Parts (a)-(c) are evaluated with clean and PGD-20 (and CW in (a)); the final table "
        f"(d) with clean, PGD-20, CW and {fa} on the full test set.\n",
        "## How the verdicts are computed\n",
        "Every comparison is a difference of accuracies with its 95% interval: with several seeds the paired t "
        "interval of the per-seed differences (a seed fixes the long-tailed subset and the initial weights; "
        "every run is tested on the same images, so the interval measures seed-to-seed spread); with one seed "
        "the MOVER interval from the Wilson intervals (Newcombe 1998; Zou & Donner 2008). "
        f"With DELTA = {100 * DELTA:.0f} points (the smallest difference treated as meaningful): a claimed "
        "**gain** is *supported* when its whole interval is above 0, *not supported* when the interval lies "
        "below DELTA (no gain of DELTA or more is compatible with the data), *inconclusive* otherwise; a claimed "
        "**match** (non-inferiority) is *supported* when the interval lies above -DELTA, *not supported* when it "
        "lies below -DELTA; a claimed **lower cost** (time ratio) is *supported* when the ratio's interval lies "
        "below 1. A claim is supported when all its comparisons are, not supported when any is not, "
        "inconclusive otherwise. The tail-minus-head comparison of claim 2 uses 0 in place of DELTA.\n",
        "## Summary\n",
        "| claim | verdict | digits-lt | paper (CIFAR) |\n|---|---|---|---|",
    ]
    head += [f"| {i}. {CLAIMS[i]} | **{verdicts[i]}** | {effects[i]} | {PAPER[i]} |" for i in (1, 2, 3, 4)]
    head.append("")
    tail = ["## Where the numbers come from\n",
            "The study folder holds one `ltadv sweep` folder per part (`methods`, `aug`, `tau_b`, `tau_b_aug`) with "
            "its `summary.md` and full `report/` (`ltadv report DIR` rewrites it), and `final/` with the final "
            "table's runs evaluated by `ltadv eval --attacks cw,aa`. The presets are "
            "`ltadv/presets/sweeps/findings_{methods,aug,tau_b}.yaml`.\n"]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(head) + "\n" + "\n".join(md) + "\n" + "\n".join(tail))
    log(f"wrote {page} and its figures under {figures}")
    return page


GROWING_DEFAULT = ["none", "ra", "ra+cutmix", "ra+cutout+cutmix", "aua+ra+cutout+cutmix",
                   "aua+ra+augmix+cutout+cutmix"]


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Rewrite docs/findings.md from a findings study folder.")
    p.add_argument("out", help="the study folder (benchmarks/findings.py --out)")
    p.add_argument("--page", default="docs/findings.md")
    p.add_argument("--figures", default="docs/figures/findings")
    args = p.parse_args(argv)
    meta_path = Path(args.out) / "meta.json"
    if not meta_path.is_file():
        print(f"findings_page: error: {meta_path} not found (run benchmarks/findings.py first)", file=sys.stderr)
        return 2
    write_page(Path(args.out), Path(args.page), Path(args.figures), json.loads(meta_path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
