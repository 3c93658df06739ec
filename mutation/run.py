"""Mutation testing of ltadv's core with mutmut, one module at a time (``make mutation [MODULE=losses]``).

Why mutmut (3.x) rather than cosmic-ray: mutmut records which tests execute each function (one stats
run) and runs only those tests against each of that function's mutants, forked from a warm process
that has already imported torch, so a mutant costs a fraction of a second instead of a fresh
interpreter and a torch import (several seconds on our 2 shared cores). cosmic-ray starts a new test
process per mutant and needs a session database and a separate config per module.

Each module is mutated in its own work folder (``mutation/work/<module>/``: a copy of src/, tests/ and
pyproject.toml plus a ``setup.cfg`` holding the module's mutmut settings) against the FAST test files
listed in ``MODULES`` below, each run from a fresh copy (mutmut would keep stale verdicts across new tests).
The score is killed (timeouts count as killed) over the mutants not listed in
``mutation/equivalent.txt`` (mutants that cannot change behaviour, each with the reason).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "mutation" / "work"
EQUIVALENT = ROOT / "mutation" / "equivalent.txt"

# module -> (files to mutate, fast test files that exercise them)
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "losses": (["src/ltadv/losses.py"], ["tests/test_losses.py", "tests/test_core_losses.py"]),
    "losses_lt": (["src/ltadv/losses_lt.py"], ["tests/test_core_losses_lt.py", "tests/test_lt_fidelity.py",
                                              "tests/test_baselines.py", "tests/test_core_methods.py"]),
    "attacks": (["src/ltadv/attacks/__init__.py", "src/ltadv/attacks/mim.py"], ["tests/test_core_attacks.py",
                                                                            "tests/test_core_attacks_l2.py"]),
    "autoattack": (["src/ltadv/attacks/autoattack.py"], ["tests/test_core_autoattack.py"]),
    "evaluate": (["src/ltadv/evaluate.py"], ["tests/test_core_evaluate.py"]),
    "longtail": (["src/ltadv/data/longtail.py"], ["tests/test_longtail.py", "tests/test_core_data.py"]),
    "sampler": (["src/ltadv/data/sampler.py"], ["tests/test_core_data.py"]),
    "reproducibility": (["src/ltadv/reproducibility.py"], ["tests/test_core_repro.py"]),
    "checkpoint": (["src/ltadv/checkpoint.py"], ["tests/test_core_checkpoint.py"]),
    "methods": (["src/ltadv/methods/*"], ["tests/test_core_methods.py", "tests/test_core_methods2.py",
                                         "tests/test_lt_fidelity.py",
                                         "tests/test_baselines.py"]),
}

KILLED = {1, 3}  # pytest: tests failed / internal error
TIMEOUT = {36, -24, 24, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}


def equivalent() -> dict[str, str]:
    """{mutant name: reason} from mutation/equivalent.txt (``name  reason``; # comments)."""
    out = {}
    if EQUIVALENT.is_file():
        for line in EQUIVALENT.read_text().splitlines():
            line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
            if line:
                name, _, reason = line.partition(" ")
                out[name] = reason.strip()
    return out


def prepare(module: str) -> Path:
    files, tests = MODULES[module]
    work = WORK / module
    # A fresh start each run: mutmut keeps old verdicts (a mutant once "not covered" stays so after new tests)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for folder in ("src", "tests"):
        # copy2 keeps mtimes, so mutmut regenerates only the mutants of files that changed
        shutil.rmtree(work / folder, ignore_errors=True)
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    lines = ["[mutmut]", "source_paths = src", "only_mutate ="] + [f"    {f}" for f in files]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in tests]
    lines += ["pytest_add_cli_args =", "    -p", "    no:cacheprovider", "    -m", "    not gpu and not slow",
              "timeout_multiplier = 10.0", "use_setproctitle = false", ""]
    text = "\n".join(lines)
    cfg = work / "setup.cfg"
    if not cfg.is_file() or cfg.read_text() != text:
        cfg.write_text(text)
    return work


def run(module: str) -> float:
    work = prepare(module)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    t0 = time.time()
    print(f"== mutating {module} in {work.relative_to(ROOT)}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "mutmut", "run", "--max-children", "1"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    last = ""
    for chunk in proc.stdout:  # mutmut redraws a spinner with \r: keep whole lines and the last redraw
        parts = chunk.rstrip("\n").split("\r")
        last = parts[-1].strip()
        if "done" in last or "mutations/second" in last or not any(ch in last for ch in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"):
            print("   ", last, flush=True)
    proc.wait()
    seconds = time.time() - t0
    (work / "seconds.txt").write_text(f"{seconds:.0f}\n")
    return seconds


def results(module: str) -> dict[str, int]:
    """{mutant name: exit code} from the work folder's .meta files."""
    work = WORK / module
    out = {}
    for meta in sorted((work / "mutants" / "src").rglob("*.meta")):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


_DIFF_SCRIPT = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
out = {}
for name in json.loads(sys.stdin.read()):
    lines = get_diff_for_mutant(name).splitlines()
    out[name] = [x.strip() for x in lines if x[:1] in "+-" and not x.startswith(("+++", "---"))]
print(json.dumps(out))
"""


def mutant_diffs(module: str, names: list[str]) -> dict[str, list[str]]:
    """{mutant: its changed lines}, from one mutmut process (``mutmut show`` per mutant takes seconds each)."""
    proc = subprocess.run([sys.executable, "-c", _DIFF_SCRIPT], cwd=WORK / module, input=json.dumps(names),
                          capture_output=True, text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {}


def report(modules: list[str], show_diffs: bool = True) -> bool:
    eq = equivalent()
    rows, all_ok = [], True
    for module in modules:
        res = results(module)
        if not res:
            rows.append((module, "not run"))
            all_ok = False
            continue
        n_eq = sum(1 for k in res if k in eq)
        live = {k: v for k, v in res.items() if k not in eq}
        killed = sum(1 for v in live.values() if v in KILLED)
        timeouts = sum(1 for v in live.values() if v in TIMEOUT)
        survived = sorted(k for k, v in live.items() if v in SURVIVED)
        no_tests = sorted(k for k, v in live.items() if v in NO_TESTS)
        unchecked = sum(1 for v in live.values() if v is None)  # an interrupted run
        other = sorted(k for k, v in live.items() if v is not None and v not in KILLED | TIMEOUT | SURVIVED | NO_TESTS)
        checked = len(live) - unchecked
        score = (killed + timeouts) / checked if checked else 1.0
        secs = (WORK / module / "seconds.txt").read_text().strip() if (WORK / module / "seconds.txt").is_file() else "?"
        all_ok &= score >= 0.9 and not unchecked
        rows.append((module, len(res), killed, timeouts, len(survived), len(no_tests), len(other), n_eq, score, secs,
                     unchecked))
        # an entry whose mutant a test kills is not equivalent: after an edit to the source mutmut renumbers the
        # mutants of a function, so an entry can end up naming another mutant; list those to be re-checked
        stale = sorted(k for k, v in res.items() if k in eq and v in KILLED | TIMEOUT)
        if stale:
            print(f"\n-- {module}: {len(stale)} mutant(s) listed in {EQUIVALENT.name} are killed by a test "
                  "(a stale entry after renumbering? check and remove):")
            for name in stale:
                print(f"   killed    {name}  (listed: {eq[name]})")
        if survived or no_tests or other:
            print(f"\n-- {module}: {len(survived)} survived, {len(no_tests)} not covered by a test, {len(other)} other")
            names = survived + no_tests + other
            diffs = mutant_diffs(module, names) if show_diffs else {}
            for name in names:
                tag = "survived" if name in survived else ("no tests" if name in no_tests else f"code {live[name]}")
                print(f"   {tag:9s} {name}")
                for line in diffs.get(name, []):
                    print(f"             {line}")
    print()
    print(f"{'module':16s} {'mutants':>7s} {'killed':>6s} {'timeout':>7s} {'survived':>8s} {'no test':>7s} "
          f"{'other':>5s} {'equiv':>5s} {'score':>6s} {'seconds':>7s} {'unchecked':>9s}")
    for r in rows:
        if len(r) == 2:
            print(f"{r[0]:16s} {r[1]}")
        else:
            print(f"{r[0]:16s} {r[1]:7d} {r[2]:6d} {r[3]:7d} {r[4]:8d} {r[5]:7d} {r[6]:5d} {r[7]:5d} "
                  f"{r[8]:6.1%} {r[9]:>7s} {r[10]:9d}")
    print("score = (killed + timeout) / (mutants - equivalent - unchecked); target >= 90% per module, none unchecked")
    return all_ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("modules", nargs="*", help=f"modules to mutate (default all): {', '.join(MODULES)}")
    p.add_argument("--report-only", action="store_true", help="print the last results without running")
    p.add_argument("--no-diffs", action="store_true", help="list surviving mutants without their diffs")
    args = p.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        print(f"error: unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}", file=sys.stderr)
        return 2
    modules = args.modules or list(MODULES)
    if not args.report_only:
        for m in modules:
            run(m)
    return 0 if report(modules, show_diffs=not args.no_diffs) else 1


if __name__ == "__main__":
    sys.exit(main())
