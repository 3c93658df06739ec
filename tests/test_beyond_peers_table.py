"""benchmarks/beyond_peers_table.py: the docs table from sweep records, on hand-made records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import beyond_peers_table as bpt  # noqa: E402


def _record(folder: Path, name: str, pgd: float, tail: float, ema: float | None = None, status="complete"):
    def m(acc, tl):
        return {"clean": {"overall": 0.9, "tail": 0.8, "worst": 0.7, "n": 500},
                "pgd20": {"overall": acc, "tail": tl, "worst": 0.2, "n": 500}}

    by = {"best": m(pgd, tail), "last": m(0.0, 0.0)}
    if ema is not None:
        by["ema_best"] = m(ema, tail)
    run = folder / name
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({
        "status": status, "metrics_by_checkpoint": by,
        "epochs": [{"train_seconds": 1.0}, {"train_seconds": 3.0}]}))


def test_rows_means_intervals_and_the_ema_row(tmp_path, capsys):
    _record(tmp_path, "a__seed=0", 0.70, 0.40)
    _record(tmp_path, "a__seed=1", 0.80, 0.60)
    _record(tmp_path, "b__seed=0", 0.50, 0.30, ema=0.60)
    _record(tmp_path, "b__seed=1", 0.50, 0.30, ema=0.64)
    _record(tmp_path, "c__seed=0", 0.99, 0.99, status="running")  # unfinished: left out
    table = bpt.rows(tmp_path)
    assert list(table) == ["a", "b", "b (ema_best)"]
    assert table["a"]["pgd20"] == [0.70, 0.80]
    assert table["b (ema_best)"]["pgd20"] == [0.60, 0.64]  # the average's own numbers, not the raw ones
    assert table["a"]["s/epoch"] == [2.0, 2.0]
    # two seeds: mean 75.0, t(0.975, 1) = 12.7062, sem = 5.0 -> 75 +- 63.53, clipped to [0, 100]
    assert bpt.cell([0.70, 0.80]) == "75.0 [11.5, 100.0]"
    # equal values: a zero-width interval
    assert bpt.cell([0.5, 0.5]) == "50.0 [50.0, 50.0]"
    assert bpt.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| a | 2 | 90.0 [90.0, 90.0] | 75.0 [11.5, 100.0] | 50.0 [0.0, 100.0] |" in out
    assert "n = 500" in out


def test_empty_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert bpt.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
