"""Tables (and, later, figures) as pure functions over run records (``result.json`` dicts)."""

from __future__ import annotations

import math
from collections.abc import Mapping


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


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
    header = ["run", *attack_names]
    if last:
        header += [f"tail {last}", f"balanced {last}", f"worst-class {last}"]
    header += ["best epoch", "train s/epoch", "peak MB"]
    ref = cost(records[relative_to]) if relative_to in records else None
    if ref:
        header += [f"time x {relative_to}", f"mem x {relative_to}"]
    rows = []
    for name, rec in records.items():
        m = rec.get("metrics") or {}
        row = [name] + [_fmt(m[a]["overall"]) if a in m else "-" for a in attack_names]
        if last:
            row += [_fmt(m[last][k]) if last in m else "-" for k in ("tail", "balanced", "worst")]
        c = cost(rec)
        row += [str(rec.get("best_epoch")), _fmt(c["train_s"], 2), _fmt(c["peak_mb"], 0)]
        if ref:
            row += [_fmt(c["train_s"] / ref["train_s"], 2) if ref["train_s"] else "-",
                    _fmt(c["peak_mb"] / ref["peak_mb"], 2) if ref["peak_mb"] else "-"]
        rows.append(row)
    return markdown_table(header, rows)


def format_attack_table(metrics: Mapping[str, Mapping], seconds: Mapping[str, float] | None = None) -> str:
    """One row per attack of one checkpoint: overall, balanced, head / medium / tail, worst class
    and the attack's seconds (AutoAttack: also the accuracy after each sub-attack)."""
    groups = ("overall", "balanced", "head", "medium", "tail", "worst")
    rows = []
    for name, m in metrics.items():
        row = [name, *[_fmt(m.get(k)) for k in groups], _fmt((seconds or {}).get(name), 1)]
        stages = m.get("stages") or {}
        row.append(", ".join(f"{k} {v:.4f}" for k, v in stages.items()) or "-")
        rows.append(row)
    return markdown_table(["attack", *groups, "seconds", "after each sub-attack"], rows)
