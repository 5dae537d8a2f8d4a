"""Which of a grid's models ``skinadv verify`` scores: the ones its report names.

``vanilla``: the vanilla model; ``champions``: each method's ``robust-champion`` in the Model
Registry (``selection.champions`` when the registry has none for a method); ``verdict``: the
most robust defence on the validation split (the verdict's ``robust`` rule over the means
of each cell's seeds) and the best static cell under the paper's rule; ``all``: every model;
or cell names. With ``seeds="all"`` every seed of each named cell is taken, so the figures
pair by seed; ``named`` keeps the one seed named (a champion's own; the first otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from skinadv import selection
from skinadv.results import ModelResult

KEYWORDS = ("vanilla", "champions", "verdict", "all")


def mean_frame(results: Sequence[ModelResult]) -> pd.DataFrame:
    """One row per cell: ``cell``, ``method``, ``fraction``, ``seeds`` and the mean over its
    seeds of every metric (what the report's verdict ranks)."""
    df = pd.DataFrame([r.record() for r in results])
    numeric = [c for c in df.columns if c not in ("cell", "method", "fraction", "seed", "run_id")]
    g = df.groupby("cell", sort=False)
    frame = g[numeric].mean(numeric_only=True)
    frame["method"] = g["method"].first()
    frame["fraction"] = g["fraction"].first()
    frame["seeds"] = g.size()
    return frame.reset_index()


def verdict_cells(results: Sequence[ModelResult]) -> dict[str, str]:
    """``{cell: why}``: the most robust defence (validation, ``robust`` rule) and the best
    static cell by the paper's rule; empty without a validation split."""
    frame = mean_frame(results)
    out: dict[str, str] = {}
    trained = frame[frame["method"].notna()]
    robust = selection.best(trained, "robust")
    if robust is not None:
        out[robust] = "most robust defence (verdict)"
    paper = selection.best(trained[trained["fraction"].notna()], "paper")
    if paper is not None and paper not in out:
        out[paper] = "best static cell by the paper's rule (verdict)"
    return out


def champion_cells(
    results: Sequence[ModelResult], registered: Mapping[str, str]
) -> dict[tuple[str, int], str]:
    """``{(cell, seed): why}`` of each method's champion: the registered run when it is one
    of ``results``, else the one ``selection.champions`` picks."""
    by_run = {r.run_id: r for r in results}
    out = {}
    for method, r in selection.champions(results).items():
        reg = by_run.get(registered.get(method))
        where = "registered" if reg is not None else "chosen on validation, not registered"
        r = reg or r
        out[(r.cell, r.seed)] = f"{method} champion, {where}"
    return out


def pick_models(
    results: Sequence[ModelResult],
    registered: Mapping[str, str],
    which: str,
    seeds: str | Sequence[int] = "all",
) -> list[tuple[ModelResult, str]]:
    """The models to verify, each with why, vanilla first, one entry per (cell, seed).

    Args:
        results: every model of the grid (their ``run_id`` set).
        registered: ``{method: run id}`` of the registered champions.
        which: comma list of ``KEYWORDS`` and cell names.
        seeds: ``all``, ``named``, or the seeds to keep.

    Raises:
        ValueError: an unknown name, or nothing left to verify.
    """
    cells = list(dict.fromkeys(r.cell for r in results))
    named: dict[str, list[str]] = {}  # cell -> why, for every seed of it
    exact: dict[tuple[str, int], str] = {}  # champions: the one model a name points at
    for token in (t.strip() for t in which.split(",") if t.strip()):
        if token == "all":
            for c in cells:
                named.setdefault(c, [])
        elif token == "vanilla":
            named.setdefault("vanilla", []).append("vanilla")
        elif token == "champions":
            for (cell, seed), why in champion_cells(results, registered).items():
                exact[(cell, seed)] = why
                named.setdefault(cell, [])
        elif token == "verdict":
            for cell, why in verdict_cells(results).items():
                named.setdefault(cell, []).append(why)
        elif token in cells:
            named.setdefault(token, []).append("asked for")
        else:
            raise ValueError(
                f"--models: {token!r} is neither {', '.join(KEYWORDS)} nor a cell of this grid "
                f"({', '.join(cells)})"
            )
    picked = []
    for cell, whys in named.items():
        rows = sorted((r for r in results if r.cell == cell), key=lambda r: r.seed)
        champs = {seed: why for (c, seed), why in exact.items() if c == cell}
        if seeds == "named":
            rows = [r for r in rows if r.seed in champs] or rows[:1]
        elif seeds != "all":
            rows = [r for r in rows if r.seed in set(seeds)]
        for r in rows:
            if not r.run_id:
                continue
            own = [champs[r.seed]] if r.seed in champs else []
            other = [f"seed {s} is the {w}" for s, w in champs.items() if s != r.seed]
            picked.append((r, ", ".join(dict.fromkeys([*own, *whys, *other])) or "all models"))
    picked.sort(key=lambda p: (not p[0].is_vanilla, list(named).index(p[0].cell), p[0].seed))
    if not picked:
        raise ValueError(
            f"no model to verify for --models {which} --seeds "
            f"{seeds if isinstance(seeds, str) else ','.join(map(str, seeds))}"
        )
    return picked


__all__ = ["KEYWORDS", "champion_cells", "mean_frame", "pick_models", "verdict_cells"]
