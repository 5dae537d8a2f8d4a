"""The shape of the code base: no import cycles, no oversized modules, a core that imports no
orchestration (Prefect, Ray, MLflow), flows that import nothing from the CLI."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("skinadv", "tasks", "flows")
# the MLflow adapter and the service starter are the core's only doors to orchestration
ADAPTERS = ("skinadv.tracking", "skinadv.stack", "skinadv.commands", "skinadv.cli")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (REPO / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def imports(path: Path, known: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Every module named by an import anywhere in the file (top level or in a function).
    ``from pkg import mod`` names ``pkg.mod`` alone when that is a module in ``known``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            names.update(subs & known if subs <= known else {node.module, *(subs & known)})
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def graph() -> dict[str, set[str]]:
    """Module -> the modules of this repository it imports (a package is its __init__)."""
    mods = modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    return {
        m: {o for o in (owner(t) for t in imports(p, set(mods))) if o and o != m}
        for m, p in mods.items()
    }


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
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
                found.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_flows_import_nothing_from_the_cli():
    for m, p in modules().items():
        if m.startswith("flows"):
            bad = [i for i in imports(p) if i.startswith(("skinadv.commands", "skinadv.cli"))]
            assert bad == [], (m, bad)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_source_file_over_500_lines(pkg):
    long = {
        str(p.relative_to(REPO)): n
        for p in (REPO / pkg).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}


def test_the_core_imports_no_orchestration():
    for m, p in modules().items():
        if not m.startswith("skinadv") or m.startswith(ADAPTERS):
            continue
        bad = [
            i for i in imports(p) if i.split(".")[0] in ("prefect", "prefect_ray", "ray", "mlflow")
        ]
        assert bad == [], (m, bad)
