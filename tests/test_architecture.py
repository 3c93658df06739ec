"""The layer picture (docs/architecture.md) holds: no import circles between ltadv's modules, each
module imports only from the layers below it (import-linter's contract in pyproject.toml), and the
training loop stays one screen."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _top(module: str) -> str:
    return ".".join(module.split(".")[:2])  # ltadv.attacks.autoattack -> ltadv.attacks


def _module_cycles() -> list[list[str]]:
    """Strongly connected components of more than one module in ltadv's import graph (lazy imports inside
    functions count), with sub-packages taken as one module."""
    graph = grimp.build_graph("ltadv")
    edges: dict[str, set[str]] = {}
    for m in graph.modules:
        for imported in graph.find_modules_directly_imported_by(m):
            a, b = _top(m), _top(imported)
            if a != b and a != "ltadv" and b != "ltadv":  # the package's __init__ is the API on top
                edges.setdefault(a, set()).add(b)
    # Tarjan's algorithm: a few dozen nodes, no library call gives components of a plain dict graph
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert _module_cycles() == []


def test_cycle_finder_sees_a_circle(monkeypatch):
    """The check above can fail: a graph with a planted a -> b -> a circle is reported."""

    class Planted:
        modules = {"ltadv.a", "ltadv.b", "ltadv.c"}

        @staticmethod
        def find_modules_directly_imported_by(m):
            return {"ltadv.a": {"ltadv.b"}, "ltadv.b": {"ltadv.a", "ltadv.c"}, "ltadv.c": set()}[m]

    monkeypatch.setattr(grimp, "build_graph", lambda _name: Planted)
    assert _module_cycles() == [["ltadv.a", "ltadv.b"]]


def test_layers_contract_holds():
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (make install installs it)")
    r = subprocess.run([str(exe), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "1 kept, 0 broken" in r.stdout


def test_training_loop_fits_on_a_screen():
    from ltadv import train

    lines = inspect.getsource(train._train).splitlines()
    assert len(lines) <= 80, f"ltadv.train._train is {len(lines)} lines; move bookkeeping to ltadv.session"
