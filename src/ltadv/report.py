"""Tables as pure functions over grouped run records, and ``ltadv report`` (:func:`write_report`).

Layers: ``report_data`` (records -> groups, intervals) is below both this module and ``report_figures``
(groups -> figures); this module imports the figures, never the other way. The data layer's names
(``load_records``, ``group_runs``, ``Group``, ``Stat``, ...) stay importable from here, as documented."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .intervals import CONFIDENCE, percent_decimals
from .report_data import (  # the data layer below this module and report_figures
    ATTACK_ORDER,
    ATTACK_TITLES,
    GROUP_KEYS,
    IGNORED_KEYS,
    Group,
    ReportError,
    Stat,
    accuracy_stat,
    cost,
    differing_keys,
    flatten,
    group_runs,
    load_records,
    main_attack,
    make_labels,
    record_accuracy,
    sort_attacks,
    test_counts,
)

# The documented ``ltadv.report.<name>`` API: this module's tables and the data layer's names.
__all__ = [
    "ATTACK_ORDER", "ATTACK_TITLES", "GROUP_KEYS", "IGNORED_KEYS", "Column", "Group", "Report", "ReportError",
    "Stat", "Table", "accuracy_stat", "classwise_table", "cost", "cost_table", "differing_keys", "find_group",
    "flatten", "format_attack_table", "format_table", "group_runs", "groups_table", "load_records", "main_attack",
    "make_labels", "markdown_table", "method_table", "record_accuracy", "report_tables", "sort_attacks",
    "test_counts", "to_csv", "to_latex", "to_markdown", "write_report", "duplicates_note", "tex_escape", "RENDERERS",
]


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
        from .report_figures import save_figures  # here, not at the top: matplotlib loads only when drawing

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
