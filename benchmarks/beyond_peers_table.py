"""The table of docs/beyond-peers.md from a finished `ltadv sweep beyond_peers` folder.

    OMP_NUM_THREADS=1 ltadv sweep beyond_peers --out runs/beyond_peers
    python benchmarks/beyond_peers_table.py runs/beyond_peers

One row per cell (AT-BSL's EMA cell gives two: the raw weights and the weight average ``ema_best``):
clean, PGD-20, tail PGD-20 and worst-class PGD-20 accuracy on the balanced digits test set, each the
mean over seeds with its 95% Student t interval (ltadv.intervals), and seconds per training epoch.
The sweep's own report (``runs/beyond_peers/report``) has the per-seed numbers and the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from ltadv.intervals import t_interval


def cell_name(run: Path) -> str:
    return run.name.split("__seed=")[0]


def rows(folder: Path) -> dict[str, dict[str, list[float]]]:
    """{row: {column: [one value per seed]}} from every complete run under ``folder``."""
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in sorted(folder.glob("*__seed=*/result.json")):
        record = json.loads(result.read_text())
        if record.get("status") != "complete":
            continue
        checkpoints = [("best", cell_name(result.parent))]
        if "ema_best" in record["metrics_by_checkpoint"]:
            checkpoints.append(("ema_best", cell_name(result.parent) + " (ema_best)"))
        secs = [e["train_seconds"] for e in record["epochs"]]
        for which, row in checkpoints:
            m = record["metrics_by_checkpoint"][which]
            t = table[row]
            t["clean"].append(m["clean"]["overall"])
            t["pgd20"].append(m["pgd20"]["overall"])
            t["tail"].append(m["pgd20"]["tail"])
            t["worst"].append(m["pgd20"]["worst"])
            t["s/epoch"].append(math.fsum(secs) / len(secs))
            t["n"] = [m["pgd20"]["n"]]
    return table


def cell(values: list[float], percent: bool = True) -> str:
    scale = 100 if percent else 1
    mean = math.fsum(values) / len(values)
    ci = t_interval(values)
    if ci is None:
        return f"{mean * scale:.1f}"
    lo, hi = (max(ci[0], 0.0), min(ci[1], 1.0)) if percent else ci  # an accuracy's interval stays in [0, 1]
    return f"{mean * scale:.1f} [{lo * scale:.1f}, {hi * scale:.1f}]"


def markdown(table) -> str:
    head = ("| run | seeds | clean % | PGD-20 % | tail PGD-20 % | worst-class PGD-20 % | s / epoch |\n"
            "|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {row} | {len(t['pgd20'])} | {cell(t['clean'])} | {cell(t['pgd20'])} | {cell(t['tail'])} | "
        f"{cell(t['worst'])} | {math.fsum(t['s/epoch']) / len(t['s/epoch']):.1f} |\n" for row, t in table.items())
    n = next(iter(table.values()))["n"][0] if table else 0
    return head + body + (f"\nMeans over seeds with 95% t intervals (clipped to [0, 100]); each seed's accuracy is "
                          f"on n = {n} test images. s / epoch: mean training seconds per epoch.\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    args = p.parse_args(argv)
    table = rows(args.folder)
    if not table:
        print(f"beyond_peers_table: no complete runs under {args.folder}", file=sys.stderr)
        return 2
    print(markdown(table), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
