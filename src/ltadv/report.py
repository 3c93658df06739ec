"""Tables as pure functions over run records (``result.json`` dicts); figures in ``report_figures``."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .intervals import CONFIDENCE, percent_decimals, successes, t_interval, wilson_interval
from .results import RESULT
from .rundir import run_state


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _pct(v, n: int | None = None) -> str:
    """An accuracy fraction as % with the decimals its ``n`` test images support."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.{percent_decimals(n)}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table with padded columns (a dozen lines; no library needed)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def cost(record: Mapping) -> dict:
    """Mean train / eval seconds per epoch and peak memory (MB) over a run's epochs."""
    ep = record.get("epochs") or []
    if not ep:
        return {"train_s": float("nan"), "eval_s": float("nan"), "peak_mb": float("nan")}
    return {
        "train_s": sum(e["train_seconds"] for e in ep) / len(ep),
        "eval_s": sum(e["eval_seconds"] for e in ep) / len(ep),
        "peak_mb": max(e["peak_mem_mb"] for e in ep),
    }


def format_table(records: Mapping[str, Mapping], relative_to: str | None = None) -> str:
    """One row per run: clean and each attack overall, tail / balanced / worst-class for the last
    (strongest) attack, best epoch, seconds per epoch and peak memory; with ``relative_to`` also the
    time and memory as ratios to that row's."""
    attack_names: list[str] = []
    for rec in records.values():
        for a in rec.get("metrics") or {}:
            if a not in attack_names:
                attack_names.append(a)
    robust = [a for a in attack_names if a != "clean"]
    last = robust[-1] if robust else None
    # balanced accuracy equals overall accuracy on a balanced test set: shown only when some is not
    balanced = last is not None and not all(
        (c := test_counts(rec, last)) is not None and len(set(c)) == 1 for rec in records.values())
    keys = ("tail", "balanced", "worst") if balanced else ("tail", "worst")
    header = ["run", "n", *[f"{a} %" for a in attack_names]]
    if last:
        header += [f"tail {last} %", *([f"balanced {last} %"] if balanced else []), f"worst-class {last} %"]
    header += ["best epoch", "train s/epoch", "peak MB"]
    ref = cost(records[relative_to]) if relative_to in records else None
    if ref:
        header += [f"time x {relative_to}", f"mem x {relative_to}"]
    rows = []
    for name, rec in records.items():
        m = rec.get("metrics") or {}
        n = {a: m[a].get("n") for a in m}
        row = [name, "/".join(sorted({str(v) for v in n.values() if v})) or "-"]
        row += [_pct(m[a]["overall"], n[a]) if a in m else "-" for a in attack_names]
        if last:
            tail, classes = record_accuracy(rec, last, "tail"), max(1, len(m.get(last, {}).get("per_class") or []))
            images = {"tail": tail[2] if tail else None, "balanced": n.get(last),
                      "worst": n.get(last) // classes if n.get(last) else None}  # decimals: a class's images
            row += [_pct(m[last][k], images[k]) if last in m else "-" for k in keys]
        c = cost(rec)
        row += [str(rec.get("best_epoch")), _fmt(c["train_s"], 2), _fmt(c["peak_mb"], 0)]
        if ref:
            row += [_fmt(c["train_s"] / ref["train_s"], 2) if ref["train_s"] else "-",
                    _fmt(c["peak_mb"] / ref["peak_mb"], 2) if ref["peak_mb"] else "-"]
        rows.append(row)
    return markdown_table(header, rows)


# ---------------------------------------------------------------------------------------------------
# `ltadv report`: every run record under a folder -> seed-averaged tables (Markdown, CSV, LaTeX) and
# figures (report_figures.py). Runs whose configs differ only in the seed form one group (one run per
# seed); accuracies carry 95% intervals (ltadv.intervals).
# Tables are hand-written in the three formats because pandas is not a dependency and the formats
# needed here are a few lines each.
# ---------------------------------------------------------------------------------------------------

# Display order and names of the attacks (the AT-BSL paper's table order); unknown attacks follow.
ATTACK_ORDER = ["clean", "fgsm", "pgd20", "mim", "cw", "lsa", "aa_apgd", "aa_torchattacks", "aa"]
ATTACK_TITLES = {"clean": "Clean", "fgsm": "FGSM", "pgd20": "PGD-20", "mim": "MIM", "cw": "CW", "lsa": "LSA",
                 "aa": "AA", "aa_torchattacks": "AA-ta", "aa_apgd": "AA-apgd"}
# Config keys that do not change what a run learns: they neither split groups nor name rows (the
# attacks evaluated show up as the metrics present, whatever eval.attacks said at training time).
IGNORED_KEYS = {"seed", "data.root", "train.device", "train.progress", "train.log_every", "train.compile",
                "eval.attacks", "eval.batch_size", "eval.checkpoints"}


class ReportError(ValueError):
    pass


def flatten(d: Mapping, prefix: str = "") -> dict:
    """Nested config dict -> {"method.tau_b": 1.5, ...}; lists become tuples (hashable)."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


EPOCH_NUMBERS = ("epoch", "train_seconds", "eval_seconds", "peak_mem_mb")  # what the tables and figures read


def check_record_values(rec: Mapping) -> None:
    """The numbers the report reads are numbers (a ValueError naming the first that is not)."""
    for attack, m in (rec.get("metrics") or {}).items():
        for k, v in m.items():
            if k in ("overall", "balanced", "worst", "head", "medium", "tail") and not (v is None or _is_num(v)):
                raise ValueError(f"metrics.{attack}.{k} is {v!r}, not a number")
        pc = m.get("per_class")
        if pc is not None and not (isinstance(pc, list) and all(v is None or _is_num(v) for v in pc)):
            raise ValueError(f"metrics.{attack}.per_class is not a list of numbers")
    epochs = rec.get("epochs") or []
    if not isinstance(epochs, list) or not all(isinstance(e, dict) for e in epochs):
        raise ValueError("'epochs' is not a list of per-epoch records")
    for i, e in enumerate(epochs):
        for k in EPOCH_NUMBERS:
            if not _is_num(e.get(k)):
                raise ValueError(f"epochs[{i}].{k} is {e.get(k)!r}, not a number")
    counts = rec.get("class_counts")
    if counts is not None and not (isinstance(counts, list) and all(isinstance(c, int) for c in counts)):
        raise ValueError("'class_counts' is not a list of integers")


def load_records(runs_dir: str | Path, log=print) -> list[tuple[Path, dict]]:
    """[(run folder, record)] for every complete ``result.json`` under ``runs_dir`` (recursively, sorted).

    An unfinished run is left out with a note that tells running (its folder is locked by a live
    process), stopped (killed), interrupted, failed (with the reason) and trained-not-evaluated runs
    apart; a file that is not a valid record gets a one-line warning; neither stops the report."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ReportError(f"runs folder not found: {runs_dir}")
    found, left_out = [], {}
    for path in sorted(runs_dir.rglob(RESULT)):
        try:
            rec = json.loads(path.read_text())
            if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict):
                raise ValueError("no 'config' entry")
            metrics = rec.get("metrics") or {}
            if not isinstance(metrics, dict) or not all(isinstance(m, dict) and "overall" in m
                                                        for m in metrics.values()):
                raise ValueError("'metrics' is not {attack: {overall, ...}}")
            check_record_values(rec)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            msg = f"{e.msg}, line {e.lineno}" if isinstance(e, json.JSONDecodeError) else str(e)
            log(f"warning: skipping {path}: not a valid run record ({msg})")
            continue
        if rec.get("status", "complete") != "complete" or not rec.get("metrics"):
            state = run_state(path.parent, rec) if rec.get("status", "complete") != "complete" else "trained"
            left_out.setdefault(state, []).append((path.parent, rec))
            continue
        found.append((path.parent, rec))
    for state, runs in left_out.items():
        what = {"running": "still running", "stopped": "stopped without finishing (killed? continue with --resume)",
                "interrupted": "interrupted (continue with --resume)", "failed": "failed",
                "trained": "trained but not evaluated"}.get(state, f"with status {state!r}")
        if state == "failed":
            names = "; ".join(f"{p} ({r.get('failure') or 'no reason recorded'})" for p, r in runs)
        else:
            names = ", ".join(str(p) for p, _ in runs)
        log(f"note: skipping {len(runs)} run(s) {what}: {names}")
    return found


@dataclass
class Stat:
    """Mean and sample standard deviation (n - 1) of one number over a group's seeds; for accuracies
    also a 95% interval (``lo``, ``hi``: the t interval over seeds, or one run's Wilson interval) and
    the test images behind each value (``images``, which sets the decimals shown)."""

    mean: float
    std: float | None
    n: int
    lo: float | None = None
    hi: float | None = None
    images: int | None = None

    @classmethod
    def of(cls, values) -> Stat | None:
        vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if not vals:
            return None
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


@dataclass
class Group:
    """Runs whose configs are equal up to the seed (and the keys in IGNORED_KEYS)."""

    label: str
    config: dict  # flattened, without the ignored keys
    runs: list[tuple[Path, dict]] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (left out, the copy kept): same seed

    @property
    def records(self) -> list[dict]:
        return [r for _, r in self.runs]

    @property
    def seeds(self) -> list:
        return [r["config"].get("seed") for r in self.records]

    def attacks(self) -> list[str]:
        names = {a for r in self.records for a in r.get("metrics") or {}}
        return sort_attacks(names)

    def stat(self, attack: str, key: str = "overall") -> Stat | None:
        return Stat.of((r.get("metrics") or {}).get(attack, {}).get(key) for r in self.records)

    def per_class(self, attack: str) -> list[Stat | None]:
        rows = [r["metrics"][attack]["per_class"] for r in self.records if attack in (r.get("metrics") or {})]
        width = max((len(p) for p in rows), default=0)
        return [Stat.of(p[i] for p in rows if i < len(p)) for i in range(width)]

    def cost(self) -> dict[str, Stat | None]:
        costs = [cost(r) for r in self.records]
        return {k: Stat.of(c[k] for c in costs) for k in ("train_s", "eval_s", "peak_mb")}

    def class_counts(self) -> list[int]:
        return list(self.records[0].get("class_counts") or [])

    def accuracy(self, attack: str, key: str = "overall") -> Stat | None:
        """``key`` (overall, head, medium, tail, balanced) of ``attack`` over the seeds, with its interval
        (:func:`accuracy_stat`)."""
        return accuracy_stat([record_accuracy(r, attack, key) for r in self.records])

    def test_images(self) -> list[int]:
        """The distinct numbers of test images the group's accuracies were measured on."""
        return sorted({m["n"] for r in self.records for m in (r.get("metrics") or {}).values()
                       if isinstance(m.get("n"), int)})

    def balanced_test(self) -> bool:
        """Every run and attack was tested on equally many images of each class (so balanced accuracy
        equals overall accuracy); False when a record does not tell."""
        return all((c := test_counts(r, a)) is not None and len(set(c)) == 1
                   for r in self.records for a in r.get("metrics") or {})


# --- uncertainty: the intervals behind every accuracy in the tables (ltadv.intervals) --------------------

GROUP_KEYS = ("head", "medium", "tail")


def test_counts(record: Mapping, attack: str) -> list[int] | None:
    """Test images per class behind ``record["metrics"][attack]``: the stored ``per_class_n``; for a
    record without it, equal counts when the run was tested on its whole (balanced) test split and the
    per-class accuracies are all multiples of 1 / (n / classes); else None (unknown)."""
    m = (record.get("metrics") or {}).get(attack) or {}
    pc = m.get("per_class") or []
    counts = m.get("per_class_n")
    if isinstance(counts, list) and len(counts) == len(pc) and all(isinstance(c, int) for c in counts):
        return counts
    n, c = m.get("n"), len(pc)
    full = ((record.get("config") or {}).get("eval") or {}).get("n") is None
    if not (full and isinstance(n, int) and c and n % c == 0):
        return None
    q = n // c
    ok = all(isinstance(p, float | int) and not math.isnan(p) and abs(p * q - round(p * q)) < 1e-6 for p in pc)
    return [q] * c if ok else None


def record_accuracy(record: Mapping, attack: str, key: str = "overall"):
    """(accuracy, correct images k or None, images n or None) of one run, or None when not recorded.

    ``overall``: the stored accuracy over ``n`` images. ``head`` / ``medium`` / ``tail``: correct over
    images pooled across the group's classes (equal to the stored mean of the group's per-class
    accuracies on a balanced test set). ``balanced`` (mean of per-class accuracies) is not a binomial
    proportion: k is None, so a single run gets no interval for it."""
    m = (record.get("metrics") or {}).get(attack)
    if not m or m.get(key) is None or (isinstance(m[key], float) and math.isnan(m[key])):
        return None
    n = m.get("n") if isinstance(m.get("n"), int) and m.get("n") > 0 else None
    if key == "overall":
        return float(m[key]), successes(m[key], n) if n else None, n
    if key in GROUP_KEYS:
        counts, classes = test_counts(record, attack), (record.get("groups") or {}).get(key)
        if counts and classes:
            images = sum(counts[c] for c in classes)
            k = sum(successes(m["per_class"][c], counts[c]) for c in classes if counts[c])
            if images:
                return k / images, k, images
        return float(m[key]), None, None
    return float(m[key]), None, n


def accuracy_stat(values) -> Stat | None:
    """A Stat from per-seed ``(accuracy, k, n)`` triples (None entries skipped): with several seeds the
    mean, sample std and 95% t interval over them; with one seed its 95% Wilson interval (when k and n
    are known). ``images``: the fewest test images among the seeds."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    ns = [v[2] for v in vals]
    images = min(ns) if all(n is not None for n in ns) else None
    if len(vals) > 1:
        acc = [v[0] for v in vals]
        lo, hi = t_interval(acc)
        return Stat(statistics.fmean(acc), statistics.stdev(acc), len(acc), lo, hi, images)
    acc, k, n = vals[0]
    lo, hi = wilson_interval(k, n) if k is not None and n else (None, None)
    return Stat(acc, None, 1, lo, hi, images)


def drop_duplicate_seeds(group: Group) -> None:
    """Keep one run per seed (the first by folder): a copy of a run (same config, same seed) is the same
    experiment, not another seed; the copies left out go to ``group.duplicates``."""
    kept: dict[str, Path] = {}
    runs = []
    for run_dir, rec in group.runs:
        seed = repr(rec["config"].get("seed"))
        if seed in kept:
            group.duplicates.append((run_dir, kept[seed]))
            continue
        kept[seed] = run_dir
        runs.append((run_dir, rec))
    group.runs = runs


def sort_attacks(names) -> list[str]:
    return sorted(names, key=lambda a: (ATTACK_ORDER.index(a) if a in ATTACK_ORDER else len(ATTACK_ORDER), a))


def main_attack(groups: list[Group]) -> str | None:
    """The strongest robust attack that every group was evaluated with (AA > ... > FGSM)."""
    common = set.intersection(*(set(g.attacks()) for g in groups)) if groups else set()
    robust = [a for a in sort_attacks(common) if a != "clean"]
    known = [a for a in robust if a in ATTACK_ORDER]
    return (known or robust or [None])[-1]


def _value_text(key: str, v) -> str:
    if key == "data.aug":
        return "+".join(v) if v else "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def differing_keys(configs: list[dict]) -> list[str]:
    """Flattened keys whose values are not the same in every config, in config order."""
    keys: list[str] = []
    for c in configs:
        keys += [k for k in c if k not in keys]
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def make_labels(configs: list[dict]) -> list[str]:
    """A readable row label per config from what differs: ``at_bsl, tau_b=1.5, aug=ra+cutmix``.

    The method name stands alone; another key is written (by its last part, or the full dotted key
    when two differing keys share it) only where it tells this config apart from another of the same
    method, so a method's own preset (``at_rs``: ``sampler=balanced``) is not spelled out on its row.
    With nothing differing, the method name."""
    diff = differing_keys(configs)
    diff = ([k for k in diff if k == "method.name"] + [k for k in diff if k != "method.name"])
    shorts = [k.rsplit(".", 1)[-1] for k in diff]
    names = {"aug": "aug"}
    labels = []
    for c in configs:
        parts = []
        same_method = [o for o in configs if o.get("method.name") == c.get("method.name")]
        for k, s in zip(diff, shorts):
            if k == "method.name":
                parts.append(str(c.get(k)))
                continue
            if len({repr(o.get(k)) for o in same_method}) == 1 and "method.name" in diff:
                continue  # implied by the method name (its preset) here
            name = s if shorts.count(s) == 1 else k
            parts.append(f"{names.get(name, name)}={_value_text(k, c.get(k))}")
        labels.append(", ".join(parts) or str(c.get("method.name", "run")))
    return labels


def _sort_key(v):
    if v is None:
        return (0, 0, "")
    if isinstance(v, bool):
        return (1, int(v), "")
    if isinstance(v, (int, float)):
        return (1, v, "")
    if isinstance(v, tuple):
        return (2, len(v), "+".join(map(str, v)))
    return (3, 0, str(v))


def group_runs(runs: list[tuple[Path, dict]]) -> list[Group]:
    """Group runs that differ only in the seed; label the groups by their config differences and sort
    them by the differing values (numbers numerically, augmentation lists by length)."""
    by_key: dict[str, Group] = {}
    for run_dir, rec in runs:
        cfg = {k: v for k, v in flatten(rec["config"]).items() if k not in IGNORED_KEYS}
        if rec.get("posthoc"):  # `ltadv posthoc` output: same config, other classifier, its own group
            cfg["posthoc"] = rec["posthoc"]["kind"] + (f" {rec['posthoc']['tau']:g}" if "tau" in rec["posthoc"] else "")
        key = json.dumps(sorted((k, repr(v)) for k, v in cfg.items()))
        by_key.setdefault(key, Group("", cfg)).runs.append((run_dir, rec))
    groups = list(by_key.values())
    for g in groups:
        drop_duplicate_seeds(g)
    diff = differing_keys([g.config for g in groups])
    diff = [k for k in diff if k == "method.name"] + [k for k in diff if k != "method.name"]
    groups.sort(key=lambda g: [_sort_key(g.config.get(k)) for k in diff])
    for g, label in zip(groups, make_labels([g.config for g in groups])):
        g.label = label
    return groups


def find_group(groups: list[Group], name: str) -> Group:
    """A group by its label, or by the folder name (e.g. a sweep cell) of one of its runs."""
    for g in groups:
        if g.label == name:
            return g
    for g in groups:
        if any(d.name == name or str(d) == name for d, _ in g.runs):
            return g
    raise ReportError(f"--relative-to {name!r} matches no run; rows: {'; '.join(g.label for g in groups)}")


# --- tables: a format-neutral Table, then one renderer per format --------------------------------------

@dataclass
class Column:
    key: str  # CSV column name
    title: str  # Markdown / LaTeX header
    kind: str = "acc"  # text | int | acc (fraction, shown as %) | sec | mb | ratio


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: list[list]  # cells: str, int, Stat or None
    note: str = ""
    mark_best: bool = True  # bold the best of each accuracy column when its interval clears the next
    intervals: bool = True  # print accuracies with their intervals (off: means only, e.g. per class)


INTERVAL_NOTE = (f"one seed: accuracy [{CONFIDENCE:.0%} Wilson score interval over its test images]; several seeds: "
                 f"mean ± half-width of the {CONFIDENCE:.0%} t interval over seeds (seeds - 1 degrees of freedom; "
                 f"all seeds are tested on the same images); bold: best of its column, only where its interval "
                 f"does not overlap the next best's")


def _images_text(g: Group) -> str:
    return "/".join(str(n) for n in g.test_images()) or "-"


def method_table(groups: list[Group]) -> Table:
    """Accuracy under each attack in the papers' column order (Clean, FGSM, PGD-20, CW, LSA, AA; others
    where ATTACK_ORDER puts them), with the seeds and test images behind each row and the intervals of
    :data:`INTERVAL_NOTE`; balanced accuracy columns only when some test set is imbalanced (on a
    balanced one they equal the overall accuracy)."""
    attacks = sort_attacks({a for g in groups for a in g.attacks()})
    cols = [Column("run", "run", "text"), Column("seeds", "seeds", "int"), Column("test_images", "test images", "text")]
    cols += [Column(f"{a}_overall", ATTACK_TITLES.get(a, a)) for a in attacks]
    balanced = all(g.balanced_test() for g in groups)
    if not balanced:
        cols += [Column(f"{a}_balanced", f"{ATTACK_TITLES.get(a, a)} bal.") for a in attacks]
    rows = []
    for g in groups:
        row = [g.label, len(g.runs), _images_text(g)] + [g.accuracy(a, "overall") for a in attacks]
        if not balanced:
            row += [g.accuracy(a, "balanced") for a in attacks]
        rows.append(row)
    note = INTERVAL_NOTE + ("" if balanced else "; bal.: mean of the per-class accuracies (no interval for one seed)")
    return Table("methods", "Accuracy (%) on the test split, best checkpoint", cols, rows, note=note)


def _group_sizes(groups: list[Group]) -> dict[str, int | None]:
    """Classes per head / medium / tail group when every run agrees (else None)."""
    sizes = {k: {len((r.get("groups") or {}).get(k) or []) for g in groups for r in g.records} for k in GROUP_KEYS}
    return {k: v.pop() if len(v) == 1 else None for k, v in sizes.items()}


def groups_table(groups: list[Group]) -> Table:
    """Head / medium / tail accuracy (%) for every run and attack, each with the test images behind it:
    a group's accuracy is its correct images over its images (per-class counts from the record)."""
    sizes = _group_sizes(groups)
    cols = [Column("run", "run", "text"), Column("attack", "attack", "text"), Column("seeds", "seeds", "int")]
    for k in GROUP_KEYS:
        title = f"{k} ({sizes[k]} classes)" if sizes[k] else k
        cols += [Column(k, title), Column(f"{k}_images", f"{k} images", "text")]
    rows = []
    for g in groups:
        for a in g.attacks():
            row = [g.label, ATTACK_TITLES.get(a, a), len(g.runs)]
            for k in GROUP_KEYS:
                st = g.accuracy(a, k)
                row += [st, str(st.images) if st is not None and st.images else "-"]
            rows.append(row)
    return Table("groups", "Accuracy (%) of the head, medium and tail classes (by training images), best checkpoint",
                 cols, rows, note=INTERVAL_NOTE.split("; bold")[0] + "; head / medium / tail: the thirds of the "
                 "classes with the most to the fewest training images (eval.head_frac, eval.tail_frac)",
                 mark_best=False)


def cost_table(groups: list[Group], relative_to: str | None = None) -> Table:
    """Training and evaluation seconds per epoch and peak memory; ratios to a reference row."""
    ref = find_group(groups, relative_to) if relative_to else None
    cols = [Column("run", "run", "text"), Column("seeds", "seeds", "int"), Column("epochs", "epochs", "int"),
            Column("best_epoch", "best epoch", "text"), Column("train_s_per_epoch", "train s/epoch", "sec"),
            Column("eval_s_per_epoch", "eval s/epoch", "sec"), Column("peak_mem_mb", "peak MB", "mb")]
    if ref:
        cols += [Column("time_ratio", f"time x {ref.label}", "ratio"),
                 Column("mem_ratio", f"mem x {ref.label}", "ratio")]
    rc = ref.cost() if ref else {}
    rows = []
    for g in groups:
        c = g.cost()
        best = [str(b) for b in sorted({r.get("best_epoch") for r in g.records}, key=lambda b: (b is None, b or 0))]
        row = [g.label, len(g.runs), max(len(r.get("epochs") or []) for r in g.records), "/".join(best),
               c["train_s"], c["eval_s"], c["peak_mb"]]
        if ref:
            for k in ("train_s", "peak_mb"):
                ok = c[k] is not None and rc[k] is not None and rc[k].mean > 0
                row.append(Stat(c[k].mean / rc[k].mean, None, 1) if ok else None)
        rows.append(row)
    note = "peak MB: peak CUDA memory allocated (on CPU: peak resident set)"
    return Table("cost", "Cost per epoch (mean ± std over seeds)", cols, rows,
                 note=note + (f"; ratios of means to {ref.label}" if ref else ""))


def classwise_table(groups: list[Group]) -> Table:
    """Per-class accuracy (%) for every run and attack; class counts from the first run in the header."""
    width = max((len(g.class_counts()) for g in groups), default=0)
    counts = groups[0].class_counts() if groups else []
    same = all(g.class_counts() == counts for g in groups)
    cols = [Column("run", "run", "text"), Column("attack", "attack", "text"), Column("seeds", "seeds", "int"),
            Column("test_images", "test images", "text")]
    cols += [Column(f"class_{i}", f"{i} ({counts[i]})" if same and i < len(counts) else str(i)) for i in range(width)]
    rows = []
    for g in groups:
        for a in g.attacks():
            pc = g.per_class(a)
            for c, st in enumerate(pc):  # decimals from the class's test images
                tc = [t for r in g.records if (t := test_counts(r, a))]
                if st is not None and tc and c < len(tc[0]):
                    st.images = min(t[c] for t in tc if c < len(t))
            rows.append([g.label, ATTACK_TITLES.get(a, a), len(g.runs), _images_text(g), *pc,
                         *[None] * (width - len(pc))])
    return Table("classwise", "Per-class accuracy (%), best checkpoint, mean over seeds" +
                 (" (header: class (training images))" if same else ""), cols, rows,
                 note="CSV: each class's mean and std over seeds", mark_best=False, intervals=False)


def _num(stat: Stat | None, kind: str, with_std: bool = True, pm: str = " ± ") -> str:
    """Accuracies in % with decimals from their test images (:func:`ltadv.intervals.percent_decimals`):
    several seeds ``mean ± half-width`` of the t interval, one run ``value [lo, hi]`` (its Wilson interval).
    Other numbers: ``mean ± std``."""
    if stat is None or stat.mean is None or math.isnan(stat.mean):
        return "-"
    if kind == "acc":
        d = percent_decimals(stat.images)
        text = f"{100 * stat.mean:.{d}f}"
        if with_std and stat.lo is not None and stat.hi is not None:
            if stat.n > 1:
                text += f"{pm}{100 * (stat.hi - stat.lo) / 2:.{d}f}"
            else:
                text += f" [{100 * stat.lo:.{d}f}, {100 * stat.hi:.{d}f}]"
        return text
    digits = {"sec": 2, "mb": 0, "ratio": 2}[kind]
    text = f"{stat.mean:.{digits}f}"
    if with_std and stat.std is not None:
        text += f"{pm}{stat.std:.{digits}f}"
    return text


def _best_rows(table: Table) -> dict[int, set[int]]:
    """Column index -> the row to set in bold: the highest mean of an accuracy column, only when its
    interval lies wholly above the interval of the next best row (a tie or an overlap marks nothing)."""
    best: dict[int, set[int]] = {}
    if len(table.rows) < 2 or not table.mark_best:
        return best
    for j, col in enumerate(table.columns):
        if col.kind != "acc":
            continue
        ranked = sorted((r[j] for r in table.rows if isinstance(r[j], Stat)), key=lambda st: -st.mean)
        if len(ranked) < 2:
            continue
        top, second = ranked[:2]
        if None in (top.lo, top.hi, second.lo, second.hi) or not top.mean > second.mean:
            continue
        if top.lo > second.hi:
            best[j] = {i for i, r in enumerate(table.rows) if r[j] is top}
    return best


def _cells(table: Table, pm: str, bold) -> list[list[str]]:
    best = _best_rows(table)
    out = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, (col, v) in enumerate(zip(table.columns, row)):
            if col.kind in ("text", "int"):
                cells.append("-" if v is None else str(v))
            else:
                s = _num(v, col.kind, with_std=table.intervals, pm=pm)
                cells.append(bold(s) if i in best.get(j, ()) else s)
        out.append(cells)
    return out


def to_markdown(table: Table) -> str:
    body = markdown_table([c.title for c in table.columns], _cells(table, " ± ", lambda s: f"**{s}**"))
    return f"### {table.title}\n\n{body}\n" + (f"\n{table.note}\n" if table.note else "")


def to_csv(table: Table) -> str:
    """Numbers as stored (accuracies as fractions), full precision; every numeric column has a
    ``<column>_std`` companion (empty for a single seed) and every accuracy column ``<column>_lo`` and
    ``<column>_hi``, its 95% interval (empty when there is none)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = []
    for c in table.columns:
        header += ([c.key] if c.kind in ("text", "int") else [c.key, f"{c.key}_std"] +
                   ([f"{c.key}_lo", f"{c.key}_hi"] if c.kind == "acc" else []))
    w.writerow(header)

    def num(x):
        return "" if x is None else repr(x)

    for row in table.rows:
        out = []
        for c, v in zip(table.columns, row):
            if c.kind in ("text", "int"):
                out.append("" if v is None else v)
                continue
            out += ["", ""] if v is None else [repr(v.mean), num(v.std)]
            if c.kind == "acc":
                out += ["", ""] if v is None else [num(v.lo), num(v.hi)]
        w.writerow(out)
    return buf.getvalue()


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``); best means in bold."""
    cells = _cells(table, "{PM}", lambda s: "{BOLD}" + s)
    align = "".join("l" if c.kind == "text" else "r" for c in table.columns)
    caption = tex_escape(table.title + (f". {table.note[0].upper()}{table.note[1:]}." if table.note else ""))
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}",
             rf"\label{{tab:{table.name}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(tex_escape(c.title) for c in table.columns) + r" \\", r"\midrule"]
    for row in cells:
        out = []
        for s in row:
            bold = s.startswith("{BOLD}")
            s = tex_escape(s.removeprefix("{BOLD}")).replace(r"\{PM\}", r" $\pm$ ")
            out.append(rf"\textbf{{{s}}}" if bold else s)
        lines.append(" & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


RENDERERS = {"md": to_markdown, "csv": to_csv, "tex": to_latex}


def report_tables(groups: list[Group], relative_to: str | None = None) -> list[Table]:
    # the CLI prints the first two (methods and cost) to the terminal
    return [method_table(groups), cost_table(groups, relative_to), groups_table(groups), classwise_table(groups)]


def duplicates_note(groups: list[Group]) -> str:
    """One line naming the runs left out as copies of another run's (config, seed), or ''."""
    dups = [(d, k) for g in groups for d, k in g.duplicates]
    if not dups:
        return ""
    return (f"{len(dups)} run(s) repeat the config and seed of another and are not counted as more seeds: "
            + "; ".join(f"{d} (same as {k})" for d, k in dups))


@dataclass
class Report:
    out: Path
    paths: list[Path]  # every file written
    tables: list[Table]
    groups: list[Group]


def _is_report(folder: Path) -> bool:
    """A folder an earlier ``ltadv report`` wrote (its report.md starts as ours do)."""
    try:
        with open(folder / "report.md", encoding="utf-8") as f:
            return f.read(10) == "# Report: "
    except (OSError, UnicodeDecodeError):
        return False


def write_report(runs_dir: str | Path, out: str | Path | None = None, formats=("md", "csv", "tex"),
                 relative_to: str | None = None, figures: bool = True, log=print) -> Report:
    """Everything ``ltadv report`` writes: each table in each format, ``report.md`` with all tables
    and the figures (PNG and PDF). Default ``out``: ``RUNS_DIR/report``."""
    formats = list(formats)
    bad = [f for f in formats if f not in RENDERERS]
    if bad or not formats:
        raise ReportError(f"unknown report format {bad[0] if bad else ''!r}; formats: {', '.join(RENDERERS)}")
    runs = load_records(runs_dir, log=log)
    if not runs:
        raise ReportError(f"no finished run record (result.json with status complete) under {runs_dir}")
    groups = group_runs(runs)
    duplicates = duplicates_note(groups)
    if duplicates:
        log(f"note: {duplicates}")
    tables = report_tables(groups, relative_to)  # before writing, so a bad --relative-to leaves no files
    out = Path(out) if out is not None else Path(runs_dir) / "report"
    if out.exists() and not out.is_dir():
        raise ReportError(f"report output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_report(out):
        raise ReportError(f"report output folder {out} is not empty and holds no earlier ltadv report "
                          f"(report.md); choose an empty or new --out, so no file of yours is overwritten")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in tables:
        for f in formats:
            path = out / f"{t.name}.{f}"
            path.write_text(RENDERERS[f](t))
            written.append(path)
    fig_paths = []
    if figures:
        from .report_figures import save_figures

        fig_paths = save_figures(groups, out)
        written += fig_paths
    seeds = sum(len(g.runs) for g in groups)
    md = [f"# Report: {runs_dir}\n", f"{seeds} run(s) in {len(groups)} group(s) (runs differing only in the "
          "seed are averaged; one run per (config, seed)).\n"] + ([f"Note: {duplicates}.\n"] if duplicates else [])
    md += [to_markdown(t) for t in tables]
    md += [f"![{p.stem}]({p.name})\n" for p in fig_paths if p.suffix == ".png"]
    (out / "report.md").write_text("\n".join(md))
    written.append(out / "report.md")
    return Report(out, written, tables, groups)
def format_attack_table(metrics: Mapping[str, Mapping], seconds: Mapping[str, float] | None = None) -> str:
    """One row per attack of one checkpoint: test images, accuracy (%) overall, balanced, head / medium /
    tail, worst class and the attack's seconds (AutoAttack: also the accuracy after each sub-attack)."""
    groups = ("overall", "balanced", "head", "medium", "tail", "worst")
    rows = []
    for name, m in metrics.items():
        n = m.get("n")
        per_class = n // len(m["per_class"]) if n and m.get("per_class") else None
        row = [name, str(n or "-"), *[_pct(m.get(k), per_class if k == "worst" else n) for k in groups],
               _fmt((seconds or {}).get(name), 1)]
        stages = m.get("stages") or {}
        row.append(", ".join(f"{k} {_pct(v, n)}" for k, v in stages.items()) or "-")
        rows.append(row)
    return markdown_table(["attack", "n", *[f"{g} %" for g in groups], "seconds", "% after each sub-attack"], rows)
