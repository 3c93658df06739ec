"""Run records -> groups: the data layer under the report's tables (``report``) and figures (``report_figures``).

Reads every finished ``result.json`` under a folder, checks the numbers the report reads, groups runs
whose configs differ only in the seed (one run per seed) and gives each group's accuracies with their
95% intervals (:mod:`ltadv.intervals`). Nothing here draws or formats: both ``report`` and
``report_figures`` import from this module, and it imports neither.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .intervals import successes, t_interval, wilson_interval
from .results import RESULT
from .rundir import run_state


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
