"""The AT-BSL paper's four findings, checked on digits-lt with 5 seeds and 95% intervals; writes docs/findings.md.

    python benchmarks/findings.py --out runs/findings        # the whole study, then the page and its figures

Yue et al., "Revisiting Adversarial Training under Long-Tailed Distributions", CVPR 2024, arXiv 2403.10073,
claim (1) AT-BSL matches RoBal at a fraction of its cost, (2) augmentation helps under long-tailed data, most
for the tail, (3) robustness grows with the number of stacked augmentations, RandAugment the best single one,
(4) the gain holds for every tau_b. The study is four sweep presets (``ltadv/presets/sweeps/findings_*.yaml``)
plus one evaluation pass:

- (a) ``findings_methods``: AT, AT-BSL, TRADES, MART, RoBal, REAT, at_rw, at_cdt (clean, PGD-20, CW);
- (b) ``findings_aug``: AT and AT-BSL x (none, 7 single augmentations, 4 growing stacks) (clean, PGD-20);
- (c) ``findings_tau_b``: AT-BSL, tau_b 0 .. 2, without augmentation and with the best augmentation of (b),
  chosen on the VALIDATION split (mean over seeds of the best epoch's validation PGD-20), never on test;
- (d) the final table: AT, AT-BSL and AT-BSL + the best augmentation, evaluated on the FULL test set
  (500 images) with clean, PGD-20, CW and the official AutoAttack (``aa``: APGD-CE, APGD-T, FAB-T, Square
  at the standard budget), copied into ``OUT/final`` and evaluated there with ``ltadv eval``;
- (e) the training cost of (a)'s methods measured in ONE process: one epoch of each per round, 5 rounds in a
  rotating order, CPU seconds and their ratio to AT per round (``ltadv_bench.method_cost``; OUT/cost.json).
  The (a) runs' own wall-clock seconds are kept in their records but depend on what else the machine ran
  while each trained (the 2026-11-30 run saw the same config take 37 s or 120 s), so claim 1's cost verdict
  uses (e).

Each part is an ``ltadv sweep`` folder (``OUT/<part>``, with its ``summary.md`` and ``report/``). A run two
parts share (same config and seed: AT-BSL with tau_b 1 and no augmentation is in (a), (b) and (c)) is trained
once and copied. Cells run as ``ltadv train`` processes, ``--jobs`` at a time, one thread each. Everything
is resumable: the same command skips finished cells, resumes interrupted ones and continues an interrupted
AutoAttack from its saved state; the page is rewritten from whatever the folders then hold.

Budget (target: under 2 hours on 2 CPU cores). Measured 2026-11-30 on the 2-core machine while it was
heavily loaded (load average 10-17 from other engineers' jobs), one thread per run: wall-clock times were 4-7x
the CPU times, so the estimate uses CPU time (user + sys of ``time``), which is what a run takes alone on a
quiet core:
- AT-BSL, 20 epochs, clean / PGD-20 / CW on the 500 test images, process start included: 40 s (154 s wall);
  TRADES the same: 47 s; AT-BSL with the 5-augmentation stack, clean / PGD-20: 46 s. At 15 epochs about
  15% less: ~34 s for a plain run, ~40 s for TRADES or a heavy augmentation stack.
- Official AutoAttack (APGD-CE, APGD-T, FAB-T, Square, standard budget) on 100 test images of that AT-BSL
  run (77% robust): 82 s (758 s wall); the cascade is linear in the points, so ~390 s for the 500 images.
Cells: (a) 8 methods x 5 seeds = 40, (b) 24 x 5 = 120 (10 shared with (a)), (c) 2 x 5 tau_b x 5 = 50 (10
shared), so 190 runs: ~110 core-minutes; (d) 3 rows x 5 seeds of AutoAttack + CW: ~100 core-minutes. With
2 jobs: ~55 + ~50 min, plus ~3 min of reports: ESTIMATE_MIN = 110 min (tight: a loaded machine takes longer;
every part resumes, so an interrupted study continues with the same command). Choices made to fit: 15 epochs
(the digits preset trains 30; milestones fall at epochs 12 and 14), the best checkpoint only, PGD-20 on the
full 500 test images everywhere, CW only in (a) and (d), official AA only in the final table (AT, AT-BSL,
AT-BSL + best augmentation: RoBal is compared on PGD-20 and CW), 2 jobs x 1 thread, tau_b 0 trained as
AT-BSL with tau_b 0 (10 runs that could be AT's, kept so that the tau_b preset stands alone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ltadv.config import ConfigError, load_config, to_dict
from ltadv.report import IGNORED_KEYS, flatten
from ltadv.results import read_record
from ltadv.sweep import SweepError, cell_status, expand, load_spec, run_sweep

SEEDS = [0, 1, 2, 3, 4]
EPOCHS = 15
JOBS = 2
ESTIMATE_MIN = 110  # the whole study on 2 quiet CPU cores, from the measurements above
FINAL_ATTACKS = ["clean", "pgd20", "cw", "aa"]  # the final table (d), on the full test set
PART_ATTACKS = {"methods": ["clean", "pgd20", "cw"], "aug": ["clean", "pgd20"], "tau_b": ["clean", "pgd20"],
                "tau_b_aug": ["clean", "pgd20"]}
PRESETS = {"methods": "findings_methods", "aug": "findings_aug", "tau_b": "findings_tau_b",
           "tau_b_aug": "findings_tau_b"}
GROWING = ["none", "ra", "ra+cutmix", "ra+cutout+cutmix", "aua+ra+cutout+cutmix", "aua+ra+augmix+cutout+cutmix"]
FINAL_ROWS = ["at", "at_bsl", "at_bsl+aug"]  # at_bsl+aug: AT-BSL with the best augmentation of (b)


class StudyError(RuntimeError):
    pass


@dataclass
class Study:
    """What to run; the defaults are the full study. The miniature (tests) narrows every list."""

    out: Path
    seeds: list[int] = field(default_factory=lambda: list(SEEDS))
    epochs: int = EPOCHS
    jobs: int = JOBS
    threads: int = 1
    methods: list[str] | None = None  # cells of findings_methods (None: all)
    augs: list[str] | None = None  # augmentation sets of findings_aug as "none", "ra", "ra+cutmix" (None: all)
    tau_bs: list[float] | None = None  # tau_b grid of findings_tau_b (None: the preset's)
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted overrides for every run
    page: Path | None = Path("docs/findings.md")
    figures: Path | None = Path("docs/figures/findings")
    log: Callable[[str], None] = print
    command: str = "python benchmarks/findings.py"  # as the page quotes it
    cost_rounds: int = 5  # part (e): interleaved rounds of one epoch per method


@dataclass
class Cell:
    part: str
    name: str
    run_dir: Path
    config: dict  # the resolved config (to_dict)
    attacks: list[str]


def aug_label(aug) -> str:
    return "+".join(aug) if aug else "none"


def run_key(config: dict) -> str:
    """What makes two runs the same experiment: the resolved config and seed, up to the keys the report
    ignores (device, progress, evaluated attacks, ...)."""
    flat = flatten(config)
    return json.dumps(sorted((k, repr(v)) for k, v in flat.items() if k not in IGNORED_KEYS or k == "seed"))


def part_spec(study: Study, part: str, best_aug: list[str] | None = None) -> dict:
    """The part's sweep preset narrowed to the study's seeds, epochs and cells, with the part's attacks."""
    spec = load_spec(PRESETS[part])
    spec["name"] = part
    base = dict(spec.get("base") or {})
    base.update({"train.epochs": study.epochs, "eval.attacks": PART_ATTACKS[part]})
    if part == "tau_b_aug":
        base["data.aug"] = list(best_aug or [])
        spec["description"] = f"{spec.get('description', '')}; with data.aug {aug_label(best_aug)}"
    spec["base"] = base
    spec["grid"] = {**(spec.get("grid") or {}), "seed": list(study.seeds)}
    cells = spec.get("cells") or {}
    if part == "methods" and study.methods is not None:
        spec["cells"] = {k: v for k, v in cells.items() if k in study.methods}
    if part == "aug" and study.augs is not None:
        spec["cells"] = {k: v for k, v in cells.items() if aug_label(v.get("data.aug")) in study.augs}
    if part.startswith("tau_b") and study.tau_bs is not None:
        spec["grid"] = {"method.tau_b": [float(t) for t in study.tau_bs], "seed": list(study.seeds)}
    if part == "methods" and "at_bsl" in spec["cells"]:
        spec["relative_to"] = f"at_bsl__seed={study.seeds[0]}"
    else:
        spec.pop("relative_to", None)
    if not spec.get("cells") and part in ("methods", "aug"):
        raise StudyError(f"part {part}: no cell left after narrowing (methods {study.methods}, augs {study.augs})")
    return spec


def plan(study: Study, part: str, spec: dict) -> tuple[Path, list[Cell]]:
    """Write the part's sweep file (OUT/<part>.yaml) and resolve every cell's config."""
    study.out.mkdir(parents=True, exist_ok=True)
    spec_file = study.out / f"{part}.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    cells = []
    for name, ov in expand(load_spec(str(spec_file))):
        try:
            cfg = load_config(overrides={**ov, **study.overrides})
        except ConfigError as e:
            raise ConfigError(f"part {part}, cell {name!r}: {e}") from None
        cells.append(Cell(part, name, study.out / part / name, to_dict(cfg), list(cfg.eval.attacks)))
        cfg_file = study.out / part / "_cells" / f"{name}.yaml"  # as `ltadv sweep` keeps them (and knows its folder)
        cfg_file.parent.mkdir(parents=True, exist_ok=True)
        cfg_file.write_text(yaml.safe_dump(cells[-1].config, sort_keys=False))
    return spec_file, cells


def _has(run_dir: Path, attacks: list[str]) -> bool:
    try:
        rec = read_record(run_dir)
    except ValueError:
        return False
    return rec.get("status") == "complete" and set(attacks) <= set(rec.get("metrics") or {})


def copy_run(src: Path, dst: Path) -> None:
    """A finished run folder copied whole (record, checkpoints, evaluation state), replacing ``dst``."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.lock", "lock"))


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def _run(cmd: list[str], threads: int) -> str | None:
    """Run one process; None on success, else its last error line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads))
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or ["(no output)"])[-1]


def train_cells(study: Study, cells: list[Cell]) -> None:
    """Train every cell that is not finished, ``study.jobs`` at a time; a cell whose run (same config and
    seed, with the attacks it needs) exists in another part is copied instead of trained."""
    finished: dict[str, list[Path]] = {}
    for c in cells:
        if _has(c.run_dir, c.attacks):
            finished.setdefault(run_key(c.config), []).append(c.run_dir)
    todo: list[Cell] = []
    first: dict[str, Cell] = {}
    copies: list[tuple[Cell, Path]] = []  # (cell, the run it copies once that run is finished)
    for c in cells:
        key = run_key(c.config)
        if _has(c.run_dir, c.attacks):
            continue
        src = next((p for p in finished.get(key, []) if _has(p, c.attacks)), None)
        if src is None and key in first and set(c.attacks) <= set(first[key].attacks):
            src = first[key].run_dir
        if src is not None:
            copies.append((c, src))
            continue
        todo.append(c)
        first.setdefault(key, c)
    study.log(f"{len(todo)} run(s) to train, {len(copies)} shared with another part, "
              f"{len(cells) - len(todo) - len(copies)} finished earlier; {study.jobs} at a time")

    def one(i_cell: tuple[int, Cell]) -> str | None:
        i, c = i_cell
        cfg_file = study.out / c.part / "_cells" / f"{c.name}.yaml"  # written by plan()
        status = cell_status(c.run_dir)
        cmd = [sys.executable, "-m", "ltadv", "train", "--config", str(cfg_file), "--out", str(c.run_dir), "--quiet",
               "--resume" if status == "partial" else "--force"]
        t0 = time.perf_counter()
        err = _run(cmd, study.threads)
        study.log(f"[{i}/{len(todo)}] {c.part}/{c.name}: " + (f"FAILED: {err}" if err else
                                                               f"done in {time.perf_counter() - t0:.0f}s"))
        return f"{c.part}/{c.name}: {err}" if err else None

    with ThreadPoolExecutor(max_workers=max(1, study.jobs)) as pool:
        failures = [f for f in pool.map(one, enumerate(todo, 1)) if f]
    if failures:
        raise StudyError(f"{len(failures)} run(s) failed, first: {failures[0]} (rerun the same command to retry)")
    for c, src in copies:
        copy_run(src, c.run_dir)


def best_augmentation(aug_dir: Path, method: str = "at_bsl") -> list[str]:
    """The augmentation set of ``method`` in part (b) with the highest validation robust accuracy of the
    selected epoch, averaged over seeds (ties: fewer augmentations, then the preset's order). Selection on
    the validation split keeps the test numbers of (c) and (d) honest."""
    scores: dict[tuple, list[float]] = {}
    for path in sorted(aug_dir.glob("*/result.json")):
        rec = json.loads(path.read_text())
        cfg = rec.get("config") or {}
        if (cfg.get("method") or {}).get("name") != method or rec.get("status") != "complete":
            continue
        best = rec.get("best_epoch")
        vals = [e["val_robust"] for e in rec.get("epochs") or [] if e.get("epoch") == best and
                e.get("val_robust") is not None]
        if vals:
            scores.setdefault(tuple(cfg["data"]["aug"]), []).append(vals[0])
    scored = [(sum(v) / len(v), -len(aug), aug) for aug, v in scores.items() if aug]
    if not scored:
        raise StudyError(f"no finished {method} run with an augmentation under {aug_dir}")
    return list(max(scored, key=lambda s: (s[0], s[1]))[2])


def final_cells(study: Study, best_aug: list[str]) -> list[tuple[str, Path, Path]]:
    """(row, source run, final run) for each final-table row and seed: AT and AT-BSL from (b)'s no-augmentation
    cells (or (a)), AT-BSL + the best augmentation from (b)."""
    out = []
    for seed in study.seeds:
        sources = {"at": study.out / "aug" / f"at__none__seed={seed}",
                   "at_bsl": study.out / "aug" / f"at_bsl__none__seed={seed}",
                   "at_bsl+aug": study.out / "aug" / f"at_bsl__{aug_label(best_aug)}__seed={seed}"}
        fallback = {"at": study.out / "methods" / f"at__seed={seed}",
                    "at_bsl": study.out / "methods" / f"at_bsl__seed={seed}"}
        for row in FINAL_ROWS:
            src = sources[row] if (sources[row] / "result.json").is_file() else fallback.get(row, sources[row])
            if not (src / "result.json").is_file():
                study.log(f"note: final table: {row} seed {seed} has no run ({src}); left out")
                continue
            out.append((row, src, study.out / "final" / f"{row}__seed={seed}"))
    return out


def evaluate_final(study: Study, best_aug: list[str]) -> None:
    """Copy the final table's runs and evaluate them with CW and the official AutoAttack on the run's own test
    images (the full test set unless an override narrowed eval.n); an interrupted AA resumes."""
    jobs = []
    for _row, src, dst in final_cells(study, best_aug):
        if not (dst / "result.json").is_file():
            copy_run(src, dst)
        if not _has(dst, FINAL_ATTACKS):
            jobs.append(dst)
    study.log(f"final table: {len(jobs)} run(s) to evaluate with {', '.join(FINAL_ATTACKS[2:])}")

    def one(i_dst: tuple[int, Path]) -> str | None:
        i, dst = i_dst
        missing = [a for a in FINAL_ATTACKS if not _has(dst, [a])]
        t0 = time.perf_counter()
        err = _run([sys.executable, "-m", "ltadv", "eval", str(dst), "--attacks", ",".join(missing), "--which",
                    "best", "--quiet"], study.threads)
        study.log(f"[{i}/{len(jobs)}] final/{dst.name}: " + (f"FAILED: {err}" if err else
                                                            f"{','.join(missing)} in {time.perf_counter() - t0:.0f}s"))
        return f"final/{dst.name}: {err}" if err else None

    with ThreadPoolExecutor(max_workers=max(1, study.jobs)) as pool:
        failures = [f for f in pool.map(one, enumerate(jobs, 1)) if f]
    if failures:
        raise StudyError(f"{len(failures)} evaluation(s) failed, first: {failures[0]}")


def measure_cost(study: Study, cells: list[Cell]) -> dict:
    """Part (e): one epoch of each method of (a) (its config at the first seed) per round, COST_ROUNDS rounds
    in a rotating order, in this one process with ``study.threads`` threads; CPU seconds and their ratio to
    AT per round (ltadv_bench.method_cost), written to OUT/cost.json. Wall-clock seconds of runs trained at
    different moments on a shared machine measure its load as much as the method; these do not."""
    import torch

    from ltadv_bench.method_cost import method_costs

    path = study.out / "cost.json"
    chosen = {c.name.split("__seed=")[0]: c for c in cells if c.config.get("seed") == study.seeds[0]}
    names = sorted(chosen, key=lambda n: (n != "at", n))  # AT first: the baseline
    if path.is_file():
        done = json.loads(path.read_text())
        if sorted(done.get("cpu_s", {})) == sorted(names) and done.get("rounds") == study.cost_rounds:
            study.log("cost: measured earlier (OUT/cost.json)")
            return done
    configs = {n: load_config(study.out / chosen[n].part / "_cells" / f"{chosen[n].name}.yaml") for n in names}
    threads = torch.get_num_threads()
    torch.set_num_threads(study.threads)
    try:
        res = method_costs(configs, study.out / "cost", rounds=study.cost_rounds, log=study.log)
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(study.out / "cost", ignore_errors=True)  # scratch run folders
    path.write_text(json.dumps(res, indent=1))
    return res


def _ledger(out: Path, seconds: float | None = None) -> dict:
    """OUT/study.json: the wall-clock seconds of every invocation (a resumed study adds up)."""
    path = out / "study.json"
    data = json.loads(path.read_text()) if path.is_file() else {"sessions": []}
    if seconds is not None or not path.is_file():
        if seconds is not None:
            data["sessions"].append({"seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                                  time.gmtime())})
        path.write_text(json.dumps(data, indent=1))
    return data


def run_study(study: Study) -> dict:
    """Run (or resume) every part, then write the parts' reports and the findings page."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the page module beside this file
    from findings_page import write_page

    t0 = time.perf_counter()
    out = study.out
    if out.exists() and any(out.iterdir()) and not (out / "study.json").is_file():
        raise StudyError(f"{out} exists and is not a findings study folder (no study.json); choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    _ledger(out)
    first = {}
    for part in ("methods", "aug", "tau_b"):
        first[part] = plan(study, part, part_spec(study, part))
    study.log("== (a) methods, (b) augmentations, (c) tau_b without augmentation")
    train_cells(study, [c for _, cells in first.values() for c in cells])
    best_aug = best_augmentation(out / "aug")
    study.log(f"best augmentation for AT-BSL on validation: {aug_label(best_aug)}")
    tau_b_aug = plan(study, "tau_b_aug", part_spec(study, "tau_b_aug", best_aug))
    study.log(f"== (c) tau_b with {aug_label(best_aug)}")
    train_cells(study, [c for _, cells in (*first.values(), tau_b_aug) for c in cells])
    study.log("== (d) final table: CW and official AutoAttack on the full test set")
    evaluate_final(study, best_aug)
    study.log("== (e) training cost of the methods of (a), interleaved in one process")
    measure_cost(study, first["methods"][1])
    for part, (spec_file, _) in {**first, "tau_b_aug": tau_b_aug}.items():  # summary.md and report/ per part
        run_sweep(str(spec_file), out / part, study.overrides, log=lambda _m: None)
    seconds = time.perf_counter() - t0
    ledger = _ledger(out, seconds)
    total = sum(s["seconds"] for s in ledger["sessions"])
    meta = {"best_aug": best_aug, "seconds": total, "sessions": len(ledger["sessions"]), "jobs": study.jobs,
            "threads": study.threads, "seeds": study.seeds, "epochs": study.epochs, "estimate_min": ESTIMATE_MIN,
            "growing": GROWING, "command": study.command}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    if study.page is not None:
        write_page(out, study.page, study.figures, meta, log=study.log)
    study.log(f"study done in {seconds / 60:.1f} min this session ({total / 60:.1f} min in all)")
    return meta


def parse_args(argv: list[str]) -> tuple[Study, dict]:
    p = argparse.ArgumentParser(description="Run the findings study on digits-lt and write docs/findings.md. "
                                            "Dotted overrides (--train.max_batches 2) apply to every run.",
                                allow_abbrev=False)
    p.add_argument("--out", default="runs/findings", help="study folder (resumable; default runs/findings)")
    p.add_argument("--jobs", type=int, default=JOBS, help=f"runs at a time (default {JOBS}: one per core)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 0..4)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs per run (default {EPOCHS})")
    p.add_argument("--methods", help="part (a) cells, comma-separated (default: all of findings_methods)")
    p.add_argument("--augs", help="part (b) augmentation sets, comma-separated, as none,ra,ra+cutmix (default all)")
    p.add_argument("--tau-b", help="part (c) tau_b values, comma-separated (default the preset's)")
    p.add_argument("--page", default="docs/findings.md", help="the page to write (default docs/findings.md)")
    p.add_argument("--figures", default="docs/figures/findings", help="its figures' folder")
    p.add_argument("--cost-rounds", type=int, default=5,
                   help="part (e): interleaved rounds of one training epoch per method (default 5, at least 2)")
    args, extra = p.parse_known_args(argv)
    from ltadv.cli import CLIError, _parse_overrides

    try:
        overrides = _parse_overrides(extra)
    except CLIError as e:
        raise StudyError(str(e)) from None

    def ints(text: str, what: str) -> list[int]:
        try:
            vals = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise StudyError(f"--{what} takes comma-separated integers, got {text!r}") from None
        if not vals:
            raise StudyError(f"--{what} is empty")
        return vals

    if args.jobs < 1 or args.threads < 1 or args.epochs < 1:
        raise StudyError("--jobs, --threads and --epochs must be >= 1")
    if args.cost_rounds < 2:
        raise StudyError("--cost-rounds must be >= 2 (the interval over rounds needs two)")
    tau_bs = None
    if args.tau_b:
        try:
            tau_bs = [float(v) for v in args.tau_b.split(",") if v.strip()]
        except ValueError:
            raise StudyError(f"--tau-b takes comma-separated numbers, got {args.tau_b!r}") from None
    def split(text: str | None) -> list[str] | None:
        return [v.strip() for v in text.split(",") if v.strip()] if text else None

    study = Study(Path(args.out), ints(args.seeds, "seeds"), args.epochs, args.jobs, args.threads,
                  split(args.methods), split(args.augs), tau_bs, overrides, Path(args.page), Path(args.figures),
                  command=" ".join(["python benchmarks/findings.py", *argv]), cost_rounds=args.cost_rounds)
    return study, overrides


def main(argv: list[str] | None = None) -> int:
    try:
        study, _ = parse_args(list(sys.argv[1:] if argv is None else argv))
        run_study(study)
    except (StudyError, SweepError, ConfigError, ValueError, OSError) as e:
        print(f"findings: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
