"""Sweeps: many runs from one YAML file, resumable cell by cell.

A sweep file (or a built-in preset under ``ltadv/presets/sweeps/``) holds::

    name: tau_b                # default output folder runs/<name>
    base: {data.name: digits-lt}          # overrides shared by every cell (dotted or nested)
    cells:                     # optional named cells, each a set of overrides
      at: {method.name: at}
      at_bsl: {method.name: at_bsl}
    grid:                      # optional cartesian product over dotted keys
      method.tau_b: [0.5, 1.0, 1.5]
      seed: [0, 1]
    relative_to: at_bsl        # optional: the table's time / memory ratios are to this cell

Cells are the named cells times the grid (each alone when the other is absent). Each cell runs in
its own process (so peak memory is per run) as ``ltadv train --out OUT/<cell>``, one after another,
or as a Slurm job array with ``--launcher slurm`` (:mod:`ltadv.slurm`); a cell whose
``result.json`` is complete is skipped, one with a checkpoint is resumed, so an interrupted sweep
restarted with the same command runs only what is missing. At the end the sweep writes
``OUT/summary.md`` and the full report (``ltadv report OUT``) into ``OUT/report/``.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .cells import cell_command, cell_status
from .config import ConfigError, load_config, read_yaml, to_dict
from .report import format_table, write_report
from .results import read_record
from .rundir import RunDirError, check_plain_name

SPEC_KEYS = {"name", "base", "cells", "grid", "relative_to", "description"}
RESERVED = {"_cells", "_submitit", "report", "summary.md"}  # what the sweep itself writes under OUT


class SweepError(RuntimeError):
    pass


def preset_names() -> list[str]:
    folder = resources.files("ltadv") / "presets" / "sweeps"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_spec(spec: str) -> dict[str, Any]:
    """A sweep file path, or the name of a built-in preset."""
    path = Path(spec)
    if not path.is_file():
        res = resources.files("ltadv") / "presets" / "sweeps" / f"{spec}.yaml"
        if not res.is_file():
            raise ConfigError(f"sweep {spec!r} is neither a file nor a preset; presets: {', '.join(preset_names())}")
        data = yaml.safe_load(res.read_text()) or {}
    else:
        data = read_yaml(path)
    where = f"sweep file {path}" if path.is_file() else f"sweep preset {spec!r}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping of keys, not {type(data).__name__}")
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown sweep key {unknown[0]!r} in {where}; known: {', '.join(sorted(SPEC_KEYS))}")
    data.setdefault("name", path.stem if path.is_file() else spec)
    _check_types(data, where)
    return data


def _check_types(spec: dict[str, Any], where: str) -> None:
    """The sweep file's shape, and its names as plain folder names (a cell is a folder under --out)."""
    for key, tp, what in (("base", dict, "a mapping of overrides"), ("cells", dict, "a mapping of cell name -> "
                          "overrides"), ("grid", dict, "a mapping of key -> list of values"),
                          ("name", str, "a string"), ("relative_to", str, "a string"),
                          ("description", str, "a string")):
        if spec.get(key) is not None and not isinstance(spec[key], tp):
            raise ConfigError(f"{where}: {key!r} must be {what}, got {type(spec[key]).__name__}")
    for name, ov in (spec.get("cells") or {}).items():
        if ov is not None and not isinstance(ov, dict):
            raise ConfigError(f"{where}: cell {name!r} must be a mapping of overrides, got {type(ov).__name__}")
    try:
        check_plain_name(str(spec["name"]), f"{where}: sweep name")
        for name in spec.get("cells") or {}:
            check_plain_name(name, f"{where}: cell name")
    except RunDirError as e:
        raise ConfigError(str(e)) from None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def expand(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """[(cell name, dotted overrides)] in a stable order."""
    base = _flatten(spec.get("base") or {})
    cells = [(name, _flatten(ov or {})) for name, ov in (spec.get("cells") or {}).items()] or [("", {})]
    grid = spec.get("grid") or {}
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], list) or not grid[k]:
            raise ConfigError(f"sweep grid {k!r} must be a non-empty list")
    out = []
    for name, ov in cells:
        for values in itertools.product(*(grid[k] for k in keys)):
            parts = [name] if name else []
            # a value such as 8/255 or a path must not make a sub-folder: separators become '_'
            parts += [f"{_short(k)}={v}".replace("/", "_").replace("\\", "_") for k, v in zip(keys, values)]
            cell = name if not keys else "__".join(parts)
            out.append((cell or "run", {**base, **ov, **dict(zip(keys, values))}))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError("sweep cells have clashing names")
    for n in names:
        try:
            check_plain_name(n, "sweep cell")
        except RunDirError as e:
            raise ConfigError(str(e)) from None
        if n in RESERVED:
            raise ConfigError(f"sweep cell name {n!r} is taken by the sweep's own output; rename the cell")
    return out


def run_sweep(spec_name: str, out: str | Path | None = None, overrides: dict[str, Any] | None = None,
              quiet: bool = True, log=print, report: bool = True, slurm=None) -> dict[str, dict]:
    """Run every unfinished cell, then write the summary and the report.

    ``slurm``: a :class:`ltadv.slurm.SlurmOptions` to run the cells as a Slurm job array through
    submitit (each cell resumable after preemption); None: one cell after another in child processes.
    """
    spec = load_spec(spec_name)
    out = Path(out or Path("runs") / spec["name"])
    cells = expand(spec)
    configs = {}
    for name, ov in cells:  # every cell's config is checked before any cell runs
        try:
            configs[name] = load_config(overrides={**ov, **(overrides or {})})
        except ConfigError as e:
            raise ConfigError(f"sweep cell {name!r}: {e}") from None
    if slurm is not None:
        from .slurm import check_available

        check_available(slurm)  # no Slurm here: one line before the sweep's folder is made
    cell_dir = out / "_cells"
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not cell_dir.is_dir())):
        raise SweepError(f"sweep output {out} exists and is not an earlier sweep's folder (no _cells/ in it); "
                         f"choose a new or empty --out")
    cell_dir.mkdir(parents=True, exist_ok=True)
    pending = []
    for i, (name, cfg) in enumerate(configs.items(), 1):
        run_dir = out / name
        if cell_status(run_dir) == "complete":
            log(f"[{i}/{len(configs)}] {name}: complete, skipped")
            continue
        cfg_file = cell_dir / f"{name}.yaml"
        cfg_file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        pending.append((i, name, cfg_file, run_dir))
    if slurm is not None:
        from .slurm import run_cells

        failed = run_cells([(n, f, r) for _, n, f, r in pending], out, slurm, quiet, log, f"ltadv-{spec['name']}")
        if failed:
            raise SweepError(f"{len(failed)} sweep cell(s) failed: " + "; ".join(f"{n}: {e}" for n, e in
                                                                                failed.items()))
    else:
        for i, name, cfg_file, run_dir in pending:
            cmd = cell_command(cfg_file, run_dir, quiet)
            log(f"[{i}/{len(configs)}] {name}: {'resuming' if '--resume' in cmd else 'training'}")
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise SweepError(f"sweep cell {name!r} failed: {last}")
            log(f"[{i}/{len(configs)}] {name}: done in {time.perf_counter() - t0:.0f}s")
    records = {name: read_record(out / name) for name in configs}
    table = format_table(records, relative_to=spec.get("relative_to"))
    (out / "summary.md").write_text(f"# sweep {spec['name']}\n\n{table}\n")
    log(table)
    if report:  # the same as `ltadv report OUT --out OUT/report` afterwards
        rel = spec.get("relative_to") if spec.get("relative_to") in configs else None  # a cell name
        rep = write_report(out, out / "report", relative_to=rel, log=log)
        log(f"report: {len(rep.paths)} files in {rep.out}")
    return records


__all__ = ["SweepError", "cell_status", "expand", "load_spec", "preset_names", "run_sweep"]
